"""pymodels on Tokyo Cabinet against raw binding calls on the same open file, in CPU time.

    python bench/tokyo_cabinet_cpu.py                 # 100k records, bench/tokyo_cabinet.py's
    python bench/tokyo_cabinet_cpu.py --workload      # workload.py's records (one age per city)

On a shared machine wall-clock rates move with the load; this measures the query phases
as CPU time of this process (``time.process_time``), pymodels and raw alternating three
times (A B A B A B) on one file: lexical indexes on email, name and city, a decimal
index on age. Each pymodels query runs once before timing (facts about columns are then
proved, see docs/tokyo_cabinet.md). The ratio is pymodels' CPU time over raw's.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable

import tokyo_cabinet
import workload

import pymodels
from pymodels.ext.tokyo_cabinet._binding import Cond, Order


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="records (default 100000)")
    parser.add_argument("--workload", action="store_true", help="workload.py's records")
    args = parser.parse_args(argv)
    n = args.n
    docs = workload.make_records(n) if args.workload else tokyo_cabinet.records(n)
    rng = random.Random(0)
    cities = [str(docs[rng.randrange(n)]["city"]) for _ in range(200)]
    emails = [str(docs[rng.randrange(n)]["email"]) for _ in range(2000)]
    with (
        tempfile.TemporaryDirectory(prefix="tc-cpu-") as tmp,
        pymodels.get_storage({"backend": "tokyo_cabinet", "path": f"{tmp}/x.tct"}) as s,
    ):
        s.create_index("email")
        s.create_index("name")
        s.save_many(docs)
        s.create_index("city")
        s.create_index("age", kind="decimal")
        q = s.query()
        by_age = q.order_by("-age")
        db = s._db  # type: ignore[attr-defined]  # the file pymodels has open

        def pm_ordered() -> None:
            for c in cities:
                list(by_age.where(city=c)[:10])

        def raw_ordered() -> None:
            for c in cities:
                with db.query() as rq:
                    rq.addcond(b"city", Cond.STREQ, c.encode())
                    rq.setorder(b"age", Order.NUMDESC)
                    rq.setlimit(10)
                    keys = rq.search()
                for k in keys:
                    db.get(k)

        def pm_count() -> None:
            for _ in range(10):
                q.where(age__gt=50).count()

        def raw_count() -> None:
            for _ in range(10):
                with db.query() as rq:
                    rq.addcond(b"age", Cond.NUMGT, b"50")
                    rq.searchcount()

        def pm_email() -> None:
            for e in emails:
                q.where(email=e).first()

        def raw_email() -> None:
            for e in emails:
                with db.query() as rq:
                    rq.addcond(b"email", Cond.STREQ, e.encode())
                    rq.setlimit(1)
                    keys = rq.search()
                for k in keys:
                    db.get(k)

        phases: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
            ("city == X, -age, [:10]", pm_ordered, raw_ordered),
            ("count(age > 50)", pm_count, raw_count),
            ("email == X, first()", pm_email, raw_email),
        ]
        for _, ours, _raw in phases:
            ours()
        print(f"Tokyo Cabinet, N={n:,}, CPU seconds over 3 alternated runs")
        print(f"  {'phase':<24}{'pymodels':>10}{'raw':>10}{'ratio':>8}")
        for name, ours, theirs in phases:
            a = b = 0.0
            for _ in range(3):
                a += _cpu(ours)
                b += _cpu(theirs)
            print(f"  {name:<24}{a:>10.3f}{b:>10.3f}{a / b:>7.2f}x")
    return 0


def _cpu(fn: Callable[[], None]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


if __name__ == "__main__":
    raise SystemExit(main())

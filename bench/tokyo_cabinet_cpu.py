"""pymodels on Tokyo Cabinet against raw binding calls on the same open file, in CPU time.

    python bench/tokyo_cabinet_cpu.py                 # 100k records, bench/tokyo_cabinet.py's
    python bench/tokyo_cabinet_cpu.py --workload      # workload.py's records (run.py's data)

On a shared machine wall-clock rates move with the load; this measures the query phases
as CPU time of this process (``time.process_time``), pymodels and raw alternating three
times (A B A B A B) on one file: lexical indexes on email and name, made before the
load, then city and a decimal index on age (run.py's Tokyo indexes). Both record sets
have the same ages (18-90, about 27 records of each age in a city) and cities.

Each pymodels query runs once before timing, and that first call's CPU time is printed
apart ("first"): on a file this process has not queried yet, the first query that relies
on a fact about a column (every ``age`` an int Tokyo compares exactly, no ``email`` of
another kind than str) proves it with one full scan, and writes keep it from then on
(see docs/tokyo_cabinet.md). ``bench/run.py`` times the first query in its own row.

What raw does less than pymodels (so part of each ratio is the contract): bytes, not
typed values; Tokyo's order without a pk tiebreak (a page ending inside a run of equal
ages is arbitrary there); no kind checks. The ratio is pymodels' CPU time over raw's.
"""

from __future__ import annotations

import argparse
import functools
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
    emails = [str(docs[rng.randrange(n)]["email"]) for _ in range(10_000)]
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

        def pm_ordered(one: bool = False) -> None:
            for c in cities[:1] if one else cities:
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

        def pm_count(one: bool = False) -> None:
            for _ in range(1 if one else 10):
                q.where(age__gt=50).count()

        def raw_count() -> None:
            for _ in range(10):
                with db.query() as rq:
                    rq.addcond(b"age", Cond.NUMGT, b"50")
                    rq.searchcount()

        def pm_email(one: bool = False) -> None:
            for e in emails[:1] if one else emails:
                q.where(email=e).first()

        def raw_email() -> None:
            for e in emails:
                with db.query() as rq:
                    rq.addcond(b"email", Cond.STREQ, e.encode())
                    rq.setlimit(1)
                    keys = rq.search()
                for k in keys:
                    db.get(k)

        phases: list[tuple[str, Callable[..., None], Callable[[], None]]] = [
            ("city == X, -age, [:10]", pm_ordered, raw_ordered),
            ("count(age > 50)", pm_count, raw_count),
            ("email == X, first()", pm_email, raw_email),
        ]
        first = {name: _cpu(functools.partial(ours, one=True)) for name, ours, _ in phases}
        print(f"Tokyo Cabinet, N={n:,}, CPU seconds over 3 alternated runs; load {_load()}")
        print(f"  {'phase':<24}{'pymodels':>10}{'raw':>10}{'ratio':>8}{'first':>10}")
        for name, ours, theirs in phases:
            a = b = 0.0
            for _ in range(3):
                a += _cpu(ours)
                b += _cpu(theirs)
            print(f"  {name:<24}{a:>10.3f}{b:>10.3f}{a / b:>7.2f}x{first[name]:>10.3f}")
        print(f"  first: CPU seconds of pymodels' first query of the phase; load {_load()}")
    return 0


def _load() -> str:
    """The load average (1, 5, 15 minutes), where the system shows it."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def _cpu(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


if __name__ == "__main__":
    raise SystemExit(main())

"""pymodels next to the raw engines: ops/s per backend and the ratio to raw.

    python bench/run.py                       # memory and shelve at 10k and 100k
    python bench/run.py --backends sqlite --n 100000 --runs 3

For each backend the same workload (``workload.py``) runs through pymodels and
through the plainest raw calls of the same engine (``raw_<backend>.py``):
bulk save (``save_many``, batches of 1000), get by pk, an equality query on
``email`` and ``city == X order by -age limit 10``. Indexes are created where
the backend has them (``email``; ``(city, -age)``). Figures are medians of
``--runs`` runs in one process; compare ratios, not absolute numbers, across
machines. This is a measurement, never a test.

The query phases time repeated queries after one untimed first query: a first query
may pay once for what later ones reuse (Tokyo Cabinet proves facts about a column with a
full scan, see docs/tokyo_cabinet.md), and a one-second budget that includes it measures
mostly that. Where the raw baseline times its own first query, the first query is a row
of its own (``*_first``, 1 / its seconds). Rates are wall-clock: on a loaded machine
prefer the CPU-time benches (``tokyo_cabinet_cpu.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workload import (
    each,
    load_average,
    make_records,
    median_of,
    provenance,
    random_indices,
    rate,
    timed_loop,
)

import pymodels

GETS = 10_000
METRICS = ("bulk_save", "get", "equality", "ordered_limit")
#: Rows printed only where the raw baseline measures them too (see RAW_METRICS).
FIRST_METRICS = ("equality_first", "ordered_first")

#: backend name -> settings for a storage in a temporary directory.
OPENERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "memory": lambda tmp: {"backend": "memory"},
    "shelve": lambda tmp: {"backend": "shelve", "path": str(tmp / "bench.shelf")},
    "sqlite": lambda tmp: {"backend": "sqlite", "path": str(tmp / "bench.db")},
    "tokyo_cabinet": lambda tmp: {"backend": "tokyo_cabinet", "path": str(tmp / "bench.tct")},
    # PostgreSQL needs a server: main() starts a throwaway one (or uses
    # PYMODELS_TEST_POSTGRESQL_URL) and sets BENCH_POSTGRESQL_URL.
    "postgresql": lambda tmp: {
        "backend": "postgresql",
        "url": os.environ["BENCH_POSTGRESQL_URL"],
        "table": f"bench_{tmp.name.replace('-', '_')}",
    },
    # MongoDB likewise: main() starts a throwaway server (or uses PYMODELS_TEST_MONGODB_URL).
    "mongodb": lambda tmp: {
        "backend": "mongodb",
        "url": os.environ["BENCH_MONGODB_URL"],
        "collection": f"bench_{tmp.name.replace('-', '_')}",
    },
}


#: Where a raw baseline names its figures differently: our metric -> its metric.
RAW_METRICS: dict[str, dict[str, str]] = {
    "tokyo_cabinet": {
        "bulk_save": "put_tx_indexed",
        "get": "get",
        "equality": "email_eq",
        "ordered_limit": "ordered_limit",
        "equality_first": "email_eq_first",
        "ordered_first": "ordered_limit_first",
    },
}


#: Where a backend indexes as its raw baseline does rather than as above: the indexes
#: made before the bulk save and after it. Raw Tokyo Cabinet keeps lexical indexes on
#: email and name while it loads, then indexes city; a single-column engine serves
#: ``city == X order by -age`` with city and a decimal index on age.
INDEXES: dict[str, tuple[list[tuple[str, str | None]], list[tuple[str, str | None]]]] = {
    "tokyo_cabinet": (
        [("email", None), ("name", None)],
        [("city", None), ("age", "decimal")],
    ),
}


def run_pymodels(backend: str, n: int, runs: int) -> dict[str, float]:
    """Median ops/s of the workload through pymodels on ``backend``."""
    records = make_records(n)

    def once(seed: int) -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix=f"bench-{backend}-") as tmp:
            storage = pymodels.get_storage(OPENERS[backend](Path(tmp)))
            try:
                before, after = INDEXES.get(backend, (None, None))
                if before is None:
                    storage.create_index("email")
                    if storage.features.compound_indexes:
                        storage.create_index(("city", "-age"))
                    else:
                        storage.create_index("city")
                else:
                    for field, kind in before:
                        storage.create_index(field, kind=kind)
                out = {
                    "bulk_save": rate(
                        n,
                        lambda: storage.save_many(
                            records,
                            batch_size=1000,
                        ),
                    )
                }
                for field, kind in after or ():
                    storage.create_index(field, kind=kind)
                stored = [d.pk for d in storage.query().only("email")]
                picks = random_indices(n, GETS, seed)
                out["get"] = rate(GETS, lambda: each(lambda i: storage.get(None, stored[i]), picks))
                q = storage.query()
                emails = [records[i]["email"] for i in picks]
                out["equality_first"] = rate(1, lambda: q.where(email=emails[-1]).first())
                out["equality"] = timed_loop(lambda i: q.where(email=emails[i]).first(), GETS)
                cities = [records[i]["city"] for i in picks]
                by_age = q.order_by("-age")
                out["ordered_first"] = rate(1, lambda: list(by_age.where(city=cities[-1])[:10]))
                out["ordered_limit"] = timed_loop(
                    lambda i: list(by_age.where(city=cities[i])[:10]), 2000
                )
                return out
            finally:
                storage.close()

    return median_of(runs, once)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backends", default="memory,shelve", help="comma-separated names")
    parser.add_argument("--n", default="10000,100000", help="record counts, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"taken {provenance()}")
    print(f"{'backend':<14}{'n':>8}  {'metric':<14}{'pymodels/s':>12}{'raw/s':>12}{'ratio':>9}")
    with contextlib.ExitStack() as stack:
        if "postgresql" in args.backends.split(","):
            from pymodels.testing.postgresql import postgres_url_for_tests

            os.environ["BENCH_POSTGRESQL_URL"] = stack.enter_context(postgres_url_for_tests())
        if "mongodb" in args.backends.split(","):
            from pymodels.testing.mongodb import mongodb_url_for_tests

            os.environ["BENCH_MONGODB_URL"] = stack.enter_context(mongodb_url_for_tests())
        _report(args)
    print("ratio = raw / pymodels: how many times faster the raw engine is (1.00x = parity)")
    print(f"load average at the end {load_average()}")
    return 0


def _report(args: argparse.Namespace) -> None:
    for backend in args.backends.split(","):
        raw = importlib.import_module(f"raw_{backend}")
        for n in (int(x) for x in args.n.split(",")):
            ours = run_pymodels(backend, n, args.runs)
            env = {"postgresql": "BENCH_POSTGRESQL_URL", "mongodb": "BENCH_MONGODB_URL"}
            extra = {"url": os.environ[env[backend]]} if backend in env else {}
            theirs = raw.run(n, args.runs, **extra)
            names = RAW_METRICS.get(backend, {m: m for m in METRICS})
            for metric in METRICS + FIRST_METRICS:
                if metric in FIRST_METRICS and metric not in names:
                    continue
                a, b = ours.get(metric), theirs.get(names.get(metric, ""))
                ratio = f"{b / a:>8.2f}x" if a and b else "       -"
                print(f"{backend:<14}{n:>8}  {metric:<14}{a or 0:>12,.0f}{b or 0:>12,.0f}{ratio}")
            sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())

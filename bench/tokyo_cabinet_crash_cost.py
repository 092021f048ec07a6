"""What Tokyo Cabinet's crash safety costs: each write in a transaction of its own.

A single ``save``, ``delete`` or small ``clear`` outside a transaction runs in a Tokyo
transaction of its own (``docs/tokyo_cabinet.md``, *Crashes*): Tokyo copies every region
it is about to change into a write-ahead log first, and truncates the log at commit.
``save_many`` already wrote each batch in one transaction before; it is measured as the
control (its figures must not move). The rows compare, in the same process and on fresh
files, the write path with its own transactions (B) with the same path without them (A,
the code before: ``Storage._own_transactions = False``), alternating A B A B, and report
the median CPU time per operation (``time.process_time``: the machine is shared, so
wall-clock time is noisy; wall time is printed too) and the ratio B/A::

    python bench/tokyo_cabinet_crash_cost.py              # N = 20k, 3 rounds
    python bench/tokyo_cabinet_crash_cost.py --n 50000 --rounds 5

The raw rows do the same with the binding alone (``tctdbput`` vs ``tctdbtranbegin`` +
``tctdbput`` + ``tctdbtrancommit``), which is the library's own cost of the log.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from workload import make_records, pks

import pymodels
from pymodels.ext.tokyo_cabinet import Storage
from pymodels.ext.tokyo_cabinet._binding import IndexType, TableDB


def _cpu_and_wall(fn: Callable[[], object]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def storage_case(tmp: str, name: str, n: int, own: bool, indexed: bool) -> tuple[float, float]:
    """CPU and wall seconds of one workload ``name`` on a fresh file."""
    docs = make_records(n)
    keys = pks(n)
    path = os.path.join(tmp, f"{name}-{own}-{time.monotonic_ns()}.tct")
    Storage._own_transactions = own
    try:
        with pymodels.get_storage({"backend": "tokyo_cabinet", "path": path}) as s:
            if indexed:
                s.create_index("email", kind="lexical")
                s.create_index("age", kind="decimal")
            if name == "save":

                def work() -> None:
                    save = s.save
                    for doc, key in zip(docs, keys, strict=True):
                        save(doc, primary_key=key)

            elif name == "delete":
                s.save_many(docs)
                victims = list(s)

                def work() -> None:
                    delete = s.delete
                    for pk in victims:
                        delete(pk)

            else:  # save_many: one transaction per batch of 1000, either way

                def work() -> None:
                    s.save_many(docs)

            return _cpu_and_wall(work)
    finally:
        Storage._own_transactions = True


def raw_case(tmp: str, n: int, own: bool, indexed: bool) -> tuple[float, float]:
    """The binding alone: put, or put in a transaction of its own."""
    path = os.path.join(tmp, f"raw-{own}-{time.monotonic_ns()}.tct")
    rows = [
        (f"k{i:08}".encode(), {b"email": f"user{i}@x".encode(), b"age": b"%d" % (i % 70)})
        for i in range(n)
    ]
    with TableDB().open(path) as db:
        if indexed:
            db.setindex("email", IndexType.LEXICAL)
            db.setindex("age", IndexType.DECIMAL)

        def work() -> None:
            put, atomically = db.put, db.atomically
            if own:
                for key, cols in rows:
                    atomically(put, key, cols)
            else:
                for key, cols in rows:
                    put(key, cols)

        return _cpu_and_wall(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.n
    cases: dict[str, Callable[[str, bool], tuple[float, float]]] = {
        "save, no index": lambda t, own: storage_case(t, "save", n, own, False),
        "save, 2 indexes": lambda t, own: storage_case(t, "save", n, own, True),
        "delete, 2 indexes": lambda t, own: storage_case(t, "delete", n, own, True),
        "save_many (control)": lambda t, own: storage_case(t, "save_many", n, own, True),
        "raw put, no index": lambda t, own: raw_case(t, n, own, False),
        "raw put, 2 indexes": lambda t, own: raw_case(t, n, own, True),
    }
    print(f"N = {n}, {args.rounds} rounds A B alternating; load average {os.getloadavg()}")
    print(
        f"{'workload':22} {'A us/op cpu':>12} {'B us/op cpu':>12} {'B/A cpu':>8} "
        f"{'A wall':>8} {'B wall':>8}"
    )
    for label, case in cases.items():
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        with tempfile.TemporaryDirectory(prefix="pm-tc-cost-") as tmp:
            for _ in range(args.rounds):
                for own in (False, True):
                    results[own].append(case(tmp, own))
        a_cpu = statistics.median(c for c, _ in results[False]) / n * 1e6
        b_cpu = statistics.median(c for c, _ in results[True]) / n * 1e6
        a_wall = statistics.median(w for _, w in results[False]) / n * 1e6
        b_wall = statistics.median(w for _, w in results[True]) / n * 1e6
        print(
            f"{label:22} {a_cpu:12.1f} {b_cpu:12.1f} {b_cpu / a_cpu:8.2f} "
            f"{a_wall:8.1f} {b_wall:8.1f}"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

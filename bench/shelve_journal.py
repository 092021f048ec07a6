"""What dbm.gnu's journal costs: pymodels on shelve next to raw shelve, in CPU time.

    python bench/shelve_journal.py --n 20000 --rounds 3

Each row times the same work through pymodels (``shelve`` backend over
``dbm.gnu``, journaled) and through raw ``shelve.Shelf`` over ``dbm.gnu`` in this
process, alternating A B A B for ``--rounds`` rounds, and prints the median CPU
seconds (``time.process_time``: wall clock is noise on a shared machine) and
the ratio pymodels/raw. Rows: ``save_many`` (batches of 1000), one ``save`` per
record, ``get`` by pk, a full scan (``list(storage.query())``), and the same
single saves with ``sync=True`` next to raw gdbm opened with its ``s`` flag
(both fsync per write: wall seconds shown too, as fsync is not CPU time). This
is a measurement, never a test.
"""

from __future__ import annotations

import argparse
import importlib
import shelve
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workload import make_records, pks

import pymodels


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def _pymodels_rows(
    tmp: Path, records: list[dict[str, Any]], keys: list[str], sync: bool
) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    settings = {"backend": "shelve", "dbm": "dbm.gnu", "sync": sync}
    if not sync:
        with pymodels.get_storage({**settings, "path": str(tmp / "bulk")}) as s:
            out["save_many"] = _timed(lambda: s.save_many(records))
    with pymodels.get_storage({**settings, "path": str(tmp / "one")}) as s:

        def one_by_one() -> None:
            for key, record in zip(keys, records, strict=True):
                s.save(record, primary_key=key)

        out["save" + ("_sync" if sync else "")] = _timed(one_by_one)
        if not sync:
            out["get"] = _timed(lambda: [s.get(None, key) for key in keys])
            out["scan"] = _timed(lambda: list(s.query()))
    return out


def _raw_rows(
    tmp: Path, records: list[dict[str, Any]], keys: list[str], sync: bool
) -> dict[str, tuple[float, float]]:
    gnu = importlib.import_module("dbm.gnu")
    out: dict[str, tuple[float, float]] = {}
    if not sync:
        bulk: shelve.Shelf[Any] = shelve.Shelf(gnu.open(str(tmp / "bulk"), "c"))
        with bulk:
            out["save_many"] = _timed(lambda: _load(bulk, keys, records))
    shelf: shelve.Shelf[Any] = shelve.Shelf(gnu.open(str(tmp / "one"), "cs" if sync else "c"))
    with shelf:
        out["save" + ("_sync" if sync else "")] = _timed(lambda: _load(shelf, keys, records))
        if not sync:
            out["get"] = _timed(lambda: [shelf[key] for key in keys])
            out["scan"] = _timed(lambda: [shelf[key] for key in list(shelf.keys())])
    return out


def _load(shelf: shelve.Shelf[Any], keys: list[str], records: list[dict[str, Any]]) -> None:
    for key, record in zip(keys, records, strict=True):
        shelf[key] = record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--sync-n", type=int, default=300, help="records for the sync rows")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    records, keys = make_records(args.n), pks(args.n)
    sync_records, sync_keys = records[: args.sync_n], keys[: args.sync_n]
    ours: dict[str, list[tuple[float, float]]] = {}
    raw: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.rounds):  # A B A B: load drifts, so interleave
        for side, runner, into in (("pymodels", _pymodels_rows, ours), ("raw", _raw_rows, raw)):
            del side
            for sync, (recs, ks) in ((False, (records, keys)), (True, (sync_records, sync_keys))):
                with tempfile.TemporaryDirectory(prefix="bench-shelve-journal-") as tmp:
                    for row, figure in runner(Path(tmp), recs, ks, sync).items():
                        into.setdefault(row, []).append(figure)
    print(f"n={args.n} (sync rows: {args.sync_n}), {args.rounds} rounds, medians")
    print(f"{'row':<10} {'pymodels cpu s':>15} {'raw cpu s':>10} {'ratio':>6}  wall s (ours/raw)")
    for row in ours:
        cpu_ours = statistics.median(c for c, _ in ours[row])
        cpu_raw = statistics.median(c for c, _ in raw[row])
        wall_ours = statistics.median(w for _, w in ours[row])
        wall_raw = statistics.median(w for _, w in raw[row])
        ratio = cpu_ours / cpu_raw if cpu_raw else float("nan")
        print(
            f"{row:<10} {cpu_ours:>15.3f} {cpu_raw:>10.3f} {ratio:>6.2f}  "
            f"{wall_ours:.3f}/{wall_raw:.3f}"
        )


if __name__ == "__main__":
    main()

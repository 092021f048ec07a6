"""Raw shelve doing the benchmark workload with the plainest calls (the shelve baseline).

``shelf[key] = record`` to load, ``shelf[key]`` to get, and a full scan with an
``if`` for the equality and ordered queries: what a program without pymodels
would write over the same dbm module.
"""

from __future__ import annotations

import argparse
import importlib
import shelve
import tempfile
from pathlib import Path
from typing import Any

from workload import each, make_records, median_of, pks, random_indices, rate, timed_loop

GETS = 10_000


def run(n: int, runs: int = 3, module: str | None = None) -> dict[str, float]:
    """Median ops/s of bulk save, get by pk, equality scan and ordered limited scan."""
    name = module or next(m for m in ("dbm.gnu", "dbm.ndbm", "dbm.dumb") if _has(m))
    records, keys = make_records(n), pks(n)
    dbm_module = importlib.import_module(name)

    def once(seed: int) -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="raw-shelve-") as tmp:
            shelf: shelve.Shelf[Any] = shelve.Shelf(dbm_module.open(str(Path(tmp) / "db"), "c"))
            try:
                out = {"bulk_save": rate(n, lambda: _load(shelf, keys, records))}
                picks = random_indices(n, GETS, seed)
                out["get"] = rate(GETS, lambda: each(lambda i: shelf[keys[i]], picks))
                emails = [records[i]["email"] for i in picks]

                def equality(i: int) -> object:
                    return [k for k in shelf if shelf[k]["email"] == emails[i]]

                def ordered(i: int) -> object:
                    city = records[picks[i]]["city"]
                    hits = [(shelf[k]["age"], k) for k in shelf if shelf[k]["city"] == city]
                    return sorted(hits, key=lambda h: (-h[0], h[1]))[:10]

                out["equality"] = timed_loop(equality, 1000)
                out["ordered_limit"] = timed_loop(ordered, 200)
                return out
            finally:
                shelf.close()

    return median_of(runs, once)


def _load(shelf: shelve.Shelf[object], keys: list[str], records: list[dict[str, object]]) -> None:
    for key, record in zip(keys, records, strict=True):
        shelf[key] = record


def _has(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    print(run(args.n))

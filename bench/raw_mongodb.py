"""Raw pymongo doing the benchmark workload (the MongoDB baseline).

The way a program without pymodels keeps these records in MongoDB: one
collection, the pk as ``_id``, an index on ``email`` and a compound index on
``(city, age desc)`` created before the load, ``insert_many`` per batch of 1000,
``find_one`` by ``_id``, ``find_one`` by email, ``find(city).sort(age desc).limit(10)``;
documents as pymongo decodes them (no type tags, no kind guards).

    python bench/raw_mongodb.py --n 10000                 # a throwaway server
    python bench/raw_mongodb.py --url mongodb://host:27017/

Without ``--url`` the server is ``PYMODELS_TEST_MONGODB_URL`` or a throwaway one
(:mod:`pymodels.testing.mongodb`: a mongod on PATH, else SecantusDB).
"""

from __future__ import annotations

import argparse
import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pymongo
from workload import each, make_records, median_of, pks, random_indices, rate, timed_loop

from pymodels.testing.mongodb import mongodb_url_for_tests

GETS = 5_000
BATCH = 1000

#: What each figure measures (operations per second).
METRICS: dict[str, str] = {
    "bulk_save": "records saved, insert_many of 1000, indexes maintained",
    "get": "find_one by _id, random order",
    "equality": "find_one by email (indexed)",
    "ordered_limit": "city == X sort age desc limit 10 (compound index)",
}


@contextlib.contextmanager
def server(url: str | None = None) -> Iterator[str]:
    """``url``, else ``PYMODELS_TEST_MONGODB_URL``, else a throwaway server's URL."""
    if url is not None:
        yield url
        return
    with mongodb_url_for_tests() as test_url:
        yield test_url


def run(n: int, runs: int = 3, url: str | None = None) -> dict[str, float]:
    """Median ops/s of bulk save, get by pk, indexed equality and ordered limited query."""
    records, keys = make_records(n), pks(n)
    with server(url) as address:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(address)

        def once(seed: int) -> dict[str, float]:
            coll = client.bench_raw[f"raw_{uuid.uuid4().hex[:8]}"]
            try:
                coll.create_index([("email", 1)])
                coll.create_index([("city", 1), ("age", -1)])

                def load() -> None:
                    for start in range(0, n, BATCH):
                        coll.insert_many(
                            [
                                {"_id": keys[i], **records[i]}
                                for i in range(start, min(n, start + BATCH))
                            ]
                        )

                out = {"bulk_save": rate(n, load)}
                picks = random_indices(n, GETS, seed)
                out["get"] = rate(
                    GETS, lambda: each(lambda i: coll.find_one({"_id": keys[i]}), picks)
                )
                emails = [records[i]["email"] for i in picks]
                out["equality"] = timed_loop(lambda i: coll.find_one({"email": emails[i]}), GETS)
                cities = [records[i]["city"] for i in picks]
                out["ordered_limit"] = timed_loop(
                    lambda i: list(coll.find({"city": cities[i]}).sort([("age", -1)]).limit(10)),
                    2000,
                )
                return out
            finally:
                coll.drop()

        try:
            return median_of(runs, once)
        finally:
            client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    for name, value in run(args.n, args.runs, args.url).items():
        print(f"{name:<14}{value:>12,.0f}/s  {METRICS[name]}")


if __name__ == "__main__":
    main()

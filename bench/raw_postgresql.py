"""Raw PostgreSQL doing the benchmark workload with plain psycopg 3 calls (the PostgreSQL baseline).

The way a program without pymodels keeps JSON documents in PostgreSQL, doing what
``run.py`` does through pymodels but without kind guards, type tags or documents: one
table ``(pk TEXT PRIMARY KEY, body JSONB)``, btree expression indexes on
``(body->>'email')`` and on city then age descending (created before the load),
``executemany`` (pipelined) in one transaction per batch of 1000, rows decoded by
psycopg's jsonb loader.

    python bench/raw_postgresql.py --n 100000              # a throwaway server
    python bench/raw_postgresql.py --url postgresql://user@host:5432/db

Without ``--url`` the server is ``PYMODELS_TEST_POSTGRESQL_URL`` or a throwaway one
started for the run (:mod:`pymodels.testing.postgresql`). :func:`run` returns operations
per second for ``bulk_save``, ``get``, ``equality`` and ``ordered_limit``, as
``raw_sqlite.py`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
from workload import each, make_records, median_of, pks, random_indices, rate, timed_loop

from pymodels.testing.postgresql import postgres_url_for_tests

GETS = 5_000
BATCH = 1000

#: What each figure measures (operations per second).
METRICS: dict[str, str] = {
    "bulk_save": "records saved, executemany in transactions of 1000, indexes maintained",
    "get": "get by primary key, decoded, random order",
    "equality": "first record with an email (indexed), decoded",
    "ordered_limit": "city == X order by age desc limit 10 (compound index), decoded",
}


@contextlib.contextmanager
def server(url: str | None = None) -> Iterator[str]:
    """``url``, else ``PYMODELS_TEST_POSTGRESQL_URL``, else a throwaway server's URL."""
    if url is not None:
        yield url
        return
    with postgres_url_for_tests() as test_url:
        yield test_url


def run(n: int, runs: int = 3, url: str | None = None) -> dict[str, float]:
    """Median ops/s of bulk save, get by pk, indexed equality and ordered limited query."""
    records, keys = make_records(n), pks(n)
    with server(url) as conninfo:

        def once(seed: int) -> dict[str, float]:
            table = f"raw_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(conninfo, autocommit=True) as conn:
                try:
                    return _measure(conn, table, n, records, keys, seed)
                finally:
                    conn.execute(f"DROP TABLE IF EXISTS {table}")

        return median_of(runs, once)


def _measure(
    conn: psycopg.Connection[Any],
    table: str,
    n: int,
    records: list[dict[str, Any]],
    keys: list[str],
    seed: int,
) -> dict[str, float]:
    conn.execute(f"CREATE TABLE {table} (pk TEXT PRIMARY KEY, body JSONB NOT NULL)")
    conn.execute(f"CREATE INDEX ON {table} ((body->>'email'))")
    conn.execute(f"CREATE INDEX ON {table} ((body->>'city'), (body->'age') DESC)")
    insert = f"INSERT INTO {table} (pk, body) VALUES (%s, %s::jsonb)"

    def bulk() -> None:
        dumps = json.dumps
        for start in range(0, n, BATCH):
            rows = [(keys[i], dumps(records[i])) for i in range(start, min(n, start + BATCH))]
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(insert, rows)

    out = {"bulk_save": rate(n, bulk)}
    conn.execute(f"ANALYZE {table}")
    picks = random_indices(n, GETS, seed)
    by_pk = f"SELECT body FROM {table} WHERE pk = %s"
    out["get"] = rate(
        GETS, lambda: each(lambda i: conn.execute(by_pk, (keys[i],)).fetchone(), picks)
    )
    emails = [records[i]["email"] for i in picks]
    by_email = f"SELECT pk, body FROM {table} WHERE body->>'email' = %s LIMIT 1"
    out["equality"] = timed_loop(lambda i: conn.execute(by_email, (emails[i],)).fetchall(), GETS)
    cities = [records[i]["city"] for i in picks]
    ordered = (
        f"SELECT pk, body FROM {table} WHERE body->>'city' = %s ORDER BY body->'age' DESC LIMIT 10"
    )
    out["ordered_limit"] = timed_loop(
        lambda i: conn.execute(ordered, (cities[i],)).fetchall(), 2000
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="records (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of")
    parser.add_argument("--url", default=None, help="an existing server (default: throwaway)")
    args = parser.parse_args(argv)
    figures = run(args.n, args.runs, args.url)
    print(f"PostgreSQL, raw psycopg {psycopg.__version__}, N={args.n:,}, median of {args.runs}")
    for name, description in METRICS.items():
        print(f"  {name:14} {figures[name]:>12,.0f} ops/s  {description}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

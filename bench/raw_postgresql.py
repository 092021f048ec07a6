"""Raw PostgreSQL throughput through psycopg 3, with no pymodels involved.

This is the floor the PostgreSQL backend is measured against: the plain way to keep JSON
documents in PostgreSQL, doing the same work as pymodels without its kind guards, type tags
or documents. Workload (as in shared/notes/performance.md and bench/raw_sqlite.py): N
records of six fields, primary keys "k0000000".., one table ``(pk TEXT PRIMARY KEY, body
JSONB)``, btree expression indexes on ``(body->>'email')`` and on city then age descending,
created before the load; bulk writes by ``executemany`` (pipelined) in transactions of 1000.

Usage:
    python bench/raw_postgresql.py                  # N = 100k, throwaway server
    python bench/raw_postgresql.py --url postgresql://user@host:5432/db

Without ``--url`` (or ``PYMODELS_TEST_POSTGRESQL_URL``) a throwaway server is started
(``pymodels.testing.postgresql``). Each figure is the median of three runs in this process,
each on a fresh table. The project-level benchmark imports :func:`run` and gets the figures
as a dict of operations per second (keys: :data:`METRICS`).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from pymodels.testing.postgresql import postgres_url_for_tests

#: What each figure measures (all in operations per second).
METRICS: dict[str, str] = {
    "bulk_save": "records saved, executemany in transactions of 1000, indexes maintained",
    "get": "get by primary key (decoded), random order",
    "indexed_eq": "equality on the indexed email (1 hit, decoded)",
    "ordered_limit": "city == X order by age desc limit 10 on the compound index (decoded)",
}

#: Reference figures from shared/notes/engines.md section 9 (100k, loopback, fsync off).
REFERENCE: dict[str, str] = {
    "bulk_save": "63k/s (executemany)",
    "get": "~7k/s",
    "indexed_eq": "~7k/s",
    "ordered_limit": "(not measured there)",
}

BATCH = 1000
GETS = 5_000
EMAIL_QUERIES = 5_000
ORDERED_QUERIES = 2_000


def make_records(n: int) -> list[dict[str, Any]]:
    """The N records of the workload (the same as bench/raw_sqlite.py)."""
    return [
        {
            "name": f"name{i:07d}",
            "email": f"user{i}@example.com",
            "age": 18 + i * 7 % 70,
            "score": i * 37 % 10_000 / 100,
            "city": f"city{i % 50:02d}",
            "tags": [f"t{i % 10}", f"t{i % 7}"],
        }
        for i in range(n)
    ]


def _rate(count: int, func: Callable[[], None]) -> float:
    started = time.perf_counter()
    func()
    return count / (time.perf_counter() - started)


def run_once(url: str, n: int, records: list[dict[str, Any]], seed: int = 0) -> dict[str, float]:
    """One run of every measurement on a fresh table; operations per second by metric."""
    rng = random.Random(seed)
    result: dict[str, float] = {}
    pks = [f"k{i:07d}" for i in range(n)]
    table = f"raw_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (pk TEXT PRIMARY KEY, body JSONB NOT NULL)")
        conn.execute(f"CREATE INDEX ON {table} ((body->>'email'))")
        conn.execute(f"CREATE INDEX ON {table} ((body->>'city'), ((body->'age')) DESC)")
        try:

            def bulk() -> None:
                dumps = json.dumps
                sql = f"INSERT INTO {table} (pk, body) VALUES (%s, %s::jsonb)"
                for start in range(0, n, BATCH):
                    rows = [
                        (pks[i], dumps(records[i])) for i in range(start, min(n, start + BATCH))
                    ]
                    with conn.transaction(), conn.cursor() as cur:
                        cur.executemany(sql, rows)

            result["bulk_save"] = _rate(n, bulk)
            conn.execute(f"ANALYZE {table}")

            keys = [pks[rng.randrange(n)] for _ in range(GETS)]

            def gets() -> None:
                sql = f"SELECT body FROM {table} WHERE pk = %s"
                for pk in keys:
                    conn.execute(sql, (pk,)).fetchone()

            result["get"] = _rate(len(keys), gets)

            emails = [records[rng.randrange(n)]["email"] for _ in range(EMAIL_QUERIES)]

            def email_eq() -> None:
                sql = f"SELECT pk, body FROM {table} WHERE body->>'email' = %s"
                for email in emails:
                    conn.execute(sql, (email,)).fetchall()

            result["indexed_eq"] = _rate(len(emails), email_eq)

            cities = [f"city{rng.randrange(50):02d}" for _ in range(ORDERED_QUERIES)]

            def ordered() -> None:
                sql = (
                    f"SELECT pk, body FROM {table} WHERE body->>'city' = %s "
                    "ORDER BY body->'age' DESC LIMIT 10"
                )
                for city in cities:
                    conn.execute(sql, (city,)).fetchall()

            result["ordered_limit"] = _rate(len(cities), ordered)
        finally:
            conn.execute(f"DROP TABLE {table}")
    return result


def run(n: int = 100_000, runs: int = 3, url: str | None = None) -> dict[str, float]:
    """Median over ``runs`` runs of every metric (operations per second), N records each."""
    records = make_records(n)
    if url is not None:
        samples = [run_once(url, n, records, seed=i) for i in range(runs)]
    else:
        with postgres_url_for_tests() as test_url:
            samples = [run_once(test_url, n, records, seed=i) for i in range(runs)]
    return {name: statistics.median(s[name] for s in samples) for name in METRICS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="records (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of")
    parser.add_argument("--url", default=None, help="an existing server (default: throwaway)")
    args = parser.parse_args(argv)
    figures = run(args.n, args.runs, args.url)
    print(f"PostgreSQL raw psycopg {psycopg.__version__}, N={args.n:,}, median of {args.runs} runs")
    for name, description in METRICS.items():
        print(f"  {name:14} {figures[name]:>12,.0f} ops/s  {description}")
        print(f"  {'':14} {'':>12}        reference: {REFERENCE[name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

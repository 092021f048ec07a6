"""Raw SQLite throughput through the standard library's sqlite3, with no pymodels involved.

This is the floor the SQLite backend is measured against: the plain way to keep JSON
documents in SQLite, doing the same work as pymodels without its kind guards, type tags or
documents. Workload (as in shared/notes/performance.md): N records of six fields (name,
unique email, age, score, city of 50 values, two tags), primary keys "k0000000".., one
table ``(pk TEXT PRIMARY KEY, body TEXT)``, a file in WAL mode with synchronous=NORMAL,
expression indexes on ``json_extract(body, '$.email')`` and on city then age descending,
created before the load.

Usage:
    python bench/raw_sqlite.py            # N = 100k
    python bench/raw_sqlite.py --n 1000000

Each figure is the median of three runs in this process, each on a fresh file. The
project-level benchmark imports :func:`run` and gets the figures as a dict of operations
per second (keys: :data:`METRICS`).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: What each figure measures (all in operations per second).
METRICS: dict[str, str] = {
    "bulk_save": "records saved, batches of 1000 per transaction, indexes maintained",
    "get": "get by primary key (decoded), random order",
    "indexed_eq": "equality on the indexed email (1 hit, decoded)",
    "ordered_limit": "city == X order by age desc limit 10 on the compound index (decoded)",
}

#: Reference figures from shared/notes/performance.md (100k, raw SQLite).
REFERENCE: dict[str, str] = {
    "bulk_save": "120k-148k/s",
    "get": "105k-119k/s",
    "indexed_eq": "89k-115k/s",
    "ordered_limit": "~27k/s with a composite index",
}

BATCH = 1000
GETS = 20_000
EMAIL_QUERIES = 20_000
ORDERED_QUERIES = 5_000


def make_records(n: int) -> list[dict[str, Any]]:
    """The N records of the workload (shared with the pymodels side of the benchmark)."""
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


def run_once(n: int, records: list[dict[str, Any]], seed: int = 0) -> dict[str, float]:
    """One run of every measurement on a fresh file; operations per second by metric."""
    rng = random.Random(seed)
    result: dict[str, float] = {}
    pks = [f"k{i:07d}" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="raw-sqlite-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE docs (pk TEXT PRIMARY KEY, body TEXT NOT NULL)")
        conn.execute("CREATE INDEX ix_email ON docs (json_extract(body, '$.email'))")
        conn.execute(
            "CREATE INDEX ix_city_age ON docs "
            "(json_extract(body, '$.city'), json_extract(body, '$.age') DESC)"
        )

        def bulk() -> None:
            dumps = json.dumps
            for start in range(0, n, BATCH):
                rows = [(pks[i], dumps(records[i])) for i in range(start, min(n, start + BATCH))]
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO docs (pk, body) VALUES (?, ?)", rows)
                conn.execute("COMMIT")

        result["bulk_save"] = _rate(n, bulk)

        keys = [pks[rng.randrange(n)] for _ in range(GETS)]

        def gets() -> None:
            loads, execute = json.loads, conn.execute
            for pk in keys:
                loads(execute("SELECT body FROM docs WHERE pk = ?", (pk,)).fetchone()[0])

        result["get"] = _rate(len(keys), gets)

        emails = [records[rng.randrange(n)]["email"] for _ in range(EMAIL_QUERIES)]

        def email_eq() -> None:
            loads, execute = json.loads, conn.execute
            sql = "SELECT pk, body FROM docs WHERE json_extract(body, '$.email') = ?"
            for email in emails:
                for _pk, body in execute(sql, (email,)).fetchall():
                    loads(body)

        result["indexed_eq"] = _rate(len(emails), email_eq)

        cities = [f"city{rng.randrange(50):02d}" for _ in range(ORDERED_QUERIES)]

        def ordered() -> None:
            loads, execute = json.loads, conn.execute
            sql = (
                "SELECT pk, body FROM docs WHERE json_extract(body, '$.city') = ? "
                "ORDER BY json_extract(body, '$.age') DESC LIMIT 10"
            )
            for city in cities:
                for _pk, body in execute(sql, (city,)).fetchall():
                    loads(body)

        result["ordered_limit"] = _rate(len(cities), ordered)
        conn.close()
    return result


def run(n: int = 100_000, runs: int = 3) -> dict[str, float]:
    """Median over ``runs`` runs of every metric (operations per second), N records each."""
    records = make_records(n)
    samples = [run_once(n, records, seed=i) for i in range(runs)]
    return {name: statistics.median(s[name] for s in samples) for name in METRICS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="records (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of")
    args = parser.parse_args(argv)
    figures = run(args.n, args.runs)
    print(f"SQLite {sqlite3.sqlite_version} raw sqlite3, N={args.n:,}, median of {args.runs} runs")
    for name, description in METRICS.items():
        print(f"  {name:14} {figures[name]:>12,.0f} ops/s  {description}")
        print(f"  {'':14} {'':>12}        reference: {REFERENCE[name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

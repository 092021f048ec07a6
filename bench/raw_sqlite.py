"""Raw SQLite doing the benchmark workload with the plainest sqlite3 calls (the SQLite baseline).

The way a program without pymodels keeps JSON documents in SQLite, doing what
``run.py`` does through pymodels but without kind guards, type tags or documents: one
table ``(pk TEXT PRIMARY KEY, body TEXT)`` in a WAL file with ``synchronous=NORMAL``,
expression indexes on ``json_extract(body, '$.email')`` and on city then age descending
(created before the load), ``executemany`` in one transaction per batch of 1000,
``json.loads`` on every row read.

    python bench/raw_sqlite.py --n 100000        # medians of three runs, one process

:func:`run` returns operations per second for ``bulk_save``, ``get``, ``equality`` (the
first record with a given email) and ``ordered_limit`` (``city == X`` ordered by age
descending, 10 records).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from workload import each, make_records, median_of, pks, random_indices, rate, timed_loop

GETS = 10_000
BATCH = 1000

#: What each figure measures (operations per second).
METRICS: dict[str, str] = {
    "bulk_save": "records saved, batches of 1000 per transaction, indexes maintained",
    "get": "get by primary key, decoded, random order",
    "equality": "first record with an email (indexed), decoded",
    "ordered_limit": "city == X order by age desc limit 10 (compound index), decoded",
}


def run(n: int, runs: int = 3) -> dict[str, float]:
    """Median ops/s of bulk save, get by pk, indexed equality and ordered limited query."""
    records, keys = make_records(n), pks(n)

    def once(seed: int) -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="raw-sqlite-") as tmp:
            conn = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
            try:
                return _measure(conn, n, records, keys, seed)
            finally:
                conn.close()

    return median_of(runs, once)


def _measure(
    conn: sqlite3.Connection, n: int, records: list[dict[str, Any]], keys: list[str], seed: int
) -> dict[str, float]:
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
            rows = [(keys[i], dumps(records[i])) for i in range(start, min(n, start + BATCH))]
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO docs (pk, body) VALUES (?, ?)", rows)
            conn.execute("COMMIT")

    out = {"bulk_save": rate(n, bulk)}
    picks = random_indices(n, GETS, seed)
    loads, execute = json.loads, conn.execute

    by_pk = "SELECT body FROM docs WHERE pk = ?"
    out["get"] = rate(
        GETS, lambda: each(lambda i: loads(execute(by_pk, (keys[i],)).fetchone()[0]), picks)
    )
    emails = [records[i]["email"] for i in picks]
    by_email = "SELECT pk, body FROM docs WHERE json_extract(body, '$.email') = ? LIMIT 1"

    def equality(i: int) -> object:
        return [loads(body) for _, body in execute(by_email, (emails[i],)).fetchall()]

    out["equality"] = timed_loop(equality, GETS)
    cities = [records[i]["city"] for i in picks]
    ordered_sql = (
        "SELECT pk, body FROM docs WHERE json_extract(body, '$.city') = ? "
        "ORDER BY json_extract(body, '$.age') DESC LIMIT 10"
    )

    def ordered(i: int) -> object:
        return [loads(body) for _, body in execute(ordered_sql, (cities[i],)).fetchall()]

    out["ordered_limit"] = timed_loop(ordered, 2000)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000, help="records (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of")
    args = parser.parse_args(argv)
    figures = run(args.n, args.runs)
    print(f"SQLite {sqlite3.sqlite_version}, raw sqlite3, N={args.n:,}, median of {args.runs}")
    for name, description in METRICS.items():
        print(f"  {name:14} {figures[name]:>12,.0f} ops/s  {description}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

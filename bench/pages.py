"""Deep pages: ``after()`` (keyset pagination) against a slice, beside the raw driver.

    python bench/pages.py                           # SQLite, 100,000 records
    python bench/pages.py --backends sqlite,postgresql --n 100000

For each backend: save ``--n`` records ``{"n": i, "pad": ...}`` with an index on ``n``,
then fetch a page of ten records at several depths of ``order_by("n")`` (ascending),
``order_by("-n")`` (descending) and the pk's order (no ``order_by``), two ways:

* ``after``: ``q.after(anchor)[:10]``, the anchor being the record at the depth;
* ``slice``: ``q[depth + 1 : depth + 11]``.

Beside them, the raw driver doing the same work on a table ``(pk, body)`` with an
expression index on ``n`` (SQLite: ``json_extract``; PostgreSQL: ``((body->>'n')::int)``):
a keyset ``WHERE n > ? ORDER BY n LIMIT 10`` (ties of ``n`` cannot occur here, every ``n``
is unique, so raw needs no tiebreak) and an ``OFFSET``. Both sides decode the bodies.

Figures are pages per second, medians of ``--runs`` runs in one process, each over
``timed_loop``'s budget. PostgreSQL gets a throwaway server from
:mod:`pymodels.testing.postgresql` (or ``PYMODELS_TEST_POSTGRESQL_URL``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from workload import median_of, provenance, timed_loop

import pymodels

DEPTHS = (1_000, 50_000, 90_000)
Execute = Callable[[str, tuple[Any, ...]], list[tuple[Any, Any]]]
ORDERS = ("n", "-n", "pk")


def _records(n: int) -> list[dict[str, Any]]:
    return [{"n": i, "pad": f"record {i:07} " + "x" * 40} for i in range(n)]


def run_pymodels(settings: dict[str, Any], n: int) -> dict[str, float]:
    """Pages per second through pymodels, by ``order/way/depth``."""
    storage = pymodels.get_storage(settings)
    try:
        storage.create_index("n")
        storage.save_many(_records(n), batch_size=1000)
        out: dict[str, float] = {}
        for order in ORDERS:
            q = storage.query() if order == "pk" else storage.query().order_by(order)
            for depth in DEPTHS:
                anchor = q[depth : depth + 1].first()
                assert anchor is not None
                want = [d.pk for d in q[depth + 1 : depth + 11]]
                assert [d.pk for d in q.after(anchor)[:10]] == want  # correct before timed
                out[f"{order}/after/{depth}"] = _pages(partial(list, q.after(anchor)[:10]))
                out[f"{order}/slice/{depth}"] = _pages(partial(list, q[depth + 1 : depth + 11]))
        return out
    finally:
        storage.clear()
        storage.close()


def _pages(fetch: Callable[[], object]) -> float:
    """Pages per second of ``fetch`` (one page a call)."""
    return timed_loop(lambda _: fetch(), 2000)


def _decoded(execute: Execute, sql: str, params: tuple[Any, ...]) -> list[Any]:
    """The bodies of a raw page, decoded (psycopg decodes JSONB itself)."""
    return [json.loads(b) if isinstance(b, str) else b for _, b in execute(sql, params)]


def _raw_pages(
    execute: Execute,
    key: str,
    param: str,
    pk_order: str,
) -> dict[str, float]:
    """The raw side of every order, way and depth; ``key`` is the SQL of ``n``."""
    out: dict[str, float] = {}
    for order in ORDERS:
        column = pk_order if order == "pk" else key
        direction, cmp = (" DESC", "<") if order == "-n" else ("", ">")
        keyset = (
            f"SELECT pk, body FROM docs WHERE {column} {cmp} {param} "
            f"ORDER BY {column}{direction} LIMIT 10"
        )
        offset = f"SELECT pk, body FROM docs ORDER BY {column}{direction} LIMIT 10 OFFSET {param}"
        for depth in DEPTHS:
            (anchor,) = execute(
                f"SELECT {column}, 0 FROM docs ORDER BY {column}{direction} LIMIT 1 OFFSET {param}",
                (depth,),
            )
            first = execute(keyset, (anchor[0],))
            assert first == execute(offset, (depth + 1,))  # the same page both ways
            after = partial(_decoded, execute, keyset, (anchor[0],))
            out[f"{order}/after/{depth}"] = _pages(after)
            out[f"{order}/slice/{depth}"] = _pages(partial(_decoded, execute, offset, (depth + 1,)))
    return out


def run_raw_sqlite(path: Path, n: int) -> dict[str, float]:
    """The plainest sqlite3 keyset and offset pages (WAL, ``synchronous=NORMAL``)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE docs (pk TEXT PRIMARY KEY, body TEXT NOT NULL)")
        conn.execute("CREATE INDEX ix_n ON docs (json_extract(body, '$.n'))")
        rows = [(f"k{i:08}", json.dumps(r)) for i, r in enumerate(_records(n))]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO docs VALUES (?, ?)", rows)
        conn.execute("COMMIT")

        def execute(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, Any]]:
            return conn.execute(sql, params).fetchall()

        return _raw_pages(execute, "json_extract(body, '$.n')", "?", "pk")
    finally:
        conn.close()


def run_raw_postgresql(url: str, n: int) -> dict[str, float]:
    """The plainest psycopg keyset and offset pages (an expression index on ``n``)."""
    import psycopg
    from psycopg.types.json import Jsonb

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS docs")
        conn.execute('CREATE TABLE docs (pk TEXT COLLATE "C" PRIMARY KEY, body JSONB NOT NULL)')
        conn.execute("CREATE INDEX ix_n ON docs (((body->>'n')::int))")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO docs VALUES (%s, %s)",
                [(f"k{i:08}", Jsonb(r)) for i, r in enumerate(_records(n))],
            )
        conn.execute("ANALYZE docs")

        def execute(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, Any]]:
            return conn.execute(sql, params).fetchall()

        try:
            return _raw_pages(execute, "((body->>'n')::int)", "%s", "pk")
        finally:
            conn.execute("DROP TABLE docs")


@contextlib.contextmanager
def _postgresql_url() -> Iterator[str]:
    from pymodels.testing.postgresql import postgres_url_for_tests

    with postgres_url_for_tests() as url:
        yield url


def _measure(backend: str, n: int, runs: int) -> tuple[dict[str, float], dict[str, float]]:
    """(pymodels' figures, raw's figures) for ``backend``."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pages-")))
        if backend == "sqlite":
            settings: dict[str, Any] = {"backend": "sqlite", "path": str(tmp / "p.db")}

            def raw(seed: int) -> dict[str, float]:
                return run_raw_sqlite(tmp / f"raw{seed}.db", n)
        else:
            url = stack.enter_context(_postgresql_url())
            settings = {"backend": "postgresql", "url": url, "table": "pages"}

            def raw(seed: int) -> dict[str, float]:
                return run_raw_postgresql(url, n)

        ours = median_of(runs, lambda seed: run_pymodels(settings, n))
        return ours, median_of(runs, raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", default="sqlite", help="sqlite,postgresql")
    args = parser.parse_args(argv)
    print(provenance())
    print(f"N={args.n:,}, a page of 10, pages per second, medians of {args.runs} runs")
    for backend in args.backends.split(","):
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"--backends: no deep-page bench for {backend!r}")
        ours, theirs = _measure(backend, args.n, args.runs)
        print(f"\n{backend}")
        print("| order | depth | after | raw keyset | slice | raw offset |")
        print("|---|---:|---:|---:|---:|---:|")
        for order in ORDERS:
            for depth in DEPTHS:
                cells = [
                    f"{fig[f'{order}/{way}/{depth}']:,.0f}"
                    for way in ("after", "slice")
                    for fig in (ours, theirs)
                ]
                print(f"| {order} | {depth:,} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

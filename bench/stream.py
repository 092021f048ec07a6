"""Streaming a large query: does memory stay flat while the results go by?

    python bench/stream.py                          # 1M records, every embedded backend
    python bench/stream.py --n 200000 --only memory,sqlite
    python bench/stream.py --only postgresql,mongodb,tokyo_tyrant   # 1M records, servers

For each backend, in a fresh process: save ``--n`` records of the workload (made one
at a time, so the program holds none of them), collect garbage, reset the kernel's peak
(``/proc/self/clear_refs``), note the resident memory, then iterate three queries to
the end, keeping nothing: ``where(age__gt=50)`` (about half the records, pk order),
``query()`` (every record) and ``order_by("-age")`` (every record, by a field: the
engine's sort, or the external sort of ``pymodels.spill`` where pymodels sorts in
Python). The table shows how far the peak rose above the resident
memory before the query, and the rate. A backend that streams rises by a constant
(a batch of records, a few documents); one that holds a list of every matching pk
rises with ``--n``. Linux only (it reads ``/proc/self/status``, whose counters are
approximate: a rise within 0.3 MB either way, e.g. -0.1 MB, is no rise).

Beside each row, the raw driver doing the same work in a fresh process of its own
(``raw_stream.py``): the same records saved under ascending pks, the same three queries
iterated to the end, by the plainest correct use of the driver. Where the
driver can only give pk order by listing every key (shelve, Tokyo Cabinet, Tokyo
Tyrant), the raw side lists them, and its rise shows it; the raw memory side hands out
the stored dicts themselves, where pymodels copies each record into a document.

The server backends (``--only postgresql,mongodb,tokyo_tyrant``) each get a fresh
throwaway server from :mod:`pymodels.testing` on 127.0.0.1 (PostgreSQL from Debian's
binaries, MongoDB from ``mongod`` or SecantusDB, Tokyo Tyrant from the ``ttserver`` named
by ``PYMODELS_TEST_TTSERVER`` or else the project's protocol server), started by this
script before the worker and stopped by its pid after it (the raw worker gets a server of
its own, as Tokyo Tyrant has one database a server). The figures are the worker's,
the *client's*: the server runs in its own processes and its memory is not counted.
A million records fit: the three servers took 6 minutes on a shared 2-core machine
(2026-12-06; most of it loading SecantusDB and Tyrant); ``--n 200000`` is a quicker
check (under a minute), enough to see a rise that grows with the records.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from workload import CITIES, provenance

BACKENDS = ("memory", "shelve", "sqlite", "tokyo_cabinet")
#: The queries each worker iterates, and their labels in the table.
QUERIES = (
    ("half", "where(age__gt=50)"),
    ("all", "query()"),
    ("by_age", 'order_by("-age")'),
)
#: Backends measured against a throwaway server (only when named in ``--only``).
SERVERS = ("postgresql", "mongodb", "tokyo_tyrant")


def records(n: int) -> Iterator[dict[str, Any]]:
    """The workload's records, one at a time (workload.make_records builds them all)."""
    for i in range(n):
        yield {
            "name": f"name{i:07}",
            "email": f"user{i}@example.com",
            "age": 18 + i * 7 % 70,
            "score": (i * 7919 % 10_000) / 100,
            "city": CITIES[i % 50],
            "tags": [f"t{i % 7}", f"u{i % 11}"],
        }


def _status(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    # "5" resets the peak resident set size (VmHWM) to the current one (Linux 4.0+).
    Path("/proc/self/clear_refs").write_text("5")


@contextmanager
def server(backend: str) -> Iterator[tuple[dict[str, Any], str]]:
    """A fresh throwaway server for ``backend``: the storage settings and what serves them."""
    if backend == "postgresql":
        from pymodels.testing.postgresql import TemporaryPostgres

        with TemporaryPostgres() as pg:
            yield {"backend": "postgresql", "url": pg.url, "table": "stream"}, "PostgreSQL"
    elif backend == "mongodb":
        from pymodels.testing.mongodb import TemporaryMongo

        with TemporaryMongo() as mongo:
            kind = "SecantusDB" if mongo.kind == "secantus" else "mongod"
            yield {"backend": "mongodb", "url": mongo.url, "collection": "stream"}, kind
    elif backend == "tokyo_tyrant":
        from pymodels.testing.tyrant import TemporaryTyrant

        with TemporaryTyrant() as tt:
            kind = "ttserver" if tt.real else "protocol server"
            yield dict(tt.settings), kind
    else:
        raise ValueError(f"no server for {backend!r}")


def measure(queries: Iterable[tuple[str, Callable[[], Iterable[Any]]]]) -> dict[str, Any]:
    """Records, rate and memory rise of iterating each query to the end."""
    out: dict[str, Any] = {}
    for name, query in queries:
        gc.collect()
        # The peak is reset first, then the figure it is compared with read. The
        # kernel's counters are approximate (cached per CPU, a few hundred KB), so
        # a rise within 0.3 MB either way is no rise.
        _reset_peak()
        before = _status("VmRSS")
        start = time.perf_counter()
        seen = sum(1 for _ in query())
        elapsed = time.perf_counter() - start
        out[name] = {
            "records": seen,
            "per_s": seen / elapsed,
            "rss_mb": before,
            "rise_mb": _status("VmHWM") - before,
        }
    return out


def worker(backend: str, n: int, given: dict[str, Any] | None = None) -> dict[str, Any]:
    import pymodels

    with tempfile.TemporaryDirectory(prefix=f"stream-{backend}-") as tmp:
        settings: dict[str, Any] = given or {"backend": backend}
        if given is None and backend != "memory":
            settings["path"] = str(Path(tmp) / f"stream.{backend}")
        with pymodels.get_storage(settings) as storage:
            storage.save_many(records(n))
            return measure(
                (
                    ("half", storage.query().where(age__gt=50).__iter__),
                    ("all", storage.query().__iter__),
                    ("by_age", storage.query().order_by("-age").__iter__),
                )
            )


def raw_worker(backend: str, n: int, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`worker`'s queries through the raw driver (``raw_stream.py``), same records."""
    from raw_stream import open_raw

    with tempfile.TemporaryDirectory(prefix=f"stream-raw-{backend}-") as tmp:
        store = open_raw(backend, given or {"path": str(Path(tmp) / f"raw.{backend}")})
        try:
            store.load((f"k{i:09}", record) for i, record in enumerate(records(n)))
            return measure(
                (
                    ("half", lambda: store.stream(50)),
                    ("all", store.stream),
                    ("by_age", store.by_age),
                )
            )
        finally:
            store.close()


class WorkerFailed(Exception):
    """A worker or its server that could not run: the message says why, in one line."""


def run_worker(name: str, n: int, raw: bool, notes: list[str]) -> dict[str, Any]:
    """One worker (pymodels, or the raw driver) in a fresh process, with a fresh server
    for a server backend (the raw driver's records must not meet pymodels' in Tyrant's
    one database)."""
    with ExitStack() as stack:
        command = [sys.executable, __file__, "--worker", name, "--n", str(n)]
        if raw:
            command.append("--raw")
        if name in SERVERS:
            try:
                settings, kind = stack.enter_context(server(name))
            except Exception as e:  # a server that cannot start here: say so, go on
                why = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise WorkerFailed(f"no server: {why}") from e
            if not raw:
                notes.append(f"{name}: {kind}")
            command += ["--settings", json.dumps(settings)]
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            check=False,
        )
    if proc.returncode != 0:
        raise WorkerFailed(f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1_000_000, help="records (default 1000000)")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated backends (default: the embedded ones; also {', '.join(SERVERS)})",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        given = json.loads(args.settings) if args.settings else None
        work = raw_worker if args.raw else worker
        print(json.dumps(work(args.worker, args.n, given)))
        return 0
    names = [x for x in args.only.split(",") if x] or list(BACKENDS)
    unknown = [x for x in names if x not in BACKENDS + SERVERS]
    if unknown:
        parser.error(f"unknown backends: {', '.join(unknown)}")
    load = [os.getloadavg()[0]]
    print(f"taken {provenance()}")
    print("Peak resident memory of the client process while iterating a query to the end,")
    print("above its resident memory before it (each backend in a fresh process; a server")
    print("runs in its own processes, not counted)")
    print(
        "| backend | query | records | records/s | raw records/s | RSS before | peak rise "
        "| raw peak rise |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    failed = False
    notes: list[str] = []
    for name in names:
        results: dict[bool, dict[str, Any]] = {}
        for raw in (False, True):
            try:
                results[raw] = run_worker(name, args.n, raw, notes)
            except WorkerFailed as e:
                failed = True
                print(f"| {name} | {'raw ' if raw else ''}{e} |")
                break
        if len(results) < 2:
            continue
        for query, label in QUERIES:
            r, w = results[False][query], results[True][query]
            if r["records"] != w["records"]:
                failed = True
                print(f"| {name} | `{label}` | {r['records']:,} records, raw {w['records']:,} |")
                continue
            print(
                f"| {name} | `{label}` | {r['records']:,} | {r['per_s']:,.0f} | "
                f"{w['per_s']:,.0f} | {r['rss_mb']:.0f} MB | {r['rise_mb']:.1f} MB | "
                f"{w['rise_mb']:.1f} MB |"
            )
        load.append(os.getloadavg()[0])
        sys.stdout.flush()
    print(
        "load average (1 min) before and after each backend: " + ", ".join(f"{x:.1f}" for x in load)
    )
    print(f"records saved per backend: {args.n:,}")
    if notes:
        print("servers: " + "; ".join(notes))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

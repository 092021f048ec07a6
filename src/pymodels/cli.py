"""The ``pymodels`` command line: look into and move data between any storages.

    pymodels info [URL]
    pymodels find [URL] --where age__gte=30 --order-by=-age --limit 10 --format table
    pymodels get [URL] PK
    pymodels put [URL] '{"name": "Ann"}' [--pk PK]
    pymodels delete [URL] PK
    pymodels export [URL] > dump.jsonl
    pymodels import [URL] < dump.jsonl
    pymodels copy SRC DST

Storages are named by URL; without one, the embedded default
``sqlite:///pymodels.db``. Records travel as tagged JSON (see
:mod:`pymodels.codec`), one object per line with the pk under ``"$pk"``.
Terminal output and progress bars use ``rich`` (``pip install 'pymodels[cli]'``)
when it is installed and plain text otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TextIO

from . import codec
from .errors import ConfigurationError, PyModelsError
from .registry import DEFAULT_URL, get_storage
from .storage import BaseStorage

__all__ = ["main"]


def _parse_value(text: str) -> Any:
    """A ``--where`` value: tagged JSON when it parses (``30``, ``true``, ``[1]``), else text."""
    try:
        return codec.loads(text)
    except PyModelsError:
        return text


def _where(items: Sequence[str]) -> dict[str, Any]:
    lookups: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PyModelsError(f"--where takes path__op=value, not {item!r}")
        lookups[key] = _parse_value(value)
    return lookups


def _record_line(pk: str, record: dict[str, Any]) -> str:
    return codec.dumps({"$pk": pk, **record})


def _open(url: str | None) -> BaseStorage:
    if url and "://" not in url and "=" in url:
        # `pymodels find age__gt=30`: a lookup where the URL goes.
        raise ConfigurationError(
            f"{url!r} is not a storage URL; a condition goes after --where "
            f"(pymodels find --where {url})"
        )
    return get_storage(url or DEFAULT_URL)


def _progress(items: Iterable[Any], total: int | None, label: str, err: TextIO) -> Iterator[Any]:
    """Iterate with a progress bar on a terminal when rich is installed."""
    try:
        from rich.progress import track
    except ImportError:
        yield from items
        return
    if not err.isatty():
        yield from items
        return
    yield from track(items, total=total, description=label, transient=True)


def _print_table(rows: list[tuple[str, dict[str, Any]]], out: TextIO) -> None:
    columns: list[str] = []
    for _, record in rows:
        columns.extend(k for k in record if k not in columns)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        out.write("\t".join(["pk", *columns]) + "\n")
        for pk, record in rows:
            cells = [json.dumps(codec.encode(record[c])) if c in record else "" for c in columns]
            out.write("\t".join([pk, *cells]) + "\n")
        return
    table = Table("pk", *columns)
    for pk, record in rows:
        table.add_row(pk, *(repr(record[c]) if c in record else "" for c in columns))
    Console(file=out).print(table)


def _cmd_info(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with _open(args.url) as storage:
        features = storage.features
        out.write(f"storage: {args.url or DEFAULT_URL}\n")
        out.write(f"backend: {storage.backend}\n")
        out.write(f"records: {len(storage)}\n")
        native = sorted(op for op, how in features.ops.items() if how == "native")
        out.write(f"native ops: {', '.join(native) or 'none'}\n")
        for flag in ("transactions", "indexes", "unique_indexes", "thread_safe", "persistent"):
            out.write(f"{flag}: {getattr(features, flag)}\n")
    return 0


def _cmd_find(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with _open(args.url) as storage:
        q = storage.query().where(**_where(args.where))
        if args.order_by:
            q = q.order_by(*args.order_by)
        if args.limit is not None:
            q = q[: args.limit]
        rows = [(doc.pk or "", dict(doc)) for doc in q]
    if args.format == "table":
        _print_table(rows, out)
    elif args.format == "json":
        out.write(json.dumps([codec.encode({"$pk": pk, **r}) for pk, r in rows], indent=2))
        out.write("\n")
    else:
        for pk, record in rows:
            out.write(_record_line(pk, record) + "\n")
    return 0


def _cmd_get(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with _open(args.url) as storage:
        doc = storage.get(None, args.pk)
        out.write(_record_line(args.pk, dict(doc)) + "\n")
    return 0


def _cmd_put(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    record = codec.loads(args.json)
    if not isinstance(record, dict):
        raise PyModelsError("put takes a JSON object")
    pk = args.pk or record.pop("$pk", None)
    with _open(args.url) as storage:
        out.write(storage.save(record, primary_key=pk) + "\n")
    return 0


def _cmd_delete(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with _open(args.url) as storage:
        for pk in args.pk:
            storage.delete(pk)
    return 0


def _cmd_export(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with _open(args.url) as storage:
        total = len(storage)
        for doc in _progress(storage.query(), total, "exporting", err):
            out.write(_record_line(doc.pk or "", dict(doc)) + "\n")
    return 0


def _read_lines(stream: TextIO) -> Iterator[tuple[str | None, dict[str, Any]]]:
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        record = codec.loads(line)
        if not isinstance(record, dict):
            raise PyModelsError(f"line {number}: expected a JSON object")
        yield record.pop("$pk", None), record


def _cmd_import(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    count = 0
    with _open(args.url) as storage:
        for pk, record in _progress(_read_lines(sys.stdin), None, "importing", err):
            storage.save(record, primary_key=pk)
            count += 1
    err.write(f"imported {count} records\n")
    return 0


def _cmd_copy(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    with get_storage(args.src) as src, get_storage(args.dst) as dst:
        total = len(src)
        batch: list[tuple[str, dict[str, Any]]] = []

        def flush() -> None:
            with dst.transaction() if dst.features.transactions else contextlib.nullcontext():
                for pk, record in batch:
                    dst.save(record, primary_key=pk)
            batch.clear()

        for doc in _progress(src.query(), total, "copying", err):
            batch.append((doc.pk or "", dict(doc)))
            if len(batch) >= 1000:
                flush()
        flush()
    err.write(f"copied {total} records\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pymodels", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_url(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("url", nargs="?", help=f"storage URL (default {DEFAULT_URL})")
        return p

    with_url("info", "backend, record count and capabilities").set_defaults(fn=_cmd_info)
    find = with_url("find", "query records")
    find.add_argument("--where", action="append", default=[], metavar="PATH__OP=VALUE")
    find.add_argument("--order-by", action="append", default=[], metavar="[-]PATH")
    find.add_argument("--limit", type=int)
    find.add_argument("--format", choices=("table", "json", "jsonl"), default="table")
    find.set_defaults(fn=_cmd_find)
    get = with_url("get", "print one record")
    get.add_argument("pk")
    get.set_defaults(fn=_cmd_get)
    put = with_url("put", "save one record given as tagged JSON")
    put.add_argument("json")
    put.add_argument("--pk")
    put.set_defaults(fn=_cmd_put)
    delete = with_url("delete", "delete records by pk")
    delete.add_argument("pk", nargs="+")
    delete.set_defaults(fn=_cmd_delete)
    with_url("export", "write every record as JSON lines to stdout").set_defaults(fn=_cmd_export)
    with_url("import", "save JSON lines from stdin").set_defaults(fn=_cmd_import)
    copy = sub.add_parser("copy", help="copy every record from one storage to another")
    copy.add_argument("src")
    copy.add_argument("dst")
    copy.set_defaults(fn=_cmd_copy)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    stdout = out or sys.stdout
    try:
        status: int = args.fn(args, stdout, sys.stderr)
    except PyModelsError as e:
        sys.stderr.write(f"pymodels: {type(e).__name__}: {e}\n")
        return 1
    return status

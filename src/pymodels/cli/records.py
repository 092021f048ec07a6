"""Records in and out of files: JSON Lines, JSON arrays and CSV, always tagged JSON.

Reading never stops at a bad record: each record comes out as an
:class:`Entry` holding either the record or what is wrong with it and where
(``FILE:LINE``), so import can report every bad record at once. Only a JSON
array whose syntax breaks cannot be read past that point.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal, TextIO, cast

import msgspec

from .. import codec
from ..errors import PyModelsError
from ..storage import BaseStorage
from ..values import check_field_name, check_pk, validate_record
from .where import parse_value

__all__ = [
    "Entry",
    "Writer",
    "content_digest",
    "fetch",
    "guess_format",
    "read_entries",
    "scan",
]

InputFormat = Literal["jsonl", "json", "csv"]
OutputFormat = Literal["jsonl", "json"]

#: Characters of CSV cells are not limited by the csv module's default (128 KiB).
csv.field_size_limit(2**31 - 1)


@dataclass(frozen=True, slots=True)
class Entry:
    """One record of an input file, or what is wrong with it."""

    where: str  # FILE:LINE
    pk: str | None = None
    record: dict[str, Any] | None = None
    error: str | None = None


class InputError(PyModelsError):
    """An input file that cannot be read at all (missing, unknown format)."""


def guess_format(name: str, path: Path, given: str | None) -> InputFormat:
    """The input format: ``given``, else the file's extension, else its first character."""
    if given is not None:
        return given  # type: ignore[return-value]
    suffix = Path(name).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    with path.open("r", encoding="utf-8-sig", errors="replace") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        return "json"
    if head.startswith("{") or not head:
        return "jsonl"
    raise InputError(
        f"{name}: cannot tell its format (not a JSON array or JSON Lines); "
        "name it .csv or give --format csv"
    )


def read_entries(name: str, path: Path, fmt: InputFormat) -> Iterator[Entry]:
    """Every record of one input file, in order, each checked as a stored record."""
    if fmt == "csv":
        yield from _read_csv(name, path)
    elif fmt == "json":
        yield from _read_json_array(name, path)
    else:
        yield from _read_jsonl(name, path)


def _checked(where: str, raw: Any) -> Entry:
    """An entry for one decoded JSON value: the record, or what is wrong with it."""
    if type(raw) is not dict:
        return Entry(where, error=f"expected a JSON object, not {_kind(raw)}")
    pk = raw.pop("$pk", None)
    try:
        if pk is not None:
            check_pk(pk)
        value = codec.decode(raw)
        if type(value) is not dict:
            return Entry(where, error=f"expected a record, not a tagged {_kind(value)}")
        return Entry(where, pk, validate_record(value))
    except PyModelsError as e:
        return Entry(where, error=str(e))


def _kind(value: Any) -> str:
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    if value is None:
        return "null"
    return names.get(type(value), f"a {type(value).__name__}")


def _read_jsonl(name: str, path: Path) -> Iterator[Entry]:
    with path.open("r", encoding="utf-8-sig") as f:
        try:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{name}:{number}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as e:
                    yield Entry(where, error=f"invalid JSON: {e.msg} (column {e.colno})")
                    continue
                yield _checked(where, raw)
        except UnicodeDecodeError as e:
            yield Entry(f"{name}", error=f"not UTF-8 text: {e}")


def _read_json_array(name: str, path: Path) -> Iterator[Entry]:
    # A JSON array is one value: it is read whole (JSON Lines and CSV stream).
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        yield Entry(name, error=f"not UTF-8 text: {e}")
        return
    decoder = json.JSONDecoder()
    line, counted = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip(0)
    if not text.startswith("[", pos):
        yield Entry(f"{name}:{line_at(pos)}", error="expected a JSON array ([...])")
        return
    pos = skip(pos + 1)
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            where = f"{name}:{line_at(pos)}"
            try:
                raw, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                yield Entry(
                    f"{name}:{e.lineno}",
                    error=f"invalid JSON: {e.msg} (column {e.colno}); "
                    "the rest of the array cannot be read",
                )
                return
            yield _checked(where, raw)
            pos = skip(pos)
            if text.startswith(",", pos):
                pos = skip(pos + 1)
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                yield Entry(
                    f"{name}:{line_at(pos)}",
                    error="expected ',' or ']' after an element; "
                    "the rest of the array cannot be read",
                )
                return
    if skip(pos) != len(text):
        yield Entry(f"{name}:{line_at(skip(pos))}", error="text after the end of the array")


def _read_csv(name: str, path: Path) -> Iterator[Entry]:
    with path.open("r", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                return
            columns = _csv_columns(name, header)
            if isinstance(columns, Entry):
                yield columns
                return
            last = reader.line_num
            for row in reader:
                where = f"{name}:{last + 1}"
                last = reader.line_num
                if not any(row):
                    continue
                yield _csv_record(where, columns, row)
        except csv.Error as e:
            yield Entry(f"{name}:{reader.line_num}", error=f"bad CSV: {e}")
        except UnicodeDecodeError as e:
            yield Entry(name, error=f"not UTF-8 text: {e}")


def _csv_columns(name: str, header: list[str]) -> list[tuple[str, ...]] | Entry:
    """The header's fields as paths (``address__city`` is a nested field)."""
    columns: list[tuple[str, ...]] = []
    for title in header:
        title = title.strip()
        try:
            if title == "$pk":
                path: tuple[str, ...] = ("$pk",)
            else:
                path = tuple(title.split("__"))
                for i, part in enumerate(path):
                    check_field_name(part, ".".join(path[:i]))
        except PyModelsError as e:
            return Entry(f"{name}:1", error=f"header {title!r}: {e}")
        if path in columns:
            return Entry(f"{name}:1", error=f"header names {title!r} twice")
        columns.append(path)
    return columns


def _csv_record(where: str, columns: list[tuple[str, ...]], row: list[str]) -> Entry:
    if len(row) != len(columns):
        return Entry(where, error=f"{len(row)} values for {len(columns)} columns")
    pk: str | None = None
    record: dict[str, Any] = {}
    try:
        for path, cell in zip(columns, row, strict=True):
            if cell == "":
                continue  # an empty cell is an absent field
            if path == ("$pk",):
                pk = check_pk(cell)  # a pk is text as written: never a number or date
                continue
            try:
                value = parse_value(cell)
            except PyModelsError as e:
                raise PyModelsError(f"{'__'.join(path)}: {e}") from e
            target = record
            for part in path[:-1]:
                nested = target.setdefault(part, {})
                if type(nested) is not dict:
                    raise PyModelsError(f"{'__'.join(path)}: {part} is not an object")
                target = nested
            target[path[-1]] = value
        return Entry(where, pk, validate_record(record))
    except PyModelsError as e:
        return Entry(where, error=str(e))


# ------------------------------------------------------------------ writing


class Writer:
    """Writes records as JSON Lines or one JSON array to a stream."""

    def __init__(self, out: TextIO, fmt: str) -> None:
        self.out = out
        self.fmt = fmt
        self.count = 0

    def write(self, pk: str, record: dict[str, Any]) -> None:
        line = codec.dumps({"$pk": pk, **record})
        if self.fmt == "json":
            self.out.write(("[\n  " if self.count == 0 else ",\n  ") + line)
        else:
            self.out.write(line + "\n")
        self.count += 1

    def close(self) -> None:
        if self.fmt == "json":
            self.out.write("[]\n" if self.count == 0 else "\n]\n")
        self.out.flush()


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[TextIO]:
    """A text file written beside ``path`` and renamed over it only when complete."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def spool(stream: IO[bytes], directory: str | None = None) -> Path:
    """Standard input copied to a temporary file (import reads its input twice)."""
    fd, tmp = tempfile.mkstemp(prefix="pymodels-stdin-", dir=directory)
    with os.fdopen(fd, "wb") as f:
        while chunk := stream.read(1 << 20):
            f.write(chunk)
    return Path(tmp)


# ------------------------------------------------------------------ storages


def scan(storage: BaseStorage) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``(pk, record)`` of a storage, in pk order, with memory held flat.

    A plain query in pk order: every backend streams it (SQLite and PostgreSQL
    from a cursor, shelve and Tokyo Cabinet through an external sort of their
    keys, Tyrant and MongoDB a page at a time), where listing the pks first held
    all of them (50 to 80 bytes a record). The pk order also lets a copy into
    SQLite keep row order (docs/sqlite.md) and makes exports alike run to run.
    """
    for doc in storage.query():
        # A document read from a storage always has its pk (None is for unsaved ones).
        yield cast(str, doc.pk), dict(doc)


def fetch(storage: BaseStorage, pks: list[str]) -> Iterable[tuple[str, dict[str, Any]]]:
    for pk, doc in zip(pks, storage.get_many(None, pks), strict=True):
        if doc is not None:  # deleted since its pk was listed
            yield pk, dict(doc)


def content_digest(pk: str, record: dict[str, Any]) -> int:
    """One record's share of an order-independent hash of a storage's content.

    The shares of all records are summed modulo 2**256: the sum does not depend
    on the order records are read in, and dict key order does not count.
    """
    return int.from_bytes(hashlib.sha256(_canonical([pk, codec.encode(record)])).digest(), "big")


# Compact JSON with sorted keys, in UTF-8: the canonical text of a tagged record, written
# by msgspec (2.9 us a workload record with the hash, against 6.5 us through json.dumps).
# Both sides of a copy hash with it, so only its being deterministic matters.
_canonical: Final = msgspec.json.Encoder(order="sorted").encode


DIGEST_MODULUS = 1 << 256

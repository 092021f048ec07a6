"""The commands: each takes the parsed arguments and the two output streams, returns a status.

Every failure leaves as :class:`Failure`: one line naming the storage (its
URL, password hidden) and the exit code it deserves.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import decimal
import os
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from .. import codec
from ..errors import (
    BackendUnavailable,
    ConfigurationError,
    DoesNotExist,
    InvalidQuery,
    NotSupported,
    PyModelsError,
    StorageNotFound,
)
from ..registry import DEFAULT_URL, get_storage
from ..storage import BaseStorage
from .records import (
    DIGEST_MODULUS,
    Entry,
    InputError,
    Writer,
    atomic_file,
    content_digest,
    fetch,
    guess_format,
    read_entries,
    scan,
    spool,
)
from .terminal import print_table, progress
from .where import where_conditions

__all__ = [
    "Failure",
    "copy",
    "delete",
    "exit_code",
    "export",
    "find",
    "get",
    "import_",
    "info",
    "put",
]


class Failure(Exception):
    """A command failed: ``str()`` is the one-line message, ``code`` the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


#: Exit statuses (docs/cli.md): not found, usage or configuration, backend or data.
NOT_FOUND, USAGE, DATA = 1, 2, 3


def exit_code(error: PyModelsError) -> int:
    """The exit status an error of the library deserves."""
    if isinstance(error, DoesNotExist):
        return NOT_FOUND
    if isinstance(error, ConfigurationError | InvalidQuery | BackendUnavailable):
        return USAGE
    return DATA


def shown(url: str) -> str:
    """The URL as messages show it: a password is replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@contextlib.contextmanager
def about(url: str) -> Iterator[None]:
    """Errors inside name the storage ``url``."""
    try:
        yield
    except Failure:
        raise
    except PyModelsError as e:
        raise Failure(f"{shown(url)}: {e}", exit_code(e)) from e


def _url(given: str | None) -> str:
    url = given or DEFAULT_URL
    if "://" not in url:
        hint = ""
        if "=" in url:
            # `pymodels find age__gt=30`: a lookup where the URL goes.
            hint = f"; a condition goes after --where (pymodels find --where {url})"
        raise Failure(f"{url!r} is not a storage URL (scheme://...){hint}", USAGE)
    return url


def open_storage(url: str, *, read_only: bool) -> BaseStorage:
    """The storage at ``url``; read-only never creates one (a missing one is an error)."""
    with about(url):
        if not read_only:
            return get_storage(url)
        try:
            return get_storage(url, read_only=True)
        except StorageNotFound as e:
            raise Failure(
                f"{shown(url)}: {e.path} does not exist (reading commands never create one)",
                USAGE,
            ) from e


def _split_url(args: Sequence[str]) -> tuple[str, list[str]]:
    """``[URL] REST...``: the first argument is the URL when it looks like one."""
    if args and "://" in args[0]:
        return args[0], list(args[1:])
    return DEFAULT_URL, list(args)


# ------------------------------------------------------------------ info


def _kind(value: Any) -> str:
    t = type(value)
    if t is datetime.datetime:
        return "datetime" if value.tzinfo is None else "datetime (UTC)"
    names = {decimal.Decimal: "decimal"}
    return names.get(t, t.__name__)


def _walk(record: dict[str, Any], prefix: str, seen: dict[str, dict[str, int]]) -> None:
    for name, value in record.items():
        path = prefix + name
        kinds = seen.setdefault(path, {})
        kind = _kind(value)
        kinds[kind] = kinds.get(kind, 0) + 1
        if type(value) is dict:
            _walk(value, path + "__", seen)


def _file_size(storage: BaseStorage) -> str | None:
    path = getattr(storage.settings, "path", None)
    if not isinstance(path, str) or not os.path.exists(path):
        return None
    # The file and the companions engines keep beside it (journals, dbm halves).
    names = [path] + [path + s for s in ("-wal", "-shm", "-journal", ".db", ".dat", ".dir", ".bak")]
    total = sum(os.path.getsize(n) for n in names if os.path.isfile(n))
    return f"{_bytes(total)} ({path}{' and companions' if total != os.path.getsize(path) else ''})"


def _bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _indexes(storage: BaseStorage) -> list[str]:
    if not storage.features.indexes:
        return ["none (the engine has no indexes; queries scan)"]
    if type(storage)._indexes is BaseStorage._indexes:
        return ["not listed by this backend"]
    listed = storage.indexes()
    return [_index_text(spec) for spec in listed] or ["none"]


def _index_text(spec: Any) -> str:
    keys = ", ".join(("-" if k.descending else "") + "__".join(k.path) for k in spec.keys)
    extra = [w for w in ("unique" if spec.unique else "", spec.kind or "") if w]
    return keys + (f" ({', '.join(extra)})" if extra else "")


def info(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    url = _url(args.url)
    if args.sample < 1:
        raise Failure("--sample must be at least 1", USAGE)
    with open_storage(url, read_only=True) as storage, about(url):
        count = len(storage)
        features = storage.features
        rows = [
            ["storage", shown(url)],
            ["backend", storage.backend],
            ["records", f"{count:,}"],
        ]
        size = _file_size(storage)
        if size is not None:
            rows.append(["file size", size])
        rows.append(["indexes", "; ".join(_indexes(storage))])
        flags = ("transactions", "indexes", "unique_indexes", "thread_safe", "concurrent_processes")
        rows.append(["capabilities", ", ".join(f for f in flags if getattr(features, f)) or "-"])
        print_table(out, ["", ""], rows, header=False)
        if count > args.sample:
            # A uniform sample of pks (reservoir sampling: one pass, no list of every pk).
            rng = random.Random()
            picked: list[str] = []
            for i, pk in enumerate(storage):
                if i < args.sample:
                    picked.append(pk)
                else:
                    j = rng.randrange(i + 1)
                    if j < args.sample:
                        picked[j] = pk
            records = [record for _, record in fetch(storage, picked)]
            title = f"fields in a random sample of {len(records):,} of {count:,} records"
        else:
            records = [record for _, record in scan(storage)]
            title = f"fields in all {len(records):,} records"
    seen: dict[str, dict[str, int]] = {}
    for record in records:
        _walk(record, "", seen)
    total = max(len(records), 1)
    table = []
    for path in sorted(seen, key=lambda p: (-sum(seen[p].values()), p)):
        kinds = seen[path]
        present = sum(kinds.values())
        table.append(
            [
                path,
                ", ".join(f"{k} {n:,}" if len(kinds) > 1 else k for k, n in sorted(kinds.items())),
                f"{present:,}",
                f"{100 * present / total:.0f}%",
            ]
        )
    print_table(out, ["field", "kinds", "records", "share"], table, title=title)
    return 0


# ------------------------------------------------------------------ find / get / put / delete


def find(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    url = _url(args.url)
    fmt = args.format or ("table" if out.isatty() else "jsonl")
    with about(url):
        conditions = where_conditions(args.where, args.where_not)
    with open_storage(url, read_only=True) as storage, about(url):
        q = storage.query().where(*conditions)
        if args.order_by:
            q = q.order_by(*args.order_by)
        if args.limit is not None:
            q = q[: args.limit]
        if fmt == "table":
            rows = [(doc.pk or "", dict(doc)) for doc in q]
            columns: dict[str, None] = {}
            for _, record in rows:
                columns.update(dict.fromkeys(record))
            print_table(
                out,
                ["pk", *columns],
                [[pk, *(codec.dumps(r[c]) if c in r else "" for c in columns)] for pk, r in rows],
            )
        else:
            writer = Writer(out, fmt)
            for doc in q:
                writer.write(doc.pk or "", dict(doc))
            writer.close()
    return 0


def get(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    url = _url(args.url)
    with open_storage(url, read_only=True) as storage, about(url):
        found = storage.get_many(None, [args.pk])[0]
        if found is None:
            raise DoesNotExist(f"no record with pk {args.pk!r}")
        Writer(out, "jsonl").write(args.pk, dict(found))
    return 0


def put(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    url = _url(args.url)
    text = sys.stdin.read() if args.json == "-" else args.json
    with about(url):
        record = codec.loads(text)
        if type(record) is not dict:
            raise InvalidQuery("put takes a JSON object")
        pk = record.pop("$pk", None)
        if args.pk is not None:
            pk = args.pk
    with open_storage(url, read_only=False) as storage, about(url):
        out.write(storage.save(record, primary_key=pk) + "\n")
    return 0


def delete(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    url, pks = _split_url(args.args)
    if not pks:
        raise Failure("delete needs at least one pk", USAGE)
    missing = 0
    with open_storage(url, read_only=False) as storage, about(url):
        for pk in pks:
            try:
                storage.delete(pk)
            except DoesNotExist as e:
                err.write(f"pymodels: {shown(url)}: {e}\n")
                missing += 1
    return NOT_FOUND if missing else 0


# ------------------------------------------------------------------ export


def export(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    url, files = _split_url(args.args)
    if len(files) > 1:
        raise Failure(f"export writes one file, not {len(files)} ({' '.join(files)})", USAGE)
    target = files[0] if files and files[0] != "-" else None
    fmt = args.format or ("json" if target and target.lower().endswith(".json") else "jsonl")
    with open_storage(url, read_only=True) as storage, about(url):
        total = len(storage)
        with contextlib.ExitStack() as stack:
            stream = out if target is None else stack.enter_context(atomic_file(Path(target)))
            writer = Writer(stream, fmt)
            with progress(err, "exporting", total, True) as advance:
                for pk, record in scan(storage):
                    writer.write(pk, record)
                    advance(1)
            writer.close()
    where = "standard output" if target is None else target
    err.write(f"exported {writer.count:,} records from {shown(url)} to {where}\n")
    return 0


# ------------------------------------------------------------------ import and copy


class _Batches:
    """Writes records in batches, each all or nothing, counting what was written.

    ``keep_going``: a batch that fails is redone record by record and the
    failing records are returned; otherwise the failure ends the command.
    """

    def __init__(self, storage: BaseStorage, url: str, size: int, keep_going: bool) -> None:
        self.storage = storage
        self.url = url
        self.size = size
        self.keep_going = keep_going
        self.written = 0
        self.pending: list[tuple[str | None, dict[str, Any], str]] = []

    def add(self, pk: str | None, record: dict[str, Any], where: str) -> list[tuple[str, str]]:
        """Queue one record; return the failures of a batch written now."""
        self.pending.append((pk, record, where))
        return self.flush() if len(self.pending) >= self.size else []

    def flush(self) -> list[tuple[str, str]]:
        """Write what is queued; return the records that failed, with why."""
        batch, self.pending = self.pending, []
        if not batch:
            return []
        try:
            self._write(batch)
            self.written += len(batch)
            return []
        except PyModelsError as e:
            if not self.keep_going:
                span = f"{batch[0][2]} to {batch[-1][2]}" if len(batch) > 1 else batch[0][2]
                raise Failure(
                    f"{shown(self.url)}: the batch of {span} was not written: {e}", exit_code(e)
                ) from e
            first_error = e
        failures: list[tuple[str, str]] = []
        for item in batch:
            try:
                self._write([item])
                self.written += 1
            except PyModelsError as e:
                failures.append((item[2], f"not written: {e}"))
        if not failures:  # the batch failed as a whole (a lock, a lost connection)
            failures.append((batch[0][2], f"batch not written: {first_error}"))
        return failures

    def _write(self, batch: list[tuple[str | None, dict[str, Any], str]]) -> None:
        storage = self.storage
        if storage.features.transactions:
            with storage.transaction():
                for pk, record, _ in batch:
                    storage.save(record, primary_key=pk)
            return
        # No transactions: undo by hand what the batch wrote before a failure,
        # so a failed batch leaves no record of it behind.
        given = [pk for pk, _, _ in batch if pk is not None]
        before = dict(zip(given, storage.get_many(None, given), strict=True))
        done: list[str] = []
        try:
            for pk, record, _ in batch:
                done.append(storage.save(record, primary_key=pk))
        except BaseException:
            for pk in reversed(done):
                old = before.get(pk)
                with contextlib.suppress(PyModelsError):
                    if old is None:
                        storage.delete(pk)
                    else:
                        storage.save(dict(old), primary_key=pk)
            raise


def _inputs(
    files: list[str], fmt: str | None, tmp: contextlib.ExitStack
) -> list[tuple[str, Path, Any]]:
    """``(name, path, format)`` of each input; standard input is spooled to a file."""
    inputs = []
    for name in files or ["-"]:
        if name == "-":
            path = spool(sys.stdin.buffer)
            tmp.callback(path.unlink)
            name = "<stdin>"
        else:
            path = Path(name)
            if not path.is_file():
                raise Failure(f"{name}: no such file", USAGE)
        try:
            inputs.append((name, path, guess_format(name, path, fmt)))
        except InputError as e:
            raise Failure(str(e), USAGE) from e
    return inputs


#: Bad records reported one by one; past this many only counted.
MAX_REPORTED = 50


def import_(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    url, files = _split_url(args.args)
    url = _url(url)
    if args.batch_size < 1:
        raise Failure("--batch-size must be at least 1", USAGE)
    refused = 0

    def report(where: str, message: str) -> None:
        nonlocal refused
        refused += 1
        if refused <= MAX_REPORTED:
            err.write(f"{where}: {message}\n")

    def entries() -> Iterator[Entry]:
        for name, path, fmt in inputs:
            yield from read_entries(name, path, fmt)

    with contextlib.ExitStack() as stack:
        inputs = _inputs(files, args.format, stack)
        good = 0
        if not args.continue_on_error:
            with progress(err, "checking", None, True) as advance:
                for entry in entries():
                    if entry.error is not None:
                        report(entry.where, entry.error)
                    else:
                        good += 1
                    advance(1)
            if refused:
                more = (
                    f" ({refused - MAX_REPORTED} more not shown)" if refused > MAX_REPORTED else ""
                )
                err.write(
                    f"imported 0 records into {shown(url)}; {refused:,} refused{more}: "
                    "nothing written (fix them, or --continue-on-error writes the rest)\n"
                )
                return DATA
        storage = stack.enter_context(open_storage(url, read_only=False))
        batches = _Batches(storage, url, args.batch_size, args.continue_on_error)
        try:
            with progress(err, "importing", good or None, True) as advance:
                for entry in entries():
                    if entry.error is not None or entry.record is None:
                        report(entry.where, entry.error or "no record")
                        continue
                    before = batches.written
                    for where, message in batches.add(entry.pk, entry.record, entry.where):
                        report(where, message)
                    advance(batches.written - before)
                for where, message in batches.flush():
                    report(where, message)
        except (Failure, KeyboardInterrupt):
            err.write(
                f"imported {batches.written:,} records into {shown(url)} before stopping "
                "(whole batches: the failing one wrote nothing)\n"
            )
            raise
    more = f" ({refused - MAX_REPORTED} more not shown)" if refused > MAX_REPORTED else ""
    err.write(
        f"imported {batches.written:,} records into {shown(url)}; {refused:,} refused{more}\n"
    )
    return DATA if refused else 0


def copy(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    src_url, dst_url = _url(args.src), _url(args.dst)
    if args.batch_size < 1:
        raise Failure("--batch-size must be at least 1", USAGE)
    if src_url == dst_url:
        raise Failure(f"{shown(src_url)}: source and destination are the same storage", USAGE)
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(open_storage(src_url, read_only=True))
        dst = stack.enter_context(open_storage(dst_url, read_only=False))
        with about(src_url):
            total = len(src)
        batches = _Batches(dst, dst_url, args.batch_size, keep_going=False)
        digest = copied = 0
        with progress(err, "copying", total, True) as advance:
            reading = scan(src)
            while True:
                with about(src_url):
                    item = next(reading, None)
                if item is None:
                    break
                pk, record = item
                digest = (digest + content_digest(pk, record)) % DIGEST_MODULUS
                copied += 1
                before = batches.written
                batches.add(pk, record, f"pk {pk}")
                advance(batches.written - before)
            batches.flush()
        notes = _copy_indexes(src, dst, src_url, dst_url)
        for note in notes:
            err.write(f"pymodels: {note}\n")
        line = f"copied {copied:,} records from {shown(src_url)} to {shown(dst_url)}"
        if args.no_verify:
            err.write(line + " (not verified)\n")
            return 0
        with about(dst_url), progress(err, "verifying", copied, True) as advance:
            dst_count = 0
            dst_digest = 0
            for pk, record in scan(dst):
                dst_digest = (dst_digest + content_digest(pk, record)) % DIGEST_MODULUS
                dst_count += 1
                advance(1)
    if dst_count != copied or dst_digest != digest:
        raise Failure(
            f"{line}, but they differ: {shown(src_url)} has {copied:,} records "
            f"(content hash {digest:064x}), {shown(dst_url)} has {dst_count:,} "
            f"(content hash {dst_digest:064x})"
            + ("; the destination held other records before" if dst_count > copied else ""),
            DATA,
        )
    short = f"{digest:064x}"[:16]
    err.write(f"{line}; verified: {dst_count:,} records and content hash {short} on both sides\n")
    return 0


def _copy_indexes(src: BaseStorage, dst: BaseStorage, src_url: str, dst_url: str) -> list[str]:
    """Create the source's indexes on the destination; return notes on those it lacks."""
    if not src.features.indexes:
        return []
    with about(src_url):
        specs = src.indexes()
    notes = []
    for spec in specs:
        keys = tuple(("-" if k.descending else "") + "__".join(k.path) for k in spec.keys)
        try:
            with about(dst_url):
                dst.create_index(
                    keys if len(keys) > 1 else keys[0],
                    unique=spec.unique,
                    kind=spec.kind if spec.kind in dst.features.index_kinds else None,
                )
        except Failure as e:
            if isinstance(e.__cause__, NotSupported):
                notes.append(f"index {_index_text(spec)} not created: {e}")
            else:
                raise
    return notes

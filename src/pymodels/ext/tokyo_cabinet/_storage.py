"""The Tokyo Cabinet storage: settings, capabilities and the backend hooks."""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import decimal
import functools
import itertools
import logging
import os
import resource
import shutil
import tempfile
import threading
import time
import typing
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Final, Literal
from urllib.parse import parse_qsl, unquote_to_bytes, urlsplit

import pydantic

from ...backend import (
    BATCH_SIZE,
    BaseQuery,
    BaseSettings,
    ConfigurationError,
    CorruptData,
    Features,
    IntegrityError,
    Item,
    LockTimeout,
    NotSupported,
    PyModelsError,
    StorageNotFound,
    open_failure,
    pks_in_order,
    sort_items,
    spill,
    url_path,
)
from .._tokyo._columns import (
    TYPES_COLUMN,
    decode_dump,
    dump_types,
    encode_dump,
    name_bytes,
    token,
)
from .._tokyo._compiler import (
    NUM_LIMIT,
    Block,
    Fact,
    OrderPlan,
    Plan,
    TCCond,
    gates_hold,
)
from .._tokyo._engine import (
    INDEX_SUFFIXES,
    MAX_LIMIT,
    OP_SUPPORT,
    TokyoStorage,
    decode_pk,
    scan_index_files,
    sliced,
)
from .._tokyo._query import Query
from . import _binding
from ._binding import (
    FLAG_FATAL,
    FLAG_OPEN,
    FLAGS_OFFSET,
    Cond,
    ErrorCode,
    IndexType,
    OpenMode,
    Order,
    SetOp,
    TableDB,
    TCError,
    TuneOpt,
    metasearch,
    search_blocks,
)

__all__ = ["Settings", "Storage", "features"]

# The shared compiler decides the ops as on every Tokyo backend (see OP_SUPPORT).
features = Features(
    ops=dict(OP_SUPPORT),
    transactions=True,
    indexes=True,
    unique_indexes=False,
    compound_indexes=False,
    index_kinds=frozenset({"lexical", "decimal", "token", "qgram"}),
    partial_update=False,
    thread_safe=True,
    fork_safe=False,
    concurrent_processes=False,
    # Every write runs in a Tokyo transaction (its write-ahead log is played back on the
    # next open), and reopening after a kill rebuilds the indexes: see docs/tokyo_cabinet.md,
    # tests/test_tokyo_cabinet_reliability.py. Writes that would fill the disk are refused
    # before Tokyo's memory map meets it.
    crash_safe=True,
    disk_full_safe=True,
    persistent=True,
)

#: Written into the file header's user area (``tctdbopaque``): outside every record.
MAGIC: Final = b"pymodels-tct "
FORMAT_VERSION: Final = 1
_OPAQUE_SIZE: Final = 64
#: Where the user area starts in the file, and the byte of it that is 1 while a
#: pymodels writer has the file open (0 once it closed it cleanly).
_OPAQUE_OFFSET: Final = 192
_OPEN_MARK: Final = _OPAQUE_SIZE - 1
_HEADER_SIZE: Final = _binding.HEADER_SIZE
_TC_MAGIC: Final = b"ToKyO CaBiNeT"
#: Where Tokyo's header keeps the record count (8 bytes, little-endian).
_RNUM_OFFSET: Final = 48

_log = logging.getLogger("pymodels.ext.tokyo_cabinet")

#: Error codes meaning the file's bytes are not what Tokyo wrote (damage, truncation,
#: another format): reads that meet them raise CorruptData. Once met they stick to the
#: handle (Tokyo's "fatal" state), so every later read raises too.
_DAMAGE: Final = frozenset(
    {ErrorCode.META, ErrorCode.RHEAD, ErrorCode.READ, ErrorCode.SEEK, ErrorCode.MMAP}
)
#: Error codes of a write that failed without harm (nothing was written).
_HARMLESS: Final = frozenset(
    {ErrorCode.KEEP, ErrorCode.NOREC, ErrorCode.INVALID, ErrorCode.LOCK, ErrorCode.THREAD}
)
#: The free-space check runs again after at most this many bytes written.
_RECHECK_BYTES: Final = 1 << 20
#: Room kept below a file size limit (RLIMIT_FSIZE): Tokyo grows files 32 KiB ahead.
_RLIMIT_MARGIN: Final = 256 * 1024

_INDEX_TYPES: Final = {
    "lexical": IndexType.LEXICAL,
    "decimal": IndexType.DECIMAL,
    "token": IndexType.TOKEN,
    "qgram": IndexType.QGRAM,
}
_COMPRESSION: Final = {"deflate": TuneOpt.DEFLATE, "bzip": TuneOpt.BZIP, "tcbs": TuneOpt.TCBS}
#: Below this many records clear() deletes record by record (atomic, keeps the file);
#: above it the file is truncated with tctdbvanish.
_VANISH_ABOVE: Final = 10_000


class Settings(BaseSettings):
    """Settings of the Tokyo Cabinet backend."""

    #: The table database file (``.tct``); index files appear beside it.
    path: str
    #: The database type. Only ``"TABLE"`` is supported: hash and B+ tree files hold
    #: opaque values, not columns a query can test.
    kind: str = "TABLE"
    #: Seconds to wait for another process's lock on the file: 0 fails at once (the
    #: default), None waits as long as it takes.
    lock_timeout: float | None = 0.0
    #: Tuning applied when this storage creates the file (``tctdbtune``): bucket count
    #: (0: Tokyo's default, 131071; about the expected number of records is good),
    #: record alignment and free-block pool as powers of two (-1: default).
    bnum: int = 0
    apow: int = -1
    fpow: int = -1
    #: A 64-bit bucket array, for files over 2 GB.
    large: bool = False
    #: Compress records on disk: "deflate", "bzip" or "tcbs".
    compression: Literal["deflate", "bzip", "tcbs"] | None = None
    #: Caches (``tctdbsetcache``): records, index leaves, index nodes (0: defaults).
    rcnum: int = 0
    lcnum: int = 0
    ncnum: int = 0
    #: Size of the memory-mapped region in bytes (None: Tokyo's default, 64 MB).
    xmsiz: int | None = None
    #: Synchronise every transaction to the device (slower, survives power loss).
    sync: bool = False
    #: Bytes of free space a write must leave on the file's file system (and below the
    #: process's file size limit): a write that would go below raises PyModelsError
    #: and writes nothing. Tokyo writes through a memory map, where a full disk kills
    #: the process (SIGBUS) instead of failing the write. None: no check.
    min_free_space: int | None = 8 * 2**20

    @pydantic.field_validator("lock_timeout")
    @classmethod
    def _non_negative(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise ValueError("must be 0 or more, or None to wait forever")
        return value

    @pydantic.field_validator("min_free_space")
    @classmethod
    def _bytes(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("must be 0 or more bytes, or None for no check")
        return value


class _File:
    """Per-file state shared by every storage on it in this process."""

    def __init__(self) -> None:
        # Tokyo's transactions belong to the handle, and the handle is shared by every
        # storage on the file: one lock serialises transactions with every other use.
        self.lock = threading.RLock()
        self.indexes: dict[bytes, str] = {}
        self.reset()

    def reset(self) -> None:
        """The state of a file just opened (the object outlives closes and reopens)."""
        #: Why writes are refused until the file is reopened (None: they are not).
        self.failed: str | None = None
        #: Indexed columns whose index may be behind its records: queries use no index
        #: while any is listed, and create_index rebuilds them.
        self.stale: set[bytes] = set()
        self.space: _Space | None = None
        #: Facts about the columns proved by a scan since this open (see Storage._proved),
        #: each kept up to date by every write after it: a fact a write breaks stays false.
        #: Sound because no other process writes the file while this one has it open.
        self.facts: dict[Fact, bool] = {}

    def observe(self, record: Mapping[str, Any]) -> None:
        """Before a write of ``record``: drop the facts it breaks."""
        facts = self.facts
        for fact, holds in facts.items():
            if holds and _breaks(fact, record):
                facts[fact] = False


def _codes_of(value: Any) -> frozenset[str]:
    """The type codes a value's column may carry (a non-empty str carries none)."""
    t = type(value)
    if t is str:
        return _NO_CODES if value else _EMPTY_STR
    if t is bytes:
        return _BYTES if value else _EMPTY_BYTES
    if t is list:
        return _LIST_CODES
    if t is datetime.datetime:
        return _AWARE if value.tzinfo is not None else _NAIVE
    return _TYPE_CODES.get(t, _NO_CODES)


_NO_CODES: Final = frozenset[str]()
_EMPTY_STR: Final = frozenset({"e"})
_BYTES: Final = frozenset({"y"})
_EMPTY_BYTES: Final = frozenset({"E"})
_LIST_CODES: Final = frozenset({"w", "l"})
_AWARE: Final = frozenset({"z"})
_NAIVE: Final = frozenset({"t"})
_TYPE_CODES: Final[dict[type, frozenset[str]]] = {
    int: frozenset({"i"}),
    float: frozenset({"f"}),
    bool: frozenset({"b"}),
    decimal.Decimal: frozenset({"d"}),
    datetime.date: frozenset({"D"}),
    dict: frozenset({"m"}),
}


def _breaks(fact: Fact, record: Mapping[str, Any]) -> bool:
    """Whether storing ``record`` would make ``fact`` false."""
    what, name = fact[0], fact[1]
    if name not in record:
        return bool(what == "all")
    if what == "all":
        return False
    value = record[name]
    if what == "int":
        return type(value) is not int or not -NUM_LIMIT < value < NUM_LIMIT
    codes = _codes_of(value)
    if what == "none":
        return not codes.isdisjoint(fact[2])
    return not codes or not codes <= fact[2]  # "only"


class _Space:
    """The free-space check before writes (see :attr:`Settings.min_free_space`).

    Asking the file system before every write would cost a system call per record; the
    check instead grants a budget of bytes (at most :data:`_RECHECK_BYTES`) and asks
    again when writes have used it up.
    """

    def __init__(self, path: str, reserve: int) -> None:
        self.path = path
        self.directory = os.path.dirname(os.path.abspath(path))
        self.reserve = reserve
        self.budget = 0

    def take(self, nbytes: int) -> None:
        """Account for a write of about ``nbytes``; raise if it would not fit."""
        self.budget -= nbytes
        if self.budget < 0:
            self.refresh(nbytes)

    def refresh(self, nbytes: int) -> None:
        try:
            st = os.statvfs(self.directory)
        except OSError as e:
            raise PyModelsError(f"cannot check the free space for {self.path}: {e}") from e
        room = st.f_bavail * st.f_frsize - self.reserve
        why = f"{room + self.reserve} bytes free on its file system, {self.reserve} kept free"
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            below_limit = limit - self._largest_file() - _RLIMIT_MARGIN
            if below_limit < room:
                room = below_limit
                why = f"the process's file size limit (RLIMIT_FSIZE) is {limit} bytes"
        if room < nbytes:
            self.budget = 0
            raise PyModelsError(
                f"not enough space to write to {self.path} ({why}; this write needs about "
                f"{nbytes}); nothing was written. Free some space (or lower the setting "
                "min_free_space) and retry"
            )
        self.budget = min(room, _RECHECK_BYTES) - nbytes

    def _largest_file(self) -> int:
        # The database and its index files: each grows on its own.
        prefix = os.path.basename(self.path)
        largest = 0
        with contextlib.suppress(OSError), os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.startswith(prefix):
                    with contextlib.suppress(OSError):
                        largest = max(largest, entry.stat().st_size)
        return largest


class _Before(typing.NamedTuple):
    """What the file header said just before this process opened the file."""

    #: Tokyo's flag byte (:data:`FLAG_OPEN`, :data:`FLAG_FATAL`).
    flags: int
    #: pymodels' own open mark (see :data:`_OPEN_MARK`).
    marked: bool
    #: The file was missing or empty.
    empty: bool
    #: A Tokyo header with no record and no pymodels stamp: what ``tctdbvanish`` leaves
    #: from rewriting the header until the storage stamps it again (see _recover).
    blank: bool = False


def _parse_header(head: bytes) -> _Before:
    if len(head) < _HEADER_SIZE or not head.startswith(_TC_MAGIC):
        return _Before(0, False, not head)
    ours = head[_OPAQUE_OFFSET : _OPAQUE_OFFSET + len(MAGIC)] == MAGIC
    records = int.from_bytes(head[_RNUM_OFFSET : _RNUM_OFFSET + 8], "little")
    return _Before(
        head[FLAGS_OFFSET],
        ours and head[_OPAQUE_OFFSET + _OPEN_MARK] == 1,
        False,
        blank=records == 0 and not ours,
    )


def _set_open_mark(ptr: int, value: int) -> None:
    """pymodels' open mark in the user area of the header (only in files it stamped)."""
    area = _binding._tctdbopaque(ptr)
    if area and ctypes.string_at(area, len(MAGIC)) == MAGIC:
        ctypes.memset(area + _OPEN_MARK, value, 1)


def _mark_unclean(path: str) -> None:
    """Set the open mark in a closed file's header (only in files pymodels stamped)."""
    fd = os.open(path, os.O_RDWR)
    try:
        at = _OPAQUE_OFFSET
        if os.pread(fd, len(MAGIC), at) == MAGIC:
            os.pwrite(fd, b"\x01", at + _OPEN_MARK)
    finally:
        os.close(fd)


def _clear_fatal_flag(ptr: int) -> None:
    # Tokyo sets the fatal flag in the header on any I/O error or damaged record and
    # never clears it; once the file is checked and repaired it no longer applies. The
    # header is in Tokyo's memory map, and the user area is at a fixed offset in it.
    area = _binding._tctdbopaque(ptr)
    if area:
        flags = ctypes.c_uint8.from_address(area - _OPAQUE_OFFSET + FLAGS_OFFSET)
        flags.value &= ~FLAG_FATAL & 0xFF


def _closing(state: _File, ptr: int) -> None:
    """Before the last close of a file opened for writing: mark it closed cleanly,
    unless a failed write or an untrusted index means the next open must repair it."""
    if state.failed is None and not state.stale:
        _set_open_mark(ptr, 0)


_FILES: dict[str, _File] = {}
_FILES_LOCK = threading.Lock()


def _file_state(path: str) -> _File:
    real = os.path.realpath(path)
    with _FILES_LOCK:
        state = _FILES.get(real)
        if state is None:
            state = _FILES[real] = _File()
        return state


class Storage(TokyoStorage):
    """Records in a Tokyo Cabinet table database, one column per top-level field."""

    features: ClassVar[Features] = features
    query_class: ClassVar[type[BaseQuery[Any]]] = Query
    settings_class: ClassVar[type[BaseSettings]] = Settings
    url_schemes: ClassVar[tuple[str, ...]] = ("tokyo-cabinet", "tokyo_cabinet")
    settings: Settings
    # The shared engine's searches raise the library's errors as PyModelsError (see
    # _engine_error).
    _engine_errors: ClassVar[tuple[type[Exception], ...]] = (TCError,)
    #: Each write outside a transaction (save, delete, clear) runs in a Tokyo transaction
    #: of its own, so that a kill cannot leave it half done (see ``TableDB.atomically``).
    #: Only ``bench/tokyo_cabinet_crash_cost.py`` turns it off, to measure what it costs.
    _own_transactions: ClassVar[bool] = True
    #: Look-ahead of ordered slices by order column (see :meth:`_learn_ahead`).
    _aheads: dict[bytes, int]

    @classmethod
    def settings_from_url(cls, url: str) -> dict[str, Any]:
        """``tokyo-cabinet:///storage.tct?bnum=1000000`` (query parameters are settings)."""
        settings: dict[str, Any] = {"path": url_path(url)}
        for key, value in parse_qsl(urlsplit(url).query):
            settings[key] = None if value.lower() == "none" and key == "lock_timeout" else value
        return settings

    # ------------------------------------------------------------------ lifecycle

    def _open(self) -> None:
        s = self.settings
        if s.kind.upper() != "TABLE":
            raise ConfigurationError(
                f"setting 'kind': {s.kind!r} is not supported; only 'TABLE' (hash and B+ tree "
                "databases hold values without columns, so nothing could be queried)"
            )
        path = s.path
        if self.read_only and not os.path.exists(path):
            raise StorageNotFound(f"{path} does not exist (read_only is set)", path=path)
        db = TableDB()
        if s.bnum or s.apow >= 0 or s.fpow >= 0 or s.large or s.compression:
            opts = TuneOpt(0)
            if s.large:
                opts |= TuneOpt.LARGE
            if s.compression:
                opts |= _COMPRESSION[s.compression]
            db.tune(s.bnum, s.apow, s.fpow, opts)
        if s.rcnum or s.lcnum or s.ncnum:
            db.setcache(s.rcnum, s.lcnum, s.ncnum)
        if s.xmsiz is not None:
            db.setxmsiz(s.xmsiz)
        mode = OpenMode.READER if self.read_only else OpenMode.WRITER | OpenMode.CREAT
        if s.sync:
            mode |= OpenMode.TSYNC
        self._db = _open_locked(db, path, mode, s.lock_timeout)
        before = _parse_header(self._db.header_before)
        self._file = _file_state(path)
        # Every storage on this file shares one lock (see _File): the base class's
        # transaction() and read-modify-write paths hold it, and so do the shared
        # engine's reads of several steps and its index bookkeeping.
        self._lock = self._search_lock = self._indexes_lock = self._file.lock
        try:
            with self._lock:
                if self._db.opened_file:
                    self._file.reset()
                    self._file.indexes = _scan_indexes(path)
                self._check_format()
                if self._db.opened_file:
                    self._recover(before)
        except BaseException:
            self._db.close()
            raise
        if s.min_free_space is not None and self._file.space is None and not self.read_only:
            self._file.space = _Space(path, s.min_free_space)

    def _recover(self, before: _Before) -> None:
        """After this process opened the file: if its last writer did not close it
        cleanly, check it and rebuild its indexes (a reader only stops using them)."""
        state = self._file
        writer = bool(self._db.mode & OpenMode.WRITER)
        reasons = []
        if before.flags & FLAG_OPEN or before.marked:
            reasons.append("its last writer did not close it")
        if before.flags & FLAG_FATAL:
            reasons.append("Tokyo Cabinet met an I/O error or damage while it was open")
        if before.empty and state.indexes:
            reasons.append("it is empty but index files remain")
        elif before.blank and state.indexes:
            # A clear (tctdbvanish) cut short after Tokyo rewrote the header and before
            # its index files followed. Rebuilding the indexes of an empty table costs
            # next to nothing, so an empty foreign file with indexes gets it too.
            reasons.append("it is empty, unstamped and has index files (a clear cut short?)")
        if reasons:
            indexes = ", ".join(c.decode("utf-8", "replace") for c in state.indexes) or "none"
            why = "; ".join(reasons)
            if not writer:
                unplayed = _unplayed_logs(self.path)
                if unplayed:
                    # Tokyo plays a dead writer's log back even for a reader, but only
                    # when it may write the file: otherwise the records are as the kill
                    # left them, possibly torn.
                    raise PyModelsError(
                        f"{self.path} was not closed cleanly and its write-ahead log "
                        f"({', '.join(unplayed)}) could not be played back by this read-only "
                        "open (no write permission?): open it once for writing to recover it"
                    )
                state.stale = set(state.indexes)
                _log.warning(
                    "%s was not closed cleanly (%s); opened read-only, so queries use none "
                    "of its indexes (%s) until a writer opens it and rebuilds them",
                    self.path,
                    why,
                    indexes,
                )
                return
            _log.warning(
                "%s was not closed cleanly (%s): checking its records and rebuilding its "
                "indexes (%s)",
                self.path,
                why,
                indexes,
            )
            with _translate("repair"):
                keys = self._db.keys()
                code = self._db.ecode()
                if code not in _DAMAGE and len(keys) != self._db.rnum():
                    # A write cut short leaves the header's record count off by its
                    # record: rewriting the file from the records recounts them.
                    _log.warning(
                        "%s: its header counts %d records but %d are there: rewriting the "
                        "file (tctdboptimize)",
                        self.path,
                        self._db.rnum(),
                        len(keys),
                    )
                    self._db.optimize()
                self._checked_keys_list()
                for col, kind in state.indexes.items():
                    self._rebuild_index(col, kind)
                self._db.sync()
                _clear_fatal_flag(self._db._h())
        if writer:
            _set_open_mark(self._db._h(), 1)
            self._db.on_last_close(functools.partial(_closing, state))

    def _rebuild_index(self, col: bytes, kind: str) -> None:
        # Dropping the index file and building it again from the records: whatever
        # the old one held (entries of records never written, entries missing) is gone.
        try:
            self._db.setindex(col, IndexType.VOID)
        except TCError as e:
            if e.ecode != ErrorCode.INVALID:
                raise
            # Tokyo did not load the index file (one cut short by a crash while it was
            # being built is skipped when the database opens): nothing holds it.
            for name in _index_files(self.path, col):
                os.unlink(name)
        self._refuse_empty_values(col, kind)
        self._db.setindex(col, _INDEX_TYPES[kind])
        self._file.stale.discard(col)

    def _checked_keys_list(self) -> list[bytes]:
        """Every primary key; CorruptData where the file cannot list them all."""
        keys = self._db.keys()
        count = self._db.rnum()
        code = self._db.ecode()
        if code in _DAMAGE or len(keys) != count:
            self._damaged(
                f"its header counts {count} records but {len(keys)} could be listed"
                + (f" ({_binding._tctdberrmsg(code).decode()})" if code in _DAMAGE else ""),
            )
        return keys

    def _damaged(self, detail: str, pk: str | None = None) -> typing.NoReturn:
        where = f", record {pk!r}" if pk is not None else ""
        raise CorruptData(
            f"{self.path}{where} is damaged: {detail}. Tokyo Cabinet cannot read it back; "
            "restore the file from a copy",
            path=self.path,
            pk=pk,
        )

    def _check_reads(self) -> None:
        """After a search: the library reports damage it met only in its error code."""
        code = self._db.ecode()
        if code in _DAMAGE:
            self._damaged(f"a search met {_binding._tctdberrmsg(code).decode()} (ecode {code})")

    def _read_error(self, operation: str, e: TCError, pk: str | None = None) -> PyModelsError:
        if e.ecode in _DAMAGE:
            where = f", record {pk!r}" if pk is not None else ""
            return CorruptData(
                f"{self.path}{where} is damaged: Tokyo Cabinet {operation} failed: "
                f"{e.message} (ecode {e.ecode}); restore the file from a copy",
                path=self.path,
                pk=pk,
            )
        return _error(operation, e)

    def _write_error(self, operation: str, e: TCError) -> PyModelsError:
        """A failed write: unless it changed nothing, no further write is trusted."""
        if e.ecode in _HARMLESS:
            return _error(operation, e)
        state = self._file
        state.failed = f"{operation}: {e.message} (ecode {e.ecode})"
        state.stale = set(state.indexes)
        return PyModelsError(
            f"Tokyo Cabinet {operation} failed on {self.path}: {e.message} (ecode {e.ecode}). "
            "The record being written may be absent; writes are refused until the storage "
            "is reopened (reopening checks the file and rebuilds its indexes)"
        )

    def _writable(self, nbytes: int) -> None:
        """Before a write of about ``nbytes``: refuse it after a failed write, or when the
        free space would run short (see :class:`_Space`)."""
        state = self._file
        if state.failed is not None:
            raise PyModelsError(
                f"{self.path}: an earlier write failed ({state.failed}); close and reopen "
                "the storage (reopening checks the file and rebuilds its indexes)"
            )
        if state.space is not None:
            state.space.take(nbytes * (1 + len(state.indexes)) + 512)

    def _check_written(self, operation: str) -> None:
        """After writes: Tokyo loses some write errors (it still returns success) but
        always raises the fatal flag in the header."""
        if self._db.flags() & FLAG_FATAL:
            e = TCError(self._db.ecode(), "a write failed inside the library", self.path, operation)
            if e.ecode in _HARMLESS:
                e = TCError(int(ErrorCode.MISC), e.message, self.path, operation)
            raise self._write_error(operation, e)

    @property
    def location(self) -> str | None:
        """The table database file, for people."""
        return str(self.settings.path)

    def _check_format(self) -> None:
        area = self._opaque()
        if area is None:
            return
        current = ctypes.string_at(area, _OPAQUE_SIZE)
        if current.startswith(MAGIC):
            version = current[len(MAGIC) :].split(b"\x00", 1)[0]
            if not version.isdigit() or int(version) > FORMAT_VERSION:
                raise ConfigurationError(
                    f"{self.settings.path} was written by a newer pymodels (format "
                    f"{version.decode('ascii', 'replace')}; this one reads format "
                    f"{FORMAT_VERSION}): upgrade pymodels"
                )
            return
        if current.strip(b"\x00") or self.read_only or self._db.mode & OpenMode.WRITER == 0:
            # Someone else's data in the user area, or nothing we may write: leave it.
            return
        self._stamp()

    def _opaque(self) -> int | None:
        return self._db.opaque()

    def _stamp(self) -> None:
        area = self._opaque()
        if area is not None:
            stamp = MAGIC + str(FORMAT_VERSION).encode("ascii")
            ctypes.memmove(area, stamp.ljust(_OPAQUE_SIZE, b"\x00"), _OPAQUE_SIZE)
            if self._db.opened_file or self._db.mode & OpenMode.WRITER:
                ctypes.memset(area + _OPEN_MARK, 1, 1)  # open for writing (see _recover)

    def _close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except TCError as e:
                # The open mark was cleared just before the close that failed (a full
                # disk while flushing index pages, say): set it again, so that the next
                # open repairs the file. Tokyo has let go of the file by now, so this
                # descriptor holds no lock that closing it could drop.
                with contextlib.suppress(OSError):
                    _mark_unclean(self.path)
                raise PyModelsError(
                    f"closing {self.settings.path}: {e}; the next open checks the file and "
                    "rebuilds its indexes"
                ) from e

    @property
    def path(self) -> str:
        """The database file."""
        return self.settings.path

    # ---------------------------------------------------------------- records

    # The hot paths catch TCError themselves: a context manager per call costs about as
    # much as decoding a column.

    def _load(self, pk: str) -> dict[str, Any] | None:
        key = pk.encode()
        # The lock taken and let go by hand: a with statement costs 0.2 us more here,
        # a tenth of what this method adds to the engine's own time.
        lock = self._lock
        try:
            lock.acquire()
            try:
                dump = self._db.getdump(key)
            finally:
                lock.release()
        except TCError as e:
            raise self._read_error("get", e, pk) from e
        return None if dump is None else decode_dump(dump)

    def _load_many(self, pks: list[str]) -> list[dict[str, Any] | None]:
        dumps = self._load_dumps([pk.encode("utf-8") for pk in pks])
        return [None if dump is None else decode_dump(dump) for dump in dumps]

    def _load_dumps(self, keys: list[bytes]) -> list[bytes | None]:
        """Records of several keys as dumps (see :func:`decode_dump`), None where missing."""
        getdump = self._db.getdump
        try:
            with self._lock:
                return [getdump(k) for k in keys]
        except TCError as e:
            raise self._read_error("get", e, self._failing_key(keys)) from e

    def _failing_key(self, keys: list[bytes]) -> str | None:
        """The first of ``keys`` whose record cannot be read (reads change nothing, so
        the error path finds it again rather than the hot path counting)."""
        for key in keys:
            try:
                with self._lock:
                    self._db.getdump(key)
            except TCError:
                return decode_pk(key)
        return None

    def _load_raw(self, keys: list[bytes]) -> list[dict[bytes, bytes] | None]:
        """Column maps of several keys, aligned with them (None: deleted meanwhile)."""
        get = self._db.get
        try:
            with self._lock:
                return [get(k) for k in keys]
        except TCError as e:
            raise self._read_error("get", e) from e

    def _store(self, pk: str, record: dict[str, Any], *, overwrite: bool) -> bool:
        dump = encode_dump(record)
        key = pk.encode("utf-8")
        with self._lock:
            self._writable(len(dump) + len(key))
            if self._file.facts:
                self._file.observe(record)
            try:
                if self._own_transactions:
                    done = self._db.atomically(self._db.putdump, key, dump, keep=not overwrite)
                else:
                    done = self._db.putdump(key, dump, keep=not overwrite)
            except TCError as e:
                raise self._write_error("put", e) from e
            self._check_written("put")
            return done

    def _store_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        putdump = self._db.putdump
        writable = self._writable
        with self._lock:
            observe = self._file.observe if self._file.facts else None
            try:
                # Each record is encoded right before its put: the encoded form is bytes,
                # and holding a whole batch of it would only feed the garbage collector.
                for pk, record in items:
                    key = pk.encode("utf-8")
                    dump = encode_dump(record)
                    writable(len(dump) + len(key))
                    if observe is not None:
                        observe(record)
                    # Generated pks are written insert-if-absent: a clash (however
                    # unlikely) makes the base class redo the batch one by one with
                    # fresh pks.
                    if not putdump(key, dump, keep=True):
                        raise IntegrityError(f"a record with pk {pk!r} exists already")
            except TCError as e:
                raise self._write_error("put", e) from e
            self._check_written("put")

    def _remove(self, pk: str) -> bool:
        key = pk.encode("utf-8")
        with self._lock:
            self._writable(len(key))
            try:
                if self._own_transactions:
                    done = self._db.atomically(self._db.out, key)
                else:
                    done = self._db.out(key)
            except TCError as e:
                raise self._write_error("out", e) from e
            self._check_written("out")
            return done

    def _keys(self) -> Iterator[str]:
        with self._lock, _translate("fwmkeys"):
            keys = self._checked_keys_list()
        return (decode_pk(k) for k in keys)

    def _scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._lock, _translate("fwmkeys"):
            keys = self._checked_keys_list()
        yield from self._records(keys)

    def _records(
        self, keys: list[bytes], gates: tuple[TCCond, ...] = ()
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(pk, record)`` for keys, loaded in batches; keys deleted meanwhile are skipped,
        and so are records failing ``gates`` (see :attr:`Plan.deferred`)."""
        if not gates and len(keys) <= BATCH_SIZE:
            # One batch (a page, first()): loaded here, without a generator's frame.
            return iter(
                [
                    (decode_pk(key), decode_dump(dump))
                    for key, dump in zip(keys, self._load_dumps(keys), strict=True)
                    if dump is not None
                ]
            )
        return self._batched_records(keys, gates)

    def _batched_records(
        self, keys: list[bytes], gates: tuple[TCCond, ...]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """:meth:`_records` a batch at a time, each loaded as the caller reaches it."""
        verdicts: dict[bytes | None, bool] = {}  # by _types column: records share them
        for start in range(0, len(keys), BATCH_SIZE):
            batch = keys[start : start + BATCH_SIZE]
            for key, dump in zip(batch, self._load_dumps(batch), strict=True):
                if dump is None:
                    continue
                if gates:
                    types = dump_types(dump)
                    passed = verdicts.get(types)
                    if passed is None:
                        passed = gates_hold(gates, types)
                        if len(verdicts) < 1000:
                            verdicts[types] = passed
                    if not passed:
                        continue
                yield decode_pk(key), decode_dump(dump)

    def _count(self) -> int:
        with self._lock, _translate("rnum"):
            return self._db.rnum()

    def _contains(self, pk: str) -> bool:
        key = pk.encode("utf-8")
        with self._lock, _translate("vsiz"):
            return self._db.vsiz(key) >= 0

    def _clear(self) -> None:
        with self._lock:
            self._writable(0)
            try:
                self._clear_now()
            except TCError as e:
                raise self._write_error("clear", e) from e
            self._check_written("clear")

    def _clear_now(self) -> None:
        if self._tx_open() or self._db.rnum() <= _VANISH_ABOVE:
            if self._own_transactions:
                self._db.atomically(self._searchout_all)
            else:
                self._searchout_all()
        else:
            # Deleting record by record in a transaction costs about 20 us a record
            # (2 s for 100k) where truncating costs 16 ms; truncation is all or nothing
            # for the records, and a kill before the index files follow leaves them
            # stale in a file the next open repairs (see _recover: "a clear cut short").
            self._db.vanish()  # truncates the file, header included
            self._stamp()

    def _searchout_all(self) -> None:
        with self._db.query() as q:
            q.searchout()

    # ----------------------------------------------------------- transactions

    def _begin(self) -> None:
        self._writable(0)
        try:
            self._db.tranbegin()
        except TCError as e:
            raise self._write_error("tranbegin", e) from e

    def _commit(self) -> None:
        try:
            self._db.trancommit()
        except TCError as e:
            raise self._write_error("trancommit", e) from e
        self._check_written("trancommit")

    def _rollback(self) -> None:
        with _translate("tranabort"):
            self._db.tranabort()

    def _tx_open(self) -> bool:
        handle = self._db._handle
        return handle is not None and handle.tx_owner is not None

    # ----------------------------------------------------------------- indexes

    def _index_column(self, col: bytes, kind: str | None, name: str) -> None:
        with self._lock:
            current = self._file.indexes.get(col)
            wanted = kind or current or "lexical"
            if current == wanted and col not in self._file.stale:
                return
            if self._tx_open():
                raise NotSupported(
                    "Tokyo Cabinet cannot create an index inside a transaction "
                    "(create it before the transaction starts)"
                )
            self._writable(0)
            if self._file.space is not None:
                # An index file is about as large as the column it holds: at most the file.
                self._file.space.take(self._db.fsiz())
            try:
                if col in self._file.stale:
                    # An index that may be behind its records is rebuilt, not kept.
                    _log.warning("%s: rebuilding the index on %r", self.path, name)
                    self._rebuild_index(col, wanted)
                else:
                    self._refuse_empty_values(col, wanted)
                    self._db.setindex(col, _INDEX_TYPES[wanted])
            except TCError as e:
                raise self._write_error("setindex", e) from e
            self._file.indexes[col] = wanted
            self._check_written("setindex")

    def _count_empty(self, col: bytes) -> int:
        with self._db.query() as q:
            q.addcond(col, Cond.STREQ, b"")
            return q.searchcount()

    def _stored_index_kind(self, col: bytes) -> str | None:
        # Tokyo's own record of its indexes: the index files beside the table file.
        return _scan_indexes(self.settings.path).get(col)

    def _can_index_now(self) -> bool:
        # Tokyo cannot build an index inside a transaction: a later save does it.
        return not self._tx_open()

    def _index_map(self) -> Mapping[bytes, str]:
        return self._file.indexes

    # ------------------------------------------------------------ query support

    def _tc_queries(
        self, blocks: Sequence[Block], order: tuple[bytes, int] | None, limit: int, skip: int
    ) -> list[_binding.Query]:
        """One Tokyo query per block; the first carries the order and the limit.

        While an index may be behind its records (see :attr:`_File.stale`) no condition
        uses an index.
        """
        queries: list[_binding.Query] = []
        scan = bool(self._file.stale)
        try:
            for block in blocks:
                q = self._db.query()
                queries.append(q)
                for c in block:
                    q.addcond(c.col, c.op, c.expr, negate=c.negate, noidx=c.noidx or scan)
            if order is not None:
                queries[0].setorder(order[0], order[1])
            if limit >= 0 or skip:
                queries[0].setlimit(limit, skip)
        except BaseException:
            for q in queries:
                q.close()
            raise
        return queries

    def _search(
        self, blocks: Sequence[Block], order: tuple[bytes, int] | None, limit: int, skip: int
    ) -> list[bytes]:
        if order is not None and (limit >= 0 or skip) and self._file.stale:
            # An ordered query with a limit may walk the order column's index: not while
            # an index may be behind its records.
            return sliced(self._run(blocks, order), limit, skip)
        # The same queries _tc_queries builds, without a Python object per query.
        keys = search_blocks(self._db, blocks, order, limit, skip, noidx=bool(self._file.stale))
        self._check_reads()
        return keys

    def _search_all(
        self, order: tuple[bytes, int] | None, limit: int, skip: int, extra: TCCond | None
    ) -> list[bytes]:
        if extra is None and (order is None or order[0] == b""):
            # Every record: the key list is cheaper than a table scan.
            keys = self._checked_keys_list()
            if order is not None:
                keys.sort(reverse=order[1] == Order.STRDESC)
            return sliced(keys, limit, skip)
        return super()._search_all(order, limit, skip, extra)

    def _engine_error(self, operation: str, error: Exception) -> PyModelsError:
        assert isinstance(error, TCError)
        return _error(operation, error)

    def _unordered_keys(self, plan: Plan) -> Generator[bytes, None, None]:
        """The plan's keys in no order, in bounded memory, for pk order (every key: the
        handle's iterator).

        Tokyo sorts a whole result before it slices it, lists every key it returns, and
        collects the keys a skip passes over, so a condition is first asked for one page
        of ``spill.RUN_SIZE`` keys, unordered: a shorter page is the whole answer (a
        selective query, indexed or not, costs that one search). A full page is dropped
        and every record is walked once instead (:meth:`_filtered_walk`). All of it runs
        under the file's lock, so no write of this process comes between the page and
        the walk or within the walk; no other process writes the file. A plan with
        checked blocks is not walked (the caller keeps its path).
        """
        if plan.blocks is None:
            yield from self._walk_every_key()
            return
        page = spill.RUN_SIZE
        blocks: list[Block] = [b.conds for b in plan.blocks]
        with self._lock:
            try:
                keys = self._run(blocks, None, page, 0)
            except TCError as e:
                raise _error("search", e) from e
            if len(keys) < page:
                yield from keys
                return
            del keys
            yield from self._filtered_walk(blocks)

    def _filtered_walk(self, blocks: list[Block]) -> Generator[bytes, None, None]:
        """Keys of the union of ``blocks``, every record read once: the handle's
        iterator copies records, as stored, a chunk of :data:`_SCRATCH_RECORDS` at a
        time into a private scratch table in a temporary directory, where Tokyo runs
        the query's own conditions over the chunk (a table scan: the scratch has no
        index) before the chunk is dropped (``tctdbvanish``).

        Tokyo 1.4.48 has no cheaper way to test conditions on a set of records: a
        search always starts from the beginning (of the file, or of an index's range),
        a skip collects the keys it passes in C, and a primary-key condition
        (``"" STROREQ`` over a chunk's keys) is no lookup but a test during a full scan,
        re-reading the operand for every record. Copying costs about as much as one
        extra scan of the file, and the scratch file holds one chunk. The free-space
        check of :attr:`Settings.min_free_space` guards the scratch's file system (Tokyo
        writes it through a memory map too). The caller holds the file's lock.
        """
        chunk = _SCRATCH_RECORDS
        try:
            directory = tempfile.mkdtemp(prefix="pymodels-scan-")
        except OSError as e:
            raise _scratch_error(tempfile.gettempdir(), e) from e
        path = os.path.join(directory, "chunk.tct")
        scratch = TableDB()
        try:
            scratch.tune(2 * chunk + 1)
            reserve = self.settings.min_free_space
            take = None if reserve is None else _Space(path, reserve).take
            try:
                scratch.open(
                    path, OpenMode.WRITER | OpenMode.CREAT | OpenMode.TRUNC | OpenMode.NOLCK
                )
                self._db.iterinit()
            except TCError as e:
                raise self._walk_error(e, path) from e
            total = 0
            while True:
                try:
                    copied = self._db.copy_records(scratch, chunk, take)
                    keys = search_blocks(scratch, blocks) if copied else []
                    if scratch.flags() & FLAG_FATAL:
                        raise TCError(scratch.ecode(), "a search failed", path, "search")
                    scratch.vanish()
                except TCError as e:
                    raise self._walk_error(e, path) from e
                yield from keys
                total += copied
                if copied < chunk:
                    break
            count = self._db.rnum()
            if total != count:
                self._damaged(f"its header counts {count} records but {total} could be listed")
        finally:
            with contextlib.suppress(TCError):
                scratch.close()
            shutil.rmtree(directory, ignore_errors=True)

    def _walk_error(self, e: TCError, scratch: str) -> PyModelsError:
        """The error of a failed call of :meth:`_filtered_walk`."""
        if e.path == scratch:
            return _scratch_error(os.path.dirname(scratch), e)
        return self._read_error(e.operation, e)

    def _walk_every_key(self) -> Generator[bytes, None, None]:
        """Every key, one at a time from the handle's iterator: a search with a skip
        collects the skipped keys in C, so paging every record would hold them all.

        The iterator is one per handle, and every storage on the file in this process
        shares the handle and the lock held for the whole walk; nothing else uses it.
        """
        with self._lock:
            count = 0
            try:
                for key in self._db.iterkeys():
                    count += 1
                    yield key
                total = self._db.rnum()
            except TCError as e:
                raise _error("iternext", e) from e
            if count != total:
                self._damaged(f"its header counts {total} records but {count} could be listed")

    def _ordered_stream(
        self, plan: Plan, oplan: OrderPlan, offset: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every match in a column's order, in bounded memory.

        Tokyo's ordered search lists every match in C (and the binding copies the list
        into Python) before the first record, so a condition is first asked for one page
        of ``spill.RUN_SIZE`` keys, unordered (as :meth:`_unordered_keys` does): a
        shorter page is every match, and its records are loaded and sorted here. A
        longer result, or a table of that many records for no condition, is walked in
        bounded memory (:meth:`_unordered_keys`, records loaded in pk order), its sort
        keys sorted with the external sort (``pks_in_order``), and the records loaded
        again in that order, a batch at a time; one deleted meanwhile is left out.
        """
        page = spill.RUN_SIZE
        if plan.blocks is None:
            if self._count() < page:
                yield from super()._ordered_stream(plan, oplan, offset)
                return
        else:
            try:
                with self._lock:
                    keys = self._run([b.conds for b in plan.blocks], None, page, 0)
            except TCError as e:
                raise _error("search", e) from e
            if len(keys) < page:
                yield from sort_items(list(self._records(keys)), oplan.keys)[offset:]
                return
            del keys
        matches = self._in_pk_order(self._unordered_keys(plan), False, 0, None)
        what = "the sort keys of a query"
        with contextlib.closing(pks_in_order(matches, oplan.keys, what)) as pks:
            ordered = itertools.islice(pks, offset, None)
            while batch := list(itertools.islice(ordered, BATCH_SIZE)):
                yield from self._records([pk.encode("utf-8") for pk in batch])

    def _top(
        self, plan: Plan, oplan: OrderPlan, offset: int, limit: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """A slice of a column order: Tokyo's top keys, the order column read only where
        the cut is decided, and each record of the page loaded and decoded once.

        Tokyo reads every match to sort it, but keeps the top of a limited order in a
        partial sort whose cost grows with the limit (about 10 us per key over 2,000
        matches), so it is asked for the slice, the key after it and a look-ahead sized
        by the tie runs this column showed at earlier cuts (see :meth:`_learn_ahead`).
        Records of equal value are adjacent in Tokyo's order (it has no pk tiebreak):
        when the key after the slice differs from the last one, the slice is complete;
        otherwise the boundary's run is found by binary search over the column's values
        (``tctdbget4``, no record decoded), and its first keys in pk order finish the
        slice, taken from the keys at hand when the run ends among them, else from one
        search bounded to the tied value, ordered by pk.
        """
        want = offset + limit
        if want == 0 or want >= MAX_LIMIT // 4:
            yield from super()._top(plan, oplan, offset, limit)
            return
        try:
            with self._lock:
                page = self._top_page(plan, oplan, want)
        except TCError as e:
            raise self._read_error("search", e) from e
        if page is None:
            # The boundary's text is ambiguous (see below): the whole order, sorted exactly.
            page = list(self._ordered_stream(plan, oplan, 0))[:want]
        yield from page[offset:]

    def _top_page(self, plan: Plan, oplan: OrderPlan, want: int) -> list[Item] | None:
        """The first ``want`` records of the order (fewer if fewer match); None where the
        boundary value's text cannot name it. Runs under the file's lock, so no key
        found here is deleted before its record is read."""
        col = oplan.column
        aheads = self.__dict__.get("_aheads")
        if aheads is None:
            aheads = self._aheads = {}
        ahead: int = aheads.get(col, want)
        fetch = want + 1 + ahead
        keys = self._tc_search(plan, (col, oplan.tc_order), fetch)
        if len(keys) <= want:
            return self._page_records(keys, oplan)
        getcol = self._db.getcol
        values: dict[int, bytes | None] = {}

        def at(i: int) -> bytes | None:
            if i not in values:
                values[i] = getcol(keys[i], col)  # None: the record lacks the column
            return values[i]

        boundary = at(want - 1)
        if at(want) != boundary:
            self._learn_ahead(col, ahead, 0)
            return self._page_records(keys[:want], oplan)
        if boundary is not None and b"\x00" in boundary:
            # Distinct values may share such a text (the empty str and "\x00"), and no
            # condition can name it.
            return None
        # The run of the boundary's value: Tokyo's order is monotone in the column, so
        # its first key in the slice and its end among the keys are binary searches.
        lo, hi = 0, want - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if at(mid) == boundary:
                hi = mid
            else:
                lo = mid + 1
        first = lo
        lo, hi = want + 1, len(keys)
        while lo < hi:
            mid = (lo + hi) // 2
            if at(mid) == boundary:
                lo = mid + 1
            else:
                hi = mid
        end = lo
        descending = oplan.keys[-1].descending
        if end < len(keys) or len(keys) < fetch:
            self._learn_ahead(col, ahead, end - want)
            ties = sorted(keys[first:end], reverse=descending)[: want - first]
        else:
            self._learn_ahead(col, ahead, None)
            ties = self._tc_search(
                plan,
                (b"", Order.STRDESC if descending else Order.STRASC),
                want - first,
                extra=self._tie_condition(plan, col, boundary, oplan.numeric),
            )
        page = self._page_records(keys[:first], oplan)
        if page is not None:
            tied = list(self._records(ties))
            if len(tied) == len(ties):
                return page + tied
        return None

    def _page_records(self, keys: list[bytes], oplan: OrderPlan) -> list[Item] | None:
        """The records of ``keys`` sorted exactly (None if one vanished: not under the
        file's lock, which every caller holds)."""
        items = list(self._records(keys))
        return sort_items(items, oplan.keys) if len(items) == len(keys) else None

    def _learn_ahead(self, col: bytes, ahead: int, needed: int | None) -> None:
        """Size the next look-ahead of order column ``col`` from this cut: ``needed`` keys
        past the slice held the end of the boundary's run (0: no tie crossed the cut;
        None: the run went past the ``ahead`` keys fetched, and a search found its keys).

        Grows at once (half as much again as the run needed, doubled after a miss),
        shrinks half-way per cut, stays within :data:`_AHEAD_MAX`. Only speed depends on
        it: every size gives the exact page.
        """
        if needed is None:
            new = 2 * ahead + 1
        else:
            target = needed + needed // 2
            new = target if target >= ahead else (ahead + target) // 2
        aheads = self._aheads
        if col in aheads or len(aheads) < 256:
            aheads[col] = min(new, _AHEAD_MAX)

    def _proved(self, fact: Fact) -> bool:
        # Proved by looking for a record that breaks the fact (one query, which reads
        # every record unless an index answers it or a breaking record comes first) on
        # first use after the file opened; writes keep it up to date from then on (see
        # _File.observe).
        facts = self._file.facts
        holds = facts.get(fact)
        if holds is None:
            with self._lock:
                holds = facts.get(fact)
                if holds is None:
                    try:
                        holds = not any(map(self._any_in_block, _breaking(fact)))
                    except TCError as e:
                        raise _error("search", e) from e
                    facts[fact] = holds
        return holds

    def _any_in_block(self, conds: Block) -> bool:
        """Whether a record matches ``conds``: a search that stops at the first match.
        A count would have Tokyo list every matching key first: 40 MB and 0.6 s for a
        fact that 200,000 records break, against no memory and no time."""
        queries = self._tc_queries([conds], None, 1, 0)
        try:
            found = bool(queries[0].search())
        finally:
            queries[0].close()
        self._check_reads()
        return found

    def _count_block(self, conds: Block) -> int:
        # searchcount leaves the key list in the library: nothing is copied.
        queries = self._tc_queries([conds], None, -1, 0)
        try:
            count = queries[0].searchcount()
        finally:
            queries[0].close()
        self._check_reads()
        return count

    def _count_where(self, native: Any) -> int:
        # The facts proved on this file may spare conditions (see _proved).
        return super()._count_where(self._refined(native))

    def _delete_all(self) -> int:
        # The count and the clear see the same records.
        with self._lock:
            return super()._delete_all()

    @contextlib.contextmanager
    def _deleting(self) -> Iterator[None]:
        # In one transaction (the deletes of a query are all or nothing), under the
        # file's lock; library errors make the file untrusted as any failed write does.
        with self._atomic(), self._lock:
            self._writable(0)
            try:
                yield
            except TCError as e:
                raise self._write_error("searchout", e) from e
            self._check_written("searchout")

    def _delete_block(self, conds: Block) -> int:
        (q,) = self._tc_queries([conds], None, -1, 0)
        with q:
            q.searchout()
            return q.count()

    def _delete_keys(self, keys: list[bytes]) -> int:
        out = self._db.out
        return sum(1 for k in keys if out(k))

    def _hints(
        self, blocks: Sequence[Block], order: tuple[bytes, int] | None, limit: int, skip: int
    ) -> list[str]:
        queries = self._tc_queries(blocks, order, limit, skip)
        try:
            if len(queries) == 1:
                queries[0].searchcount()
            else:
                metasearch(queries, SetOp.UNION)
            # A metasearch gathers every query's hint into the first one's.
            return [queries[0].hint().strip()]
        finally:
            for q in queries:
                q.close()


# --------------------------------------------------------------------------- helpers

#: The longest look-ahead of an ordered slice (see Storage._learn_ahead).
_AHEAD_MAX: Final = 4096
#: Records copied into the scratch table per search of it (see Storage._filtered_walk):
#: its file holds about this many records, and each chunk costs a vanish (a few ms).
_SCRATCH_RECORDS = 20_000


def _breaking(fact: Fact) -> list[Block]:
    """Queries that together find the records breaking ``fact`` (see Storage._proved)."""
    what, name = fact[0], fact[1]
    col = name_bytes(name)
    exists = TCCond(col, Cond.STRRX, b"")
    if what == "all":
        return [(exists.negated(),)]
    codes = fact[2] if len(fact) > 2 else frozenset({"i"})
    tokens = TCCond(
        TYPES_COLUMN, Cond.STROR, " ".join(token(name, c) for c in sorted(codes)).encode()
    )
    if what == "none":
        return [(tokens,)]
    blocks: list[Block] = [(exists, tokens.negated())]
    if what == "int":
        # Beyond the bound Tokyo's parser may round: such ints break the fact too.
        bound = b"%d" % NUM_LIMIT
        blocks += [(TCCond(col, Cond.NUMGE, bound),), (TCCond(col, Cond.NUMLE, b"-" + bound),)]
    return blocks


def _error(operation: str, e: TCError) -> PyModelsError:
    return PyModelsError(f"Tokyo Cabinet {operation} failed: {e}")


def _scratch_error(directory: str, e: TCError | OSError) -> PyModelsError:
    reason = e.message if isinstance(e, TCError) else (e.strerror or str(e))
    return PyModelsError(
        f"cannot filter the records of a query in a scratch table in a temporary directory "
        f"({directory}): {reason} (TMPDIR chooses another)"
    )


@contextlib.contextmanager
def _translate(operation: str) -> Iterator[None]:
    """Library errors as :class:`PyModelsError`, the original chained."""
    try:
        yield
    except TCError as e:
        raise _error(operation, e) from e


def _open_locked(db: TableDB, path: str, mode: OpenMode, timeout: float | None) -> TableDB:
    """Open ``path``, waiting up to ``timeout`` for another process's lock.

    Every attempt fails at once when the file is locked (LCKNB), so the header the
    binding reads just before the attempt that succeeds (``header_before``) shows how
    the last writer left the file: a writer still holding it shows as having it open,
    one that closed it meanwhile does not.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            return db.open(path, mode | OpenMode.LCKNB)
        except TCError as e:
            if e.ecode == ErrorCode.LOCK:
                if deadline is None or time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                waited = f" for {timeout:g} s" if timeout else ""
                raise LockTimeout(
                    f"{path} is locked by another process (a writer, or ttserver serving "
                    f"it) and stayed locked{waited}; set lock_timeout to wait for it "
                    f"(None: as long as it takes)"
                ) from e
            if e.ecode == ErrorCode.INVALID and "already open" in e.message:
                raise ConfigurationError(f"{path}: {e.message}") from e
            if e.ecode == ErrorCode.THREAD:
                # Tokyo's own table of open files, which a forked child inherits.
                raise PyModelsError(
                    f"cannot open {path}: Tokyo Cabinet has it open in this process, or in "
                    "the process this one was forked from; open it before forking in only "
                    "one of them, or in a process that was not forked from its opener"
                ) from e
            if e.ecode in _DAMAGE:
                raise CorruptData(
                    f"{path} is not a Tokyo Cabinet table database, or is truncated or "
                    f"damaged ({e.message}, ecode {e.ecode})",
                    path=path,
                ) from e
            writing = bool(mode & OpenMode.WRITER)
            raise PyModelsError(open_failure(path, e, write=writing)) from e


def _unplayed_logs(path: str) -> list[str]:
    """Write-ahead logs of ``path`` and its index files that still hold a transaction.

    Tokyo truncates a log at commit and removes it once played back; one holding at least
    its header (8 + 256 bytes) after an open is a transaction nobody undid."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = os.path.basename(path)
    found = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.name.endswith(".wal"):
                with contextlib.suppress(OSError):
                    if entry.stat().st_size >= 8 + _HEADER_SIZE:
                        found.append(entry.name)
    return sorted(found)


def _index_files(path: str, col: bytes) -> list[str]:
    """The index files of column ``col`` beside the database ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = os.path.basename(path) + ".idx."
    found = []
    for name in os.listdir(directory):
        column, _, suffix = name[len(prefix) :].rpartition(".")
        if name.startswith(prefix) and suffix in INDEX_SUFFIXES and unquote_to_bytes(column) == col:
            found.append(os.path.join(directory, name))
    return found


def _scan_indexes(path: str) -> dict[bytes, str]:
    """Indexed columns of a file, from the index files Tokyo keeps beside it."""
    return scan_index_files(os.path.dirname(os.path.abspath(path)), os.path.basename(path))

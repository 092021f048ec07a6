"""Binding to Tokyo Cabinet's table database API (``tctdb*``) over ctypes.

Status
    Engine: Tokyo Cabinet 1.4.48 (Debian package ``libtokyocabinet9``). Dependencies: none
    beyond the shared library, loaded by soname. No PyPI binding works on Python 3.11 (see
    ``shared/notes/tokyo.md``), so the project carries this one. Private module: the backend
    in this package is its only intended user.

Why ctypes and not cffi
    cffi is not a dependency of pymodels, and its ABI mode would add one for a small gain.
    Measured here (100k records of 6 columns, one transaction, no index; same serialisation
    tricks in both): put 146-152k/s with ctypes vs 148k/s with cffi ABI, get 182-188k/s vs
    205k/s. cffi API mode is faster still but needs a compiler and headers at install time.
    What matters is the *number* of foreign calls, so the binding batches them: a record is
    serialised in Python and handed over with one ``tcmapload`` call (instead of ``tcmapnew``
    plus one ``tcmapput`` per column: 92k/s), and records and key lists come back with one
    ``tcmapdump`` / ``tclistdump`` call parsed in Python (instead of one call per column or
    key: 98k/s for get). Queries run inside the library at C speed either way.

Memory ownership
    Every pointer the library hands over for us to free (handles, queries, TCMAPs, TCLISTs,
    malloc'ed buffers) is declared ``c_void_p``, recorded in a process-wide ledger when it
    arrives and removed from it just before it is freed, always in a ``finally`` block.
    :func:`live_pointers` reports the ledger's size so tests can assert that a workload
    leaked nothing. Values are copied with explicit lengths, so NUL and 0xFF bytes survive.

Threads
    Every handle gets ``tctdbsetmutex`` before ``tctdbopen``; ctypes releases the GIL during
    calls, so threads really run inside the library at the same time. Tokyo Cabinet refuses a
    second open of the same file in one process ("threading error"), so :meth:`TableDB.open`
    goes through a process-wide registry that shares one open handle per real path, reference
    counted: the last :meth:`TableDB.close` closes the file.

Known limits (Tokyo Cabinet behaviour the caller must respect)
    - An empty primary key makes the library ``abort()`` the process (a C assertion); the
      binding refuses it with ``ValueError`` first. An empty column name fails the put.
    - Transactions belong to the handle, not to a thread: while one is open, writes from any
      thread sharing the handle join it (and are undone by an abort). A second ``tranbegin`` in
      the same thread would hang forever inside the library; the binding raises instead, and
      makes other threads wait on a lock rather than the library's sleep-polling loop.
    - The record iterator (``iterinit``/``iternext``) is one per handle, so it is shared by
      every user of the file in this process; prefer :meth:`TableDB.keys` (a snapshot).
    - Column names and condition expressions are C strings: they may not contain NUL.
    - Numbers are compared by NUM* conditions and orders as decimal text. Records lacking
      the order column come last in both directions; full-text (FTS*) matching folds case
      and accents; ``tctdbqrysearch`` reports errors as an empty result, not a failure.
    - Indexes live in separate files next to the database (``<path>.idx.<col>.<lex|dec|tok|
      qgr>``), found again on open by that name: ``copy`` does not copy them, and removing
      a database means removing them too.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import enum
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from .._tokyo._format import (  # shared with the Tyrant backend
    VNUM1,
    Cond,
    IndexType,
    Order,
    SetOp,
    _dump_map,
    _parse_map,
    parse_list,
    parse_map,
    read_vnum,
    vnum,
)

__all__ = [
    "VNUM1",
    "Cond",
    "ErrorCode",
    "IndexType",
    "OpenMode",
    "Order",
    "Query",
    "SetOp",
    "TCError",
    "TableDB",
    "TokyoCabinetUnavailable",
    "TuneOpt",
    "library_version",
    "live_pointer_kinds",
    "live_pointers",
    "metasearch",
    "open_handles",
    "parse_map",
    "read_vnum",
    "search_blocks",
    "vnum",
]

INSTALL_HINT: Final = "apt-get install libtokyocabinet9"

_T = TypeVar("_T")

#: Header flags (byte 33 of the file, ``tctdbflags``): set while a writer has the file
#: open (cleared by a clean close), and once a fatal error (I/O, a damaged record) was met.
FLAG_OPEN: Final = 1
FLAG_FATAL: Final = 2
#: Offset of the flag byte in the file header, and the header's size.
FLAGS_OFFSET: Final = 33
HEADER_SIZE: Final = 256


class TokyoCabinetUnavailable(ImportError):
    """The Tokyo Cabinet shared library could not be loaded (or lacks a needed symbol)."""


# --------------------------------------------------------------------------------------------
# Constants, mirroring tctdb.h / tcutil.h of Tokyo Cabinet 1.4.48.
# --------------------------------------------------------------------------------------------


class OpenMode(enum.IntFlag):
    """Open modes for :meth:`TableDB.open` (``TDBO*``)."""

    READER = 1 << 0  # open as a reader
    WRITER = 1 << 1  # open as a writer
    CREAT = 1 << 2  # writer: create the file if missing
    TRUNC = 1 << 3  # writer: truncate the file
    NOLCK = 1 << 4  # open without file locking (no consistency guarantee)
    LCKNB = 1 << 5  # fail at once with a lock error instead of waiting for the lock
    TSYNC = 1 << 6  # synchronize every transaction to the device


class TuneOpt(enum.IntFlag):
    """Tuning options for :meth:`TableDB.tune` (``TDBT*``)."""

    LARGE = 1 << 0  # 64-bit bucket array (files over 2 GB)
    DEFLATE = 1 << 1  # compress each page with Deflate
    BZIP = 1 << 2  # compress each record with BZIP2
    TCBS = 1 << 3  # compress each page with TCBS
    EXCODEC = 1 << 4  # compress with outer functions (not usable from here)


class ErrorCode(enum.IntEnum):
    """Error codes returned by ``tctdbecode`` (``TCE*`` in tcutil.h)."""

    SUCCESS = 0
    THREAD = 1
    INVALID = 2
    NOFILE = 3
    NOPERM = 4
    META = 5
    RHEAD = 6
    OPEN = 7
    CLOSE = 8
    TRUNC = 9
    SYNC = 10
    STAT = 11
    SEEK = 12
    READ = 13
    WRITE = 14
    MMAP = 15
    LOCK = 16
    UNLINK = 17
    RENAME = 18
    MKDIR = 19
    RMDIR = 20
    KEEP = 21
    NOREC = 22
    MISC = 9999


class TCError(Exception):
    """A Tokyo Cabinet call failed.

    Attributes:
        ecode: the library's error code (compare with :class:`ErrorCode`).
        message: the library's text for it (``tctdberrmsg``) or the binding's own reason.
        path: the database file concerned, if known.
        operation: the name of the failed call.
    """

    def __init__(self, ecode: int, message: str, path: str | None, operation: str) -> None:
        self.ecode = ecode
        self.message = message
        self.path = path
        self.operation = operation
        where = f" on {path}" if path else ""
        super().__init__(f"{operation}{where}: {message} (ecode {ecode})")


# --------------------------------------------------------------------------------------------
# Loading the library and declaring every function used.
# --------------------------------------------------------------------------------------------


def _load_library() -> ctypes.CDLL:
    # By soname, so only the runtime package is needed (no -dev package, no compiler).
    candidates = [ctypes.util.find_library("tokyocabinet"), "libtokyocabinet.so.9"]
    errors: list[str] = []
    for name in candidates:
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
    detail = "; ".join(errors) or "not found by ctypes.util.find_library"
    raise TokyoCabinetUnavailable(
        f"the Tokyo Cabinet library (libtokyocabinet.so.9) cannot be loaded ({detail}); "
        f"install it with: {INSTALL_HINT}"
    )


_lib = _load_library()

_P = ctypes.c_void_p  # every TC object pointer, owned or not
_B = ctypes.c_char_p  # input buffers (lengths always passed explicitly)
_I = ctypes.c_int
_IP = ctypes.POINTER(ctypes.c_int)
_BOOL = ctypes.c_bool


def _fn(name: str, restype: Any, *argtypes: Any) -> Any:
    try:
        func = getattr(_lib, name)
    except AttributeError as exc:
        raise TokyoCabinetUnavailable(
            f"the loaded Tokyo Cabinet library lacks {name}; it needs version 1.4.48 "
            f"({INSTALL_HINT})"
        ) from exc
    func.restype = restype
    func.argtypes = list(argtypes)
    return func


# Utilities (tcutil.h). Borrowed pointers (tclistval, tcmapget...) are never used: the
# dump/load functions move whole containers in one call.
_tcfree = _fn("tcfree", None, _P)
_tcmapload = _fn("tcmapload", _P, _B, _I)
_tcmapdump = _fn("tcmapdump", _P, _P, _IP)
_tcmapdel = _fn("tcmapdel", None, _P)
_tclistnum = _fn("tclistnum", _I, _P)
_tclistdump = _fn("tclistdump", _P, _P, _IP)
_tclistdel = _fn("tclistdel", None, _P)

# Table database (tctdb.h).
_tctdberrmsg = _fn("tctdberrmsg", ctypes.c_char_p, _I)  # static string: borrowed
_tctdbnew = _fn("tctdbnew", _P)
_tctdbdel = _fn("tctdbdel", None, _P)
_tctdbecode = _fn("tctdbecode", _I, _P)
_tctdbopaque = _fn("tctdbopaque", _P, _P)
_tctdbflags = _fn("tctdbflags", ctypes.c_uint8, _P)
_tctdbsetmutex = _fn("tctdbsetmutex", _BOOL, _P)
_tctdbtune = _fn(
    "tctdbtune", _BOOL, _P, ctypes.c_int64, ctypes.c_int8, ctypes.c_int8, ctypes.c_uint8
)
_tctdbsetcache = _fn("tctdbsetcache", _BOOL, _P, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32)
_tctdbsetxmsiz = _fn("tctdbsetxmsiz", _BOOL, _P, ctypes.c_int64)
_tctdbopen = _fn("tctdbopen", _BOOL, _P, _B, _I)
_tctdbclose = _fn("tctdbclose", _BOOL, _P)
_tctdbput = _fn("tctdbput", _BOOL, _P, _B, _I, _P)
_tctdbputkeep = _fn("tctdbputkeep", _BOOL, _P, _B, _I, _P)
_tctdbputcat = _fn("tctdbputcat", _BOOL, _P, _B, _I, _P)
_tctdbout = _fn("tctdbout", _BOOL, _P, _B, _I)
_tctdbget = _fn("tctdbget", _P, _P, _B, _I)
_tctdbget4 = _fn("tctdbget4", _P, _P, _B, _I, _B, _I, _IP)
_tctdbvsiz = _fn("tctdbvsiz", _I, _P, _B, _I)
_tctdbiterinit = _fn("tctdbiterinit", _BOOL, _P)
_tctdbiternext = _fn("tctdbiternext", _P, _P, _IP)
_tctdbfwmkeys = _fn("tctdbfwmkeys", _P, _P, _B, _I, _I)
_tctdbaddint = _fn("tctdbaddint", _I, _P, _B, _I, _I)
_tctdbadddouble = _fn("tctdbadddouble", ctypes.c_double, _P, _B, _I, ctypes.c_double)
_tctdbsync = _fn("tctdbsync", _BOOL, _P)
_tctdboptimize = _fn(
    "tctdboptimize", _BOOL, _P, ctypes.c_int64, ctypes.c_int8, ctypes.c_int8, ctypes.c_uint8
)
_tctdbvanish = _fn("tctdbvanish", _BOOL, _P)
_tctdbcopy = _fn("tctdbcopy", _BOOL, _P, _B)
_tctdbtranbegin = _fn("tctdbtranbegin", _BOOL, _P)
_tctdbtrancommit = _fn("tctdbtrancommit", _BOOL, _P)
_tctdbtranabort = _fn("tctdbtranabort", _BOOL, _P)
# 64-bit results must be declared, or ctypes would truncate them to a C int.
_tctdbrnum = _fn("tctdbrnum", ctypes.c_uint64, _P)
_tctdbfsiz = _fn("tctdbfsiz", ctypes.c_uint64, _P)
_tctdbsetindex = _fn("tctdbsetindex", _BOOL, _P, _B, _I)
_tctdbgenuid = _fn("tctdbgenuid", ctypes.c_int64, _P)
_tctdbqrynew = _fn("tctdbqrynew", _P, _P)
_tctdbqrydel = _fn("tctdbqrydel", None, _P)
_tctdbqryaddcond = _fn("tctdbqryaddcond", None, _P, _B, _I, _B)
_tctdbqrysetorder = _fn("tctdbqrysetorder", None, _P, _B, _I)
_tctdbqrysetlimit = _fn("tctdbqrysetlimit", None, _P, _I, _I)
_tctdbqrysearch = _fn("tctdbqrysearch", _P, _P)
_tctdbqrysearchout = _fn("tctdbqrysearchout", _BOOL, _P)
_tctdbqrycount = _fn("tctdbqrycount", _I, _P)
_tctdbqryhint = _fn("tctdbqryhint", ctypes.c_char_p, _P)  # reused buffer: borrowed
_tctdbmetasearch = _fn("tctdbmetasearch", _P, ctypes.POINTER(_P), _I, _I)

# A table's records live in its internal hash database (``TCTDB.hdb``), each value the
# ``tcmapdump`` of its columns: :meth:`TableDB.copy_records` moves them as they are.
_tcxstrnew = _fn("tcxstrnew", _P)
_tcxstrdel = _fn("tcxstrdel", None, _P)
_tchdbiternext3 = _fn("tchdbiternext3", _BOOL, _P, _P, _P)
_tchdbput = _fn("tchdbput", _BOOL, _P, _P, _I, _P, _I)


class _TCTDBHead(ctypes.Structure):
    """The first fields of ``TCTDB`` as tctdb.h (1.4.48) declares it, a public struct."""

    _fields_ = [("mmtx", _P), ("hdb", _P)]


class _TCXSTR(ctypes.Structure):
    """``TCXSTR`` as tcutil.h declares it: a growing buffer and its size."""

    _fields_ = [("ptr", _P), ("size", _I), ("asize", _I)]


#: Bytes a hash database record takes beyond its key and value, at most: its header
#: (magic, hash, two bucket links, sizes as variable-length numbers) and its padding to
#: the default record alignment (16 bytes).
_RECORD_OVERHEAD: Final = 64

_string_at = ctypes.string_at
_c_int = ctypes.c_int
_INT_MIN: Final = -(2**31)


def library_version() -> str:
    """The loaded library's version string (``tcversion``), e.g. ``"1.4.48"``."""
    raw = ctypes.c_char_p.in_dll(_lib, "tcversion").value
    return raw.decode("ascii") if raw else ""


# --------------------------------------------------------------------------------------------
# Owned-pointer ledger.
# --------------------------------------------------------------------------------------------

# Address -> kind of every pointer we own and have not freed yet. Single dict stores and
# deletes are atomic under the GIL, so threads need no lock. An entry is removed *before* the
# C free: once freed, the address may be handed to another thread at once and recorded again.
_LIVE: dict[int, str] = {}


def live_pointers() -> int:
    """How many library-allocated pointers the binding currently owns (0 when all is freed)."""
    return len(_LIVE)


def live_pointer_kinds() -> dict[str, int]:
    """Owned pointers by kind (``"TCTDB"``, ``"TDBQRY"``, ``"TCMAP"``, ``"TCLIST"``, ``"TCXSTR"``,
    ``"buf"``)."""
    counts: dict[str, int] = {}
    for kind in list(_LIVE.values()):
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _take_list(lst: int | None) -> list[bytes]:
    """Copy an owned TCLIST out and free it (the caller has not recorded it yet)."""
    if not lst:
        return []
    _LIVE[lst] = "TCLIST"
    try:
        size = _c_int()
        buf = _tclistdump(lst, size)
        _LIVE[buf] = "buf"
        try:
            data = _string_at(buf, size.value)
        finally:
            del _LIVE[buf]
            _tcfree(buf)
    finally:
        del _LIVE[lst]
        _tclistdel(lst)
    return parse_list(data)


def _cstr(value: str | bytes, what: str) -> bytes:
    # Column names and expressions cross as C strings: a NUL would silently cut them short.
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if b"\0" in data:
        raise ValueError(f"{what} must not contain NUL bytes: {data!r}")
    return data


def _check_pk(pk: bytes) -> None:
    if not pk:
        # An empty key trips an assert() in the library, which aborts the whole process.
        raise ValueError("the primary key must not be empty")


# --------------------------------------------------------------------------------------------
# Handles and the process-wide registry.
# --------------------------------------------------------------------------------------------


class _Handle:
    """One open ``TCTDB*``; shared by every :class:`TableDB` on the same real path."""

    __slots__ = ("before_close", "mode", "path", "ptr", "realpath", "tx_lock", "tx_owner", "users")

    def __init__(self, ptr: int, path: str, realpath: str, mode: int) -> None:
        self.ptr: int | None = ptr
        self.path = path
        self.realpath = realpath
        self.mode = mode
        self.users = 0
        # Transactions belong to the handle; this lock serialises them between threads.
        self.tx_lock = threading.Lock()
        self.tx_owner: int | None = None
        # Called with the pointer right before the last user's tctdbclose (the file's
        # owner uses it to mark the file cleanly closed, see TableDB.on_last_close).
        self.before_close: Callable[[int], None] | None = None


_REGISTRY: dict[str, _Handle] = {}
_REGISTRY_LOCK = threading.Lock()


def _forget_handles_after_fork() -> None:
    """In a forked child: the parent's open handles are the parent's.

    Using one would write through the parent's memory map and file descriptor without
    its file lock (fcntl locks are not inherited), and closing one would rewrite the
    parent's header. So the child forgets them: its old TableDB objects fail as closed,
    and opening the file again goes through Tokyo's lock like any other process (the
    parent still holds it: LCKNB fails, or the open waits).
    """
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()  # another thread may have held it at the fork
    for handle in _REGISTRY.values():
        handle.ptr = None
        handle.before_close = None
        handle.tx_lock = threading.Lock()
        handle.tx_owner = None
    _REGISTRY.clear()
    for db in list(_OPEN_DBS):
        db._ptr = None
        db._handle = None
    _OPEN_DBS.clear()


#: Every open TableDB (their cached pointers are cleared in a forked child).
_OPEN_DBS: weakref.WeakSet[TableDB] = weakref.WeakSet()

os.register_at_fork(after_in_child=_forget_handles_after_fork)


def open_handles() -> dict[str, int]:
    """Real paths of the files open in this process and how many :class:`TableDB` use each."""
    with _REGISTRY_LOCK:
        return {path: handle.users for path, handle in _REGISTRY.items()}


def _acquire(
    path: str,
    mode: int,
    tune: tuple[int, int, int, int] | None,
    cache: tuple[int, int, int] | None,
    xmsiz: int | None,
) -> tuple[_Handle, bytes | None]:
    """The shared handle of ``path``, and the file's header as it was just before this
    call opened the file (None: the file was already open in this process)."""
    realpath = os.path.realpath(path)
    with _REGISTRY_LOCK:
        handle = _REGISTRY.get(realpath)
        if handle is not None:
            if mode & OpenMode.WRITER and not handle.mode & OpenMode.WRITER:
                raise TCError(
                    int(ErrorCode.INVALID),
                    "already open read-only in this process; close it before opening as a writer",
                    path,
                    "tctdbopen",
                )
            if mode & OpenMode.TRUNC:
                raise TCError(
                    int(ErrorCode.INVALID),
                    f"cannot truncate: already open in this process ({handle.users} users)",
                    path,
                    "tctdbopen",
                )
            handle.users += 1
            return handle, None
        # Read before Tokyo rewrites its flags on open. Only here, with the file open
        # nowhere in this process: closing any descriptor of a file drops every fcntl
        # lock the process holds on it, Tokyo's included.
        try:
            with open(path, "rb") as f:
                header = f.read(HEADER_SIZE)
        except OSError:
            header = b""
        ptr = _tctdbnew()
        if not ptr:
            raise MemoryError("tctdbnew returned NULL")
        _LIVE[ptr] = "TCTDB"
        try:
            # The mutex must be set before the open; without it, concurrent calls on one
            # handle corrupt records ("invalid record header").
            ok = bool(_tctdbsetmutex(ptr))
            if ok and tune is not None:
                ok = bool(_tctdbtune(ptr, *tune))
            if ok and cache is not None:
                ok = bool(_tctdbsetcache(ptr, *cache))
            if ok and xmsiz is not None:
                ok = bool(_tctdbsetxmsiz(ptr, xmsiz))
            if ok:
                ok = bool(_tctdbopen(ptr, os.fsencode(path), int(mode)))
            if not ok:
                raise _handle_error(ptr, path, "tctdbopen")
        except BaseException:
            del _LIVE[ptr]
            _tctdbdel(ptr)
            raise
        handle = _Handle(ptr, path, realpath, int(mode))
        handle.users = 1
        _REGISTRY[realpath] = handle
        return handle, header


def _release(handle: _Handle) -> None:
    with _REGISTRY_LOCK:
        handle.users -= 1
        if handle.users > 0:
            return
        if _REGISTRY.get(handle.realpath) is handle:
            del _REGISTRY[handle.realpath]
        ptr = handle.ptr
        handle.ptr = None
    if not ptr:
        return
    try:
        if handle.before_close is not None:
            handle.before_close(ptr)
        ok = bool(_tctdbclose(ptr))
        err = None if ok else _handle_error(ptr, handle.path, "tctdbclose")
    finally:
        del _LIVE[ptr]
        _tctdbdel(ptr)
    if err is not None:
        raise err


def _handle_error(ptr: int, path: str | None, operation: str) -> TCError:
    # The error code is per thread once the handle has a mutex, so this reads our own.
    code = int(_tctdbecode(ptr))
    raw = _tctdberrmsg(code)
    return TCError(code, raw.decode("utf-8", "replace") if raw else "", path, operation)


def _release_quietly(handle: _Handle) -> None:
    # Finaliser path (garbage collection or interpreter exit): nobody can catch an error here.
    with contextlib.suppress(TCError):
        _release(handle)


# --------------------------------------------------------------------------------------------
# Public classes.
# --------------------------------------------------------------------------------------------


class TableDB:
    """A Tokyo Cabinet table database file.

    Records are a primary key (non-empty bytes) and a mapping of column name to value (bytes;
    values are binary-safe). Set tuning with :meth:`tune`, :meth:`setcache` and
    :meth:`setxmsiz` before :meth:`open`; they only take effect if this object is the first
    to open the file in the process (tune's parameters only matter when the file is created).

    Several ``TableDB`` objects on the same file share one library handle; each must be
    closed (or used as a context manager). Methods are safe to call from several threads.
    """

    def __init__(self) -> None:
        self._handle: _Handle | None = None
        self._ptr: int | None = None  # cached handle.ptr for the hot paths
        self._path: str | None = None
        self._tune: tuple[int, int, int, int] | None = None
        self._cache: tuple[int, int, int] | None = None
        self._xmsiz: int | None = None
        self._finalizer: weakref.finalize[[_Handle], TableDB] | None = None
        #: Whether :meth:`open` opened the file (False: it joined a handle already open).
        self.opened_file = False
        #: When it did: the file's first :data:`HEADER_SIZE` bytes just before (empty for
        #: a new file), which show how the last writer left it (:data:`FLAG_OPEN`).
        self.header_before = b""

    # -- lifecycle -----------------------------------------------------------------------

    def tune(self, bnum: int = 0, apow: int = -1, fpow: int = -1, opts: int = 0) -> None:
        """Set ``tctdbtune`` parameters for when this object creates the file.

        ``bnum``: bucket count (0 or less: default 131071); ``apow``/``fpow``: record alignment
        and free-block pool as powers of 2 (negative: default); ``opts``: :class:`TuneOpt`.
        """
        self._check_unopened()
        self._tune = (bnum, apow, fpow, int(opts))

    def setcache(self, rcnum: int = 0, lcnum: int = 0, ncnum: int = 0) -> None:
        """Set ``tctdbsetcache`` (record, index-leaf and index-node caches; 0: default)."""
        self._check_unopened()
        self._cache = (rcnum, lcnum, ncnum)

    def setxmsiz(self, xmsiz: int) -> None:
        """Set ``tctdbsetxmsiz`` (size of the memory-mapped region; 0 or less: default 64 MB)."""
        self._check_unopened()
        self._xmsiz = xmsiz

    def open(
        self,
        path: str | os.PathLike[str],
        mode: int = OpenMode.WRITER | OpenMode.CREAT,
    ) -> Self:
        """Open ``path`` with ``mode`` (:class:`OpenMode` flags) and return ``self``.

        If the file is already open in this process, its handle is shared: a writer request on
        a handle opened read-only, or ``TRUNC`` on an open file, raise :class:`TCError`.
        Another process holding the lock makes this wait, or fail at once with
        ``ErrorCode.LOCK`` when ``mode`` has ``LCKNB``.
        """
        self._check_unopened()
        if not mode & (OpenMode.READER | OpenMode.WRITER):
            raise ValueError("mode needs OpenMode.READER or OpenMode.WRITER")
        fspath = os.fspath(path)
        if "\0" in fspath:
            raise ValueError("path must not contain NUL")
        handle, header = _acquire(fspath, int(mode), self._tune, self._cache, self._xmsiz)
        self.opened_file = header is not None
        self.header_before = header or b""
        self._handle = handle
        self._ptr = handle.ptr
        self._path = fspath
        _OPEN_DBS.add(self)
        # Releases the shared handle if this object is dropped or the interpreter exits
        # without close(): an unclosed writer can leave the file needing repair.
        self._finalizer = weakref.finalize(self, _release_quietly, handle)
        return self

    def close(self) -> None:
        """Release this object's use of the file; the last user closes it. Idempotent."""
        handle = self._handle
        if handle is None:
            return
        self._handle = None
        self._ptr = None
        _OPEN_DBS.discard(self)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if handle.tx_owner == threading.get_ident() and handle.ptr:
            # Closing mid-transaction aborts it (as tctdbclose itself would); leaving it open
            # on a still-shared handle would block every later tranbegin.
            _tctdbtranabort(handle.ptr)
            handle.tx_owner = None
            handle.tx_lock.release()
        _release(handle)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def on_last_close(self, hook: Callable[[int], None] | None) -> None:
        """Call ``hook(pointer)`` right before the file's last user closes it (after any
        transaction is aborted); ``None`` removes it. One hook per open file."""
        if self._handle is None:
            raise TCError(int(ErrorCode.INVALID), "database is not open", self._path, "TableDB")
        self._handle.before_close = hook

    def flags(self) -> int:
        """The file header's flag byte (``tctdbflags``): 1 open for writing, 2 a fatal
        error happened (see :data:`FLAG_OPEN`, :data:`FLAG_FATAL`)."""
        return int(_tctdbflags(self._h()))

    def ecode(self) -> int:
        """This thread's last error code on the handle (sticky once a fatal error, such
        as a damaged record, has been met: see :meth:`flags`)."""
        return int(_tctdbecode(self._h()))

    @property
    def closed(self) -> bool:
        """Whether this object is not (or no longer) open."""
        return self._handle is None

    @property
    def path(self) -> str | None:
        """The path given to :meth:`open` (None before)."""
        return self._path

    @property
    def mode(self) -> int:
        """The mode the shared handle was opened with (0 when closed)."""
        return self._handle.mode if self._handle else 0

    def _check_unopened(self) -> None:
        if self._handle is not None:
            raise TCError(int(ErrorCode.INVALID), "already open", self._path, "TableDB")

    def opaque(self) -> int | None:
        """The address of the file's 128-byte user area (None: the file has none)."""
        area = _tctdbopaque(self._h())
        return int(area) if area else None

    def _h(self) -> int:
        ptr = self._ptr
        if not ptr:
            raise TCError(int(ErrorCode.INVALID), "database is not open", self._path, "TableDB")
        return ptr

    def _error(self, operation: str) -> TCError:
        return _handle_error(self._h(), self._path, operation)

    # -- records -------------------------------------------------------------------------

    def _store(
        self, func: Any, operation: str, pk: bytes, cols: Mapping[bytes, bytes] | bytes
    ) -> bool:
        h = self._h()
        if not pk:
            _check_pk(pk)
        data = cols if isinstance(cols, bytes) else _dump_map(cols)
        tcmap = _tcmapload(data, len(data))
        _LIVE[tcmap] = "TCMAP"
        try:
            ok = bool(func(h, pk, len(pk), tcmap))
        finally:
            del _LIVE[tcmap]
            _tcmapdel(tcmap)
        if ok:
            return True
        err = self._error(operation)
        if err.ecode == ErrorCode.KEEP and func is _tctdbputkeep:
            return False
        raise err

    def put(self, pk: bytes, cols: Mapping[bytes, bytes]) -> None:
        """Store a record, replacing any record with the same primary key (``tctdbput``)."""
        self._store(_tctdbput, "tctdbput", pk, cols)

    def putkeep(self, pk: bytes, cols: Mapping[bytes, bytes]) -> bool:
        """Store a new record; return False, changing nothing, if ``pk`` exists."""
        return self._store(_tctdbputkeep, "tctdbputkeep", pk, cols)

    def putcat(self, pk: bytes, cols: Mapping[bytes, bytes]) -> None:
        """Add columns to a record (``tctdbputcat``): existing columns keep their old value."""
        self._store(_tctdbputcat, "tctdbputcat", pk, cols)

    def putdump(self, pk: bytes, dump: bytes, *, keep: bool = False) -> bool:
        """:meth:`put` (or with ``keep`` :meth:`putkeep`) of a record already in
        ``tcmapdump`` form, as :meth:`getdump` returns it.

        For callers that serialise records themselves: no column mapping is built and
        walked per record. Column names must not be empty (Tokyo refuses the put).
        """
        if keep:
            return self._store(_tctdbputkeep, "tctdbputkeep", pk, dump)
        return self._store(_tctdbput, "tctdbput", pk, dump)

    def get(self, pk: bytes) -> dict[bytes, bytes] | None:
        """The record's columns, or None if there is no record with this primary key."""
        dump = self.getdump(pk)
        return None if dump is None else _parse_map(dump)

    def getdump(self, pk: bytes) -> bytes | None:
        """The record in ``tcmapdump`` form (size-prefixed column names and values), or None.

        One foreign call copies the whole record out (walking the TCMAP from Python
        costs a call per column); :meth:`get` parses it into a dict.
        """
        h = self._h()
        if not pk:
            _check_pk(pk)
        tcmap = _tctdbget(h, pk, len(pk))
        if not tcmap:
            err = self._error("tctdbget")
            if err.ecode == ErrorCode.NOREC:
                return None
            raise err
        _LIVE[tcmap] = "TCMAP"
        try:
            size = _c_int()
            buf = _tcmapdump(tcmap, size)
            _LIVE[buf] = "buf"
            try:
                return _string_at(buf, size.value)
            finally:
                del _LIVE[buf]
                _tcfree(buf)
        finally:
            del _LIVE[tcmap]
            _tcmapdel(tcmap)

    def getcol(self, pk: bytes, col: bytes) -> bytes | None:
        """One column's value (``tctdbget4``), or None if the record or column is missing."""
        h = self._h()
        _check_pk(pk)
        size = _c_int()
        buf = _tctdbget4(h, pk, len(pk), col, len(col), size)
        if not buf:
            err = self._error("tctdbget4")
            if err.ecode == ErrorCode.NOREC:
                return None
            raise err
        _LIVE[buf] = "buf"
        try:
            return _string_at(buf, size.value)
        finally:
            del _LIVE[buf]
            _tcfree(buf)

    def out(self, pk: bytes) -> bool:
        """Remove a record; return False if there was none."""
        h = self._h()
        _check_pk(pk)
        if _tctdbout(h, pk, len(pk)):
            return True
        err = self._error("tctdbout")
        if err.ecode == ErrorCode.NOREC:
            return False
        raise err

    def vsiz(self, pk: bytes) -> int:
        """Size of the record in its NUL-joined form (``tctdbvsiz``), -1 if missing."""
        h = self._h()
        _check_pk(pk)
        size = int(_tctdbvsiz(h, pk, len(pk)))
        if size < 0:
            err = self._error("tctdbvsiz")
            if err.ecode != ErrorCode.NOREC:
                raise err
        return size

    def addint(self, pk: bytes, num: int) -> int:
        """Add to the integer in column ``_num`` (created with the record if missing)."""
        h = self._h()
        _check_pk(pk)
        result = int(_tctdbaddint(h, pk, len(pk), num))
        if result == _INT_MIN:
            raise self._error("tctdbaddint")
        return result

    def adddouble(self, pk: bytes, num: float) -> float:
        """Add to the real number in column ``_num`` (created with the record if missing)."""
        h = self._h()
        _check_pk(pk)
        result = float(_tctdbadddouble(h, pk, len(pk), num))
        if result != result:  # NaN is the failure value
            raise self._error("tctdbadddouble")
        return result

    # -- keys ----------------------------------------------------------------------------

    def iterinit(self) -> None:
        """Reset the handle's record iterator (one per handle, shared by all its users)."""
        if not _tctdbiterinit(self._h()):
            raise self._error("tctdbiterinit")

    def iternext(self) -> bytes | None:
        """The next primary key from the handle's iterator, or None at the end."""
        h = self._h()
        size = _c_int()
        buf = _tctdbiternext(h, size)
        if not buf:
            err = self._error("tctdbiternext")
            if err.ecode == ErrorCode.NOREC:
                return None
            raise err
        _LIVE[buf] = "buf"
        try:
            return _string_at(buf, size.value)
        finally:
            del _LIVE[buf]
            _tcfree(buf)

    def iterkeys(self) -> Iterator[bytes]:
        """Iterate primary keys with the handle's iterator (not for concurrent use)."""
        self.iterinit()
        while (key := self.iternext()) is not None:
            yield key

    def copy_records(
        self, target: TableDB, count: int, take: Callable[[int], object] | None = None
    ) -> int:
        """Copy the next ``count`` records of this handle's iterator (started with
        :meth:`iterinit`) into ``target`` as they are stored; return how many were
        copied (fewer than ``count``: the iterator reached the end).

        For a private scratch table without indexes: each record goes from this table's
        internal hash database straight into ``target``'s (``tchdbiternext3`` and
        ``tchdbput``, decompressed on the way), two foreign calls a record and no copy
        through Python, so ``target``'s indexes, if it had any, would miss them, and a
        record already in ``target`` is replaced. ``take(nbytes)`` is called before each
        record is written, with its size and some room for Tokyo's record header (a
        free-space check: it may raise, and then nothing more is written).
        """
        source = _TCTDBHead.from_address(self._h()).hdb
        dest = _TCTDBHead.from_address(target._h()).hdb
        kx = _tcxstrnew()
        if not kx:
            raise MemoryError("tcxstrnew returned NULL")
        _LIVE[kx] = "TCXSTR"
        try:
            vx = _tcxstrnew()
            if not vx:
                raise MemoryError("tcxstrnew returned NULL")
            _LIVE[vx] = "TCXSTR"
            try:
                key = _TCXSTR.from_address(kx)
                value = _TCXSTR.from_address(vx)
                copied = 0
                while copied < count:
                    if not _tchdbiternext3(source, kx, vx):
                        err = self._error("tchdbiternext3")
                        if err.ecode == ErrorCode.NOREC:
                            break
                        raise err
                    if take is not None:
                        take(key.size + value.size + _RECORD_OVERHEAD)
                    if not _tchdbput(dest, key.ptr, key.size, value.ptr, value.size):
                        raise target._error("tchdbput")
                    copied += 1
                return copied
            finally:
                del _LIVE[vx]
                _tcxstrdel(vx)
        finally:
            del _LIVE[kx]
            _tcxstrdel(kx)

    def fwmkeys(self, prefix: bytes, max: int = -1) -> list[bytes]:
        """Primary keys starting with ``prefix`` (at most ``max``; negative: all)."""
        return _take_list(_tctdbfwmkeys(self._h(), prefix, len(prefix), max))

    def keys(self) -> list[bytes]:
        """A snapshot of every primary key (unaffected by other users of the iterator)."""
        return self.fwmkeys(b"")

    # -- whole database ------------------------------------------------------------------

    def rnum(self) -> int:
        """Number of records."""
        return int(_tctdbrnum(self._h()))

    def fsiz(self) -> int:
        """Size of the database file in bytes (index files not included)."""
        return int(_tctdbfsiz(self._h()))

    def vanish(self) -> None:
        """Remove every record (indexes are kept)."""
        if not _tctdbvanish(self._h()):
            raise self._error("tctdbvanish")

    def sync(self) -> None:
        """Write buffered changes to the device."""
        if not _tctdbsync(self._h()):
            raise self._error("tctdbsync")

    def optimize(self, bnum: int = 0, apow: int = -1, fpow: int = -1, opts: int = 0xFF) -> None:
        """Rebuild the file (``tctdboptimize``); ``opts`` 0xFF keeps the current options."""
        if not _tctdboptimize(self._h(), bnum, apow, fpow, opts):
            raise self._error("tctdboptimize")

    def copy(self, path: str | os.PathLike[str]) -> None:
        """Copy the database file to ``path`` (index files are not copied)."""
        if not _tctdbcopy(self._h(), os.fsencode(path)):
            raise self._error("tctdbcopy")

    def setindex(self, col: str | bytes, itype: int, *, keep: bool = False) -> bool:
        """Create (or with ``OPT``/``VOID`` optimise/remove) an index on column ``col``.

        ``col`` ``""`` is the primary key. With ``keep`` (or ``IndexType.KEEP`` in ``itype``)
        an existing index is left alone and False is returned.
        """
        name = _cstr(col, "column name")
        if keep:
            itype |= IndexType.KEEP
        if _tctdbsetindex(self._h(), name, int(itype)):
            return True
        err = self._error("tctdbsetindex")
        if itype & IndexType.KEEP and err.ecode == ErrorCode.KEEP:
            return False
        raise err

    def genuid(self) -> int:
        """A new unique id (1, 2, ...). It ignores existing keys: do not mix with other keys."""
        uid = int(_tctdbgenuid(self._h()))
        if uid < 0:
            raise self._error("tctdbgenuid")
        return uid

    # -- transactions --------------------------------------------------------------------

    def tranbegin(self) -> None:
        """Begin a transaction on the shared handle; other threads' tranbegin waits.

        While it is open, writes through this handle from *any* thread are part of it.
        """
        handle = self._handle
        h = self._h()
        assert handle is not None
        me = threading.get_ident()
        if handle.tx_owner == me:
            # The library would spin forever waiting for itself.
            raise TCError(
                int(ErrorCode.INVALID), "transaction already open", self._path, "tctdbtranbegin"
            )
        # Waiting here (GIL released) instead of in the library's sleep-polling loop wakes
        # the next transaction as soon as the current one ends.
        handle.tx_lock.acquire()
        try:
            if not _tctdbtranbegin(h):
                raise self._error("tctdbtranbegin")
        except BaseException:
            handle.tx_lock.release()
            raise
        handle.tx_owner = me

    def _tranend(self, func: Any, operation: str) -> None:
        handle = self._handle
        h = self._h()
        assert handle is not None
        if handle.tx_owner != threading.get_ident():
            raise TCError(
                int(ErrorCode.INVALID),
                "no transaction open by this thread",
                self._path,
                operation,
            )
        try:
            if not func(h):
                raise self._error(operation)
        finally:
            handle.tx_owner = None
            handle.tx_lock.release()

    def trancommit(self) -> None:
        """Commit the transaction this thread began."""
        self._tranend(_tctdbtrancommit, "tctdbtrancommit")

    def tranabort(self) -> None:
        """Abort the transaction this thread began, undoing its writes."""
        self._tranend(_tctdbtranabort, "tctdbtranabort")

    def transaction(self) -> _Transaction:
        """Context manager: begin; commit on success, abort on an exception."""
        return _Transaction(self)

    def in_transaction(self) -> bool:
        """Whether this thread has a transaction open on the handle."""
        handle = self._handle
        return handle is not None and handle.tx_owner == threading.get_ident()

    def atomically(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``func(*args, **kwargs)`` in a transaction of its own: committed when it returns, aborted
        when it raises. Inside a transaction this thread has open, it simply joins it.

        Tokyo Cabinet writes a record in several steps (the record, the bucket chain, the
        header's count, each index); a process killed between them leaves the file torn.
        In a transaction every region is first copied to the write-ahead log
        (``<path>.wal``, one per index file too), which the next open plays back: a kill
        leaves the state before or after ``func``, never one in between.
        """
        handle = self._handle
        if handle is not None and handle.tx_owner == threading.get_ident():
            return func(*args, **kwargs)
        self.tranbegin()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            try:
                self.tranabort()
            except TCError as abort_error:
                raise abort_error from exc
            raise
        self.trancommit()
        return result

    # -- queries -------------------------------------------------------------------------

    def query(self) -> Query:
        """A new :class:`Query` on this database."""
        return Query(self)


class _Transaction:
    __slots__ = ("_db",)

    def __init__(self, db: TableDB) -> None:
        self._db = db

    def __enter__(self) -> TableDB:
        self._db.tranbegin()
        return self._db

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._db.trancommit()
        else:
            self._db.tranabort()


def _free_query(ptr: int) -> None:
    del _LIVE[ptr]
    _tctdbqrydel(ptr)


class Query:
    """A table query (``TDBQRY``): conditions, one order, a limit; then search.

    Not for concurrent use by several threads (the database itself is). Builder methods
    return ``self``. Free it with :meth:`close` or a ``with`` block (a finaliser frees it
    otherwise). Column names and expressions (str as UTF-8, or bytes) must not contain NUL.
    """

    def __init__(self, db: TableDB) -> None:
        handle = db._handle
        h = db._h()
        ptr = _tctdbqrynew(h)
        if not ptr:
            raise MemoryError("tctdbqrynew returned NULL")
        _LIVE[ptr] = "TDBQRY"
        self._ptr: int | None = ptr
        # The query points into the handle; keep the handle object reachable while we live.
        self._handle = handle
        self._db = db
        self._finalizer = weakref.finalize(self, _free_query, ptr)

    def close(self) -> None:
        """Free the query. Idempotent."""
        self._ptr = None
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _q(self) -> int:
        ptr = self._ptr
        if not ptr:
            raise TCError(int(ErrorCode.INVALID), "query is closed", self._db.path, "Query")
        if self._handle is None or self._handle.ptr is None:
            # Searching after the handle was freed would read freed memory.
            raise TCError(int(ErrorCode.INVALID), "database is closed", self._db.path, "Query")
        return ptr

    def addcond(
        self,
        col: str | bytes,
        op: int,
        expr: str | bytes,
        *,
        negate: bool = False,
        noidx: bool = False,
    ) -> Self:
        """Add a condition: column ``col`` (``""``: primary key), :class:`Cond` ``op``
        (optionally OR-ed with ``Cond.NEGATE``/``Cond.NOIDX``), operand ``expr``."""
        op = int(op)
        if negate:
            op |= Cond.NEGATE
        if noidx:
            op |= Cond.NOIDX
        _tctdbqryaddcond(self._q(), _cstr(col, "column name"), op, _cstr(expr, "expression"))
        return self

    def setorder(self, col: str | bytes, otype: int = Order.STRASC) -> Self:
        """Order results by column ``col`` with :class:`Order` ``otype`` (one order only)."""
        _tctdbqrysetorder(self._q(), _cstr(col, "column name"), int(otype))
        return self

    def setlimit(self, max: int = -1, skip: int = 0) -> Self:
        """Return at most ``max`` keys (negative: no limit) after skipping ``skip``."""
        _tctdbqrysetlimit(self._q(), max, skip)
        return self

    def search(self) -> list[bytes]:
        """Primary keys of the matching records, in order."""
        return _take_list(_tctdbqrysearch(self._q()))

    def searchcount(self) -> int:
        """Run the search and return only the number of keys (nothing copied)."""
        lst = _tctdbqrysearch(self._q())
        if not lst:
            return 0
        _LIVE[lst] = "TCLIST"
        try:
            return int(_tclistnum(lst))
        finally:
            del _LIVE[lst]
            _tclistdel(lst)

    def searchout(self) -> None:
        """Remove every matching record."""
        if not _tctdbqrysearchout(self._q()):
            raise self._db._error("tctdbqrysearchout")

    def count(self) -> int:
        """``tctdbqrycount``: hits of the *last* search, after the limit (0 before one)."""
        return int(_tctdbqrycount(self._q()))

    def hint(self) -> str:
        """The library's account of the last search (e.g. which index it used)."""
        raw = _tctdbqryhint(self._q())
        return raw.decode("utf-8", "replace") if raw else ""

    def metasearch(self, others: Iterable[Query], settype: int = SetOp.UNION) -> list[bytes]:
        """Combine this query with ``others`` (see :func:`metasearch`)."""
        return metasearch([self, *others], settype)


def metasearch(queries: Iterable[Query], settype: int = SetOp.UNION) -> list[bytes]:
    """Combine the results of several queries on one database with :class:`SetOp` ``settype``.

    The first query's order and limit apply to the combined result (not to its own hits);
    the other queries' limits apply to their own hits.
    """
    qs = list(queries)
    if not qs:
        return []
    handle = qs[0]._handle
    if any(q._handle is not handle for q in qs):
        raise ValueError("metasearch needs queries on the same database")
    array = (_P * len(qs))(*[q._q() for q in qs])
    return _take_list(_tctdbmetasearch(array, len(qs), int(settype)))


#: A condition as :func:`search_blocks` takes it: column, :class:`Cond`, operand, negate,
#: noidx (the shape of the table backends' ``TCCond``).
CondTuple = tuple[bytes, int, bytes, bool, bool]

_NEGATE: Final = int(Cond.NEGATE)
_NOIDX: Final = int(Cond.NOIDX)
_UNION: Final = int(SetOp.UNION)


def search_blocks(
    db: TableDB,
    blocks: Sequence[Sequence[CondTuple]],
    order: tuple[bytes, int] | None = None,
    limit: int = -1,
    skip: int = 0,
    *,
    noidx: bool = False,
) -> list[bytes]:
    """Keys of the union of ``blocks`` (each block one query of its conditions, all of
    which must hold), the first query carrying ``order`` (column, :class:`Order`), the
    limit and the skip: what building :class:`Query` objects and :func:`metasearch`
    returns, in one call.

    A query's Python object, its finaliser and per-argument conversions cost more than
    the search itself on a small result; here the queries live only inside this call
    (freed before it returns, whatever happens). ``noidx``: no condition uses an index.
    Columns and operands are bytes without NUL.
    """
    if not blocks:
        return []
    h = db._h()
    ptrs: list[int] = []
    try:
        for block in blocks:
            ptr = _tctdbqrynew(h)
            if not ptr:
                raise MemoryError("tctdbqrynew returned NULL")
            _LIVE[ptr] = "TDBQRY"
            ptrs.append(ptr)
            for col, op, expr, negate, cond_noidx in block:
                if b"\0" in col or b"\0" in expr:
                    raise ValueError(f"conditions must not contain NUL bytes: {col!r} {expr!r}")
                if negate:
                    op |= _NEGATE
                if cond_noidx or noidx:
                    op |= _NOIDX
                _tctdbqryaddcond(ptr, col, op, expr)
        first = ptrs[0]
        if order is not None:
            if b"\0" in order[0]:
                raise ValueError(f"column names must not contain NUL bytes: {order[0]!r}")
            _tctdbqrysetorder(first, order[0], order[1])
        if limit >= 0 or skip:
            _tctdbqrysetlimit(first, limit, skip)
        if len(ptrs) == 1:
            return _take_list(_tctdbqrysearch(first))
        array = (_P * len(ptrs))(*ptrs)
        return _take_list(_tctdbmetasearch(array, len(ptrs), _UNION))
    finally:
        for ptr in ptrs:
            del _LIVE[ptr]
            _tctdbqrydel(ptr)

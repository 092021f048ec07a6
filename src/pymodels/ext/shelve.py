"""shelve backend: a seed backend over the standard library.

Engine: the :mod:`shelve` file format (pickled values in a :mod:`dbm` file) over
one explicitly chosen dbm module (``dbm.gnu``, ``dbm.ndbm``, ``dbm.dumb``, or
``dbm.sqlite3`` on Python 3.13+).
Dependencies: none beyond the standard library (``dbm.gnu`` needs the
interpreter's ``_gdbm`` module: Debian's ``python3-gdbm``).
Suits: small single-process data, scripts, tests. Records are plain pickled
dicts, so ``shelve.open(path)`` alone reads them.
Limits: no indexes; every query scans and filters in Python; no transactions;
one writer at a time (a lock file beside the data, waited on up to
``lock_timeout``).
Durability: a write is on disk once ``close()`` returns; ``dbm.gnu`` (in its
sync mode, the default) also syncs each acknowledged write. Not crash-safe: a
SIGKILL in the middle of a write can damage the file (no dbm module reachable
from Python recovers), so opening a file whose writer never closed it raises
:class:`~pymodels.errors.CorruptData` until the user accepts it. Not safe on a
full disk: a failed write raises a typed error, but ``dbm.ndbm`` can destroy
records written earlier (``features.disk_full_safe`` is False), so a write that
failed part way makes the next opening raise ``CorruptData`` too.
Trust: loading a record builds only the value domain's types; any other class
in a pickle raises ``CorruptData`` and runs nothing.

The module that wrote a file is recorded in the file and checked on every
open: a file is never opened through another dbm module (plain
``shelve.open`` would silently pick whichever module the interpreter has).
"""

from __future__ import annotations

import contextlib
import dbm
import errno
import fcntl
import importlib
import io
import logging
import os
import pickle
import time
import weakref
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import IO, Any, ClassVar, TypeVar
from urllib.parse import parse_qsl, urlsplit

import pydantic

from ..backend import (
    BackendUnavailable,
    BaseQuery,
    BaseSettings,
    BaseStorage,
    ConfigurationError,
    CorruptData,
    Features,
    LockTimeout,
    PyModelsError,
    StorageNotFound,
    file_problem,
    open_failure,
    url_path,
)

__all__ = ["Query", "Settings", "Storage", "features"]

features = Features(
    thread_safe=True,
    fork_safe=False,
    concurrent_processes=False,
    crash_safe=False,
    disk_full_safe=False,
)

log = logging.getLogger(__name__)

#: Where the library keeps its own data: pks never contain NUL, so no record can use it.
META_KEY = "\x00pymodels"
FORMAT_VERSION = 1
#: Preference order when a new file is created without a ``dbm`` setting.
PREFERRED = ("dbm.gnu", "dbm.ndbm", "dbm.dumb")
#: Pickle protocols the backend writes: 3 is the first that stores bytes as
#: bytes (older ones call ``_codecs.encode``, which the safe loader refuses).
MIN_PROTOCOL = 3
#: Files each dbm module may keep for one path (for the writability check).
_SUFFIXES = ("", ".db", ".dat", ".dir", ".pag", ".bak")

T = TypeVar("T")


class Settings(BaseSettings):
    """Settings of the shelve backend."""

    #: The database file (dbm modules may add suffixes such as .db or .dat/.dir).
    path: str
    #: The dbm module: "dbm.gnu", "dbm.ndbm", "dbm.dumb" or "dbm.sqlite3" (short
    #: forms "gnu", ... accepted). Default: the file's own module, or for a new
    #: file the first importable of gnu, ndbm, dumb.
    dbm: str | None = None
    #: Pickle protocol for new records (3 to the highest this Python has).
    protocol: int = pydantic.Field(
        pickle.HIGHEST_PROTOCOL, ge=MIN_PROTOCOL, le=pickle.HIGHEST_PROTOCOL
    )
    #: Seconds to wait for another writer's lock on the file: 0 fails at once (the
    #: default), None waits as long as it takes. Then LockTimeout.
    lock_timeout: float | None = 0.0
    #: dbm.gnu only: sync every write to disk before it returns (gdbm's "s" flag).
    #: False skips the fsync (saves ran 3-4 times faster on a fast disk here; raw
    #: gdbm 100 times) and leaves the file damaged after a crash far more often
    #: (gdbm then writes its directory only at close).
    sync: bool = True
    #: Accept a file whose last writer never closed it (killed, crashed): by
    #: default opening it for writing raises CorruptData, as it may be damaged.
    recover: bool = False


class Query(BaseQuery[Any]):
    """Every query scans the shelf; conditions, order and slices run in Python."""


class Storage(BaseStorage):
    """A shelf of plain dicts keyed by pk."""

    features: ClassVar[Features] = features
    query_class: ClassVar[type[BaseQuery[Any]]] = Query
    settings_class: ClassVar[type[BaseSettings]] = Settings
    url_schemes: ClassVar[tuple[str, ...]] = ("shelve",)
    settings: Settings

    @classmethod
    def settings_from_url(cls, url: str) -> dict[str, Any]:
        parts = urlsplit(url)
        settings: dict[str, Any] = {"path": url_path(url)}
        for key, value in parse_qsl(parts.query):
            settings[key] = value
        return settings

    @property
    def location(self) -> str | None:
        """The shelve file, for people."""
        return str(self.settings.path)

    # ------------------------------------------------------------ opening

    def _open(self) -> None:
        path = self.settings.path
        existing = dbm.whichdb(path)
        wanted = _normalise(self.settings.dbm) if self.settings.dbm else None
        if existing:  # "" means "exists but unknown"; None means "no such file"
            name = existing if existing.startswith("dbm.") else f"dbm.{existing}"
            if wanted is not None and wanted != name:
                raise ConfigurationError(
                    f"{path} was written by {name}; refusing to open it with {wanted} "
                    "(setting 'dbm')"
                )
        elif existing == "":
            raise CorruptData(
                f"{path} exists but is not a dbm file any module here reads", path=path
            )
        else:
            if self.read_only:
                raise StorageNotFound(f"{path} does not exist (read_only is set)", path=path)
            name = wanted or next(n for n in PREFERRED if _importable(n))
        self._module = _import_dbm(name)
        self.dbm_module = name
        if not self.read_only:
            _check_writable(path)
        # Set by a failed write: the file may be damaged, so no close clears the mark.
        self._damage: list[str] = []
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._lockfile = _take_lock(path, shared=self.read_only, timeout=self.settings.lock_timeout)
        try:
            self._check_clean_close()
            self._db = self._open_db()
            self._check_meta()
        except BaseException:
            _release_lock(self._lockfile, clean=False)
            raise
        if self._lockfile is not None and not self.read_only:
            # Marked open until a clean close: a writer killed with the file
            # open leaves the mark, and the next opening sees it.
            _mark(self._lockfile, f"open by pid {os.getpid()}\n")
        # A storage dropped without close() (or left open at exit) still closes cleanly.
        self._finalizer = weakref.finalize(
            self, _close_quietly, self._db, self._lockfile, self._damage
        )

    def _open_db(self) -> Any:
        path = self.settings.path
        flag = "r" if self.read_only else "c"
        if self.dbm_module == "dbm.gnu" and self.settings.sync and not self.read_only:
            flag += "s"
        try:
            return self._module.open(path, flag)
        except Exception as e:
            raise _open_error(path, self.dbm_module, e, write=not self.read_only) from e

    def _check_clean_close(self) -> None:
        if self._lockfile is None:
            return
        self._lockfile.seek(0)
        mark = self._lockfile.read().strip()
        if not mark:
            return
        path = self.settings.path
        advice = (
            "Open it with read_only=True to check or export what it holds, then open "
            "it with recover=True to accept it as it is (or restore a backup)"
        )
        if mark.startswith("write failed"):
            message = (
                f"{path} may be damaged: a write failed in its last session ({mark}); "
                "dbm.ndbm in particular can lose records written earlier when the disk "
                f"fills. {advice}"
            )
        else:
            message = (
                f"{path} was not closed cleanly (last writer: {mark}; killed or crashed): "
                "records written since it opened the file may be lost and the file may "
                f"be damaged. {advice}"
            )
        if self.read_only or self.settings.recover:
            log.warning("%s", message)
            return
        raise CorruptData(message, path=path)

    def _check_meta(self) -> None:
        path = self.settings.path
        raw = self._call(lambda: self._db.get(META_KEY.encode()), "read")
        if raw is None:
            if not self.read_only:
                self._write_raw(META_KEY, {"format": FORMAT_VERSION, "dbm": self.dbm_module})
            return
        meta = _loads(raw, path, META_KEY)
        if meta.get("dbm") != self.dbm_module:
            self._db.close()
            raise ConfigurationError(
                f"{path} records dbm module {meta.get('dbm')!r} but opens as {self.dbm_module}"
            )

    # ------------------------------------------------------------- hooks

    def _load(self, pk: str) -> dict[str, Any] | None:
        # The hot path: the dbm call inline (no _call closure), errors typed the same way.
        try:
            with self._lock:
                raw = self._db.get(pk.encode())
        except Exception as e:
            raise _error(self.settings.path, "read", pk, e) from e
        return None if raw is None else _loads(raw, self.settings.path, pk)

    def _store(self, pk: str, record: dict[str, Any], *, overwrite: bool) -> bool:
        data = pickle.dumps(record, self.settings.protocol)
        key = pk.encode()
        with self._lock:
            if not overwrite and self._call(lambda: key in self._db, "read", pk):
                return False
            self._call(lambda: self._db.__setitem__(key, data), "write", pk)
            return True

    def _remove(self, pk: str) -> bool:
        key = pk.encode()
        with self._lock:
            if not self._call(lambda: key in self._db, "read", pk):
                return False
            self._call(lambda: self._db.__delitem__(key), "write", pk)
            return True

    def _keys(self) -> Iterator[str]:
        with self._lock:
            raw = self._call(lambda: list(self._db.keys()), "read")
        meta = META_KEY.encode()
        keys = []
        for key in raw:
            if key == meta:
                continue
            try:
                keys.append(key.decode())
            except UnicodeDecodeError as e:
                raise CorruptData(
                    f"{self.settings.path}: key {key!r} is not UTF-8 (not a pymodels pk)",
                    path=self.settings.path,
                ) from e
        return iter(keys)

    def _scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for pk in self._keys():
            record = self._load(pk)
            if record is not None:
                yield pk, record

    def _count(self) -> int:
        with self._lock:
            total = self._call(lambda: len(self._db), "read")
            has_meta = self._call(lambda: META_KEY.encode() in self._db, "read")
        return int(total) - has_meta

    def _contains(self, pk: str) -> bool:
        with self._lock:
            return bool(self._call(lambda: pk.encode() in self._db, "read", pk))

    def _clear(self) -> None:
        with self._lock:
            for pk in list(self._keys()):
                self._delete_key(pk)

    def _close(self) -> None:
        with self._lock:
            if self._finalizer is not None:
                self._finalizer.detach()
            try:
                self._db.close()
            except Exception as e:
                _release_lock(self._lockfile, clean=False)
                raise _error(self.settings.path, "close", None, e) from e
            _release_lock(self._lockfile, clean=not self.read_only and not self._damage)

    # ------------------------------------------------------------ helpers

    def _delete_key(self, pk: str) -> None:
        key = pk.encode()
        self._call(lambda: self._db.__delitem__(key), "write", pk)

    def _write_raw(self, key: str, value: Any) -> None:
        data = pickle.dumps(value, self.settings.protocol)
        self._call(lambda: self._db.__setitem__(key.encode(), data), "write", key)

    def _call(self, action: Callable[[], T], what: str, pk: str | None = None) -> T:
        """Run one dbm call; map its failure to a typed error naming the file.

        After a failed write the dbm object is reopened, so what this storage
        holds in memory (dbm.dumb's index, gdbm's caches) is what the file holds.
        """
        try:
            return action()
        except Exception as e:
            if what == "write":
                if not isinstance(e, PermissionError):  # refused, so nothing was changed
                    self._note_damage(e)
                self._reopen_after_failure()
            raise _error(self.settings.path, what, pk, e) from e

    def _note_damage(self, e: BaseException) -> None:
        """A write failed part way (full disk, I/O error): the file may be damaged.

        The lock file says so and keeps saying so after close(), so the next
        opening raises CorruptData instead of answering from a damaged file (a
        full disk makes dbm.ndbm drop records written long before).
        """
        self._damage.append(f"{type(e).__name__}: {e}")
        if self._lockfile is not None:
            # If even this tiny write fails, the "open by pid" mark stays: still refused.
            with contextlib.suppress(OSError):
                _mark(self._lockfile, f"write failed in pid {os.getpid()}: {self._damage[0]}\n")

    def _reopen_after_failure(self) -> None:
        with contextlib.suppress(Exception):
            self._db.close()
        try:
            self._db = self._open_db()
        except PyModelsError:
            self._db = _Closed(self.settings.path)
        if self._finalizer is not None:  # None while _open() is still running
            self._finalizer.detach()
            self._finalizer = weakref.finalize(
                self, _close_quietly, self._db, self._lockfile, self._damage
            )


# ---------------------------------------------------------------- loading


#: Every class a stored value may need: the value domain's non-builtin types
#: (aware datetimes carry datetime.timezone, which pickles its timedelta).
_ALLOWED = frozenset(
    {
        ("datetime", "date"),
        ("datetime", "datetime"),
        ("datetime", "timezone"),
        ("datetime", "timedelta"),
        ("decimal", "Decimal"),
    }
)


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only the value domain's types (nothing else runs)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a stored value type)")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id")


def _loads(data: bytes, path: str, pk: str) -> dict[str, Any]:
    try:
        value = _SafeUnpickler(io.BytesIO(data)).load()
    except Exception as e:
        raise CorruptData(
            f"{path}: record {pk!r} cannot be read back ({type(e).__name__}: {e})",
            path=path,
            pk=pk,
        ) from e
    if type(value) is not dict:
        raise CorruptData(
            f"{path}: record {pk!r} holds a {type(value).__name__}, not a record",
            path=path,
            pk=pk,
        )
    return value


# ---------------------------------------------------------------- errors


def _error(path: str, what: str, pk: str | None, e: BaseException) -> PyModelsError:
    """The typed error for a failed dbm call (``what``: read, write or close)."""
    record = f" (record {pk!r})" if pk is not None and pk != META_KEY else ""
    if isinstance(e, PyModelsError):
        return e
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return PyModelsError(f"cannot {what} {path}{record}: disk full ({e.strerror})")
    if isinstance(e, PermissionError):
        return PyModelsError(f"cannot {what} {path}{record}: permission denied")
    if what == "write":
        return PyModelsError(f"cannot write {path}{record}: {type(e).__name__}: {e}")
    # A read that fails (or len() < 0 on a damaged ndbm file) meets damage.
    return CorruptData(
        f"{path}{record} cannot be read ({type(e).__name__}: {e})",
        path=path,
        pk=None if pk == META_KEY else pk,
    )


def _open_error(path: str, name: str, e: BaseException, *, write: bool) -> PyModelsError:
    problem = file_problem(path, write=write)
    if problem is not None:
        # A missing directory or a directory in the file's place: said in words.
        return PyModelsError(f"cannot open {path} with {name}: {problem} ({e})")
    text = str(e)
    if "needs recovery" in text:
        return CorruptData(
            f"cannot open {path} with {name}: gdbm says the database needs recovery (a "
            "writer was killed mid-write). Recover it with gdbm's own tool: "
            f"`gdbmtool {path} recover` (Debian package gdbmtool), then open it "
            "with recover=True; or restore a backup",
            path=path,
        )
    if isinstance(e, PermissionError):
        return PyModelsError(f"cannot open {path} with {name}: permission denied")
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return PyModelsError(f"cannot open {path} with {name}: disk full ({e.strerror})")
    return CorruptData(f"cannot open {path} with {name}: {type(e).__name__}: {e}", path=path)


class _Closed:
    """Stands in for a dbm object that could not be reopened after a failed write."""

    def __init__(self, path: str) -> None:
        self._path = path

    def __getattr__(self, name: str) -> Any:
        raise PyModelsError(f"{self._path} could not be reopened after a failed write")

    def __contains__(self, key: object) -> bool:
        raise PyModelsError(f"{self._path} could not be reopened after a failed write")

    def __len__(self) -> int:
        raise PyModelsError(f"{self._path} could not be reopened after a failed write")

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- locking


def _lock_path(path: str) -> str:
    return f"{path}.lock"


def _take_lock(path: str, *, shared: bool, timeout: float | None) -> IO[str] | None:
    """Lock ``path``'s side lock file: exclusive for a writer, shared for readers.

    ``flock`` locks belong to the open file, so a second storage in the same
    process waits like another process would. A reader in a directory it may
    not write opens without a lock when no lock file exists (no writer can
    have made one either: it would have needed the same directory).
    """
    name = _lock_path(path)
    try:
        handle = open(name, "r" if shared else "a+", encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        if shared:
            try:
                handle = open(name, "a+", encoding="utf-8")  # noqa: SIM115
            except OSError:
                return None
        else:  # the directory is missing, or is not one
            raise PyModelsError(
                open_failure(path, f"cannot create the lock file {name}", write=True)
            ) from None
    except OSError as e:
        if shared:
            return None
        raise PyModelsError(
            open_failure(path, f"cannot create the lock file {name}: {e.strerror}", write=True)
        ) from e
    operation = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            fcntl.flock(handle.fileno(), operation)
            return handle
        except BlockingIOError:
            if deadline is not None and time.monotonic() >= deadline:
                handle.close()
                raise LockTimeout(
                    f"{path} is locked by another {'writer' if shared else 'storage'} "
                    f"(waited {timeout} s, setting 'lock_timeout'); nothing was written"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def _mark(handle: IO[str], text: str) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(text)
    handle.flush()


def _release_lock(handle: IO[str] | None, *, clean: bool) -> None:
    if handle is None or handle.closed:
        return
    if clean:
        with contextlib.suppress(OSError):
            _mark(handle, "")
    handle.close()  # releases the flock


def _close_quietly(db: Any, handle: IO[str] | None, damage: list[str]) -> None:
    """Close at garbage collection or exit: clean only if the dbm closed fine, undamaged."""
    try:
        db.close()
    except Exception:
        _release_lock(handle, clean=False)
        return
    _release_lock(handle, clean=handle is not None and "+" in handle.mode and not damage)


def _check_writable(path: str) -> None:
    """Refuse to open for writing a file the process may not write (no half writes later)."""
    for suffix in _SUFFIXES:
        name = path + suffix
        if os.path.exists(name) and not os.access(name, os.W_OK):
            raise PyModelsError(
                f"cannot open {name} for writing: permission denied (open it with read_only=True)"
            )


# ---------------------------------------------------------------- modules


def _normalise(name: str) -> str:
    full = name if name.startswith("dbm.") else f"dbm.{name}"
    if full not in ("dbm.gnu", "dbm.ndbm", "dbm.dumb", "dbm.sqlite3"):
        raise ConfigurationError(
            f"setting 'dbm': unknown module {name!r} (accepted: dbm.gnu, dbm.ndbm, dbm.dumb, "
            "dbm.sqlite3)"
        )
    return full


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _import_dbm(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        hint = {
            "dbm.gnu": "apt-get install python3-gdbm (and use Debian's Python, or copy its "
            "_gdbm module into your environment)",
            "dbm.ndbm": "a Python built with the _dbm module",
            "dbm.sqlite3": "Python 3.13 or newer",
        }.get(name, "")
        raise BackendUnavailable(f"{name} is not available in this Python: {hint}") from e

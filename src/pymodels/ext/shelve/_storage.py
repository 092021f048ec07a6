"""The shelve backend's storage (the status header is the package's docstring)."""

from __future__ import annotations

import contextlib
import dataclasses
import dbm
import errno
import fcntl
import importlib
import io
import itertools
import logging
import os
import pickle
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from types import ModuleType
from typing import IO, Any, ClassVar, Final, TypeVar
from urllib.parse import parse_qsl, urlsplit

import pydantic

from ...backend import (
    And,
    BackendUnavailable,
    BaseQuery,
    BaseSettings,
    BaseStorage,
    BulkWriteError,
    Compiled,
    Condition,
    ConfigurationError,
    CorruptData,
    Features,
    Item,
    KeySorter,
    LockTimeout,
    Lookup,
    OrderKey,
    PyModelsError,
    StorageNotFound,
    batch_has_documents,
    batch_records,
    file_problem,
    open_failure,
    url_path,
)
from . import _journal
from ._journal import Journal, Op

__all__ = ["GNU_FEATURES", "Query", "Settings", "Storage", "features"]

features = Features(
    thread_safe=True,
    fork_safe=False,
    concurrent_processes=False,
    crash_safe=False,
    disk_full_safe=False,
)
#: What a storage over dbm.gnu has (``storage.features``): journaled, so every
#: acknowledged write survives SIGKILL and a full disk. The module-level
#: ``features`` is what every dbm module has.
GNU_FEATURES = dataclasses.replace(features, crash_safe=True, disk_full_safe=True)

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
_SUFFIXES = ("", ".db", ".dat", ".dir", ".pag", ".bak", ".snapshot", ".journal")
#: A checkpoint (the data file copied to the snapshot, the journal emptied) runs
#: once the journal holds this many bytes, or the data file's size if larger:
#: copying costs at most one byte per byte journaled.
CHECKPOINT_BYTES = 4 << 20

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
    #: dbm.gnu only: fsync the journal after every write, before it returns, so an
    #: acknowledged write survives a power loss or an OS crash too. Without it
    #: (the default) every acknowledged write still survives the process being
    #: killed (it is in the kernel before the call returns) and the file always
    #: reopens, but an OS crash can lose writes made since the last close.
    sync: bool = False
    #: dbm.ndbm, dbm.dumb (and dbm.gnu files from before the journal): accept a
    #: file whose last writer never closed it (killed, crashed); by default
    #: opening it for writing raises CorruptData, as it may be damaged. A
    #: journaled dbm.gnu file repairs itself instead.
    recover: bool = False


class Query(BaseQuery[Any]):
    """Every query scans the shelf; conditions, order and slices run in Python.

    pk order (the default) is streamed by the storage: its pks sorted in runs
    spilled to temporary files and merged, records loaded as the merge goes, so
    iterating holds no list of every pk (see ``Storage._select``). A condition that
    needs some text in a matching record (``name == "Ada"``) skips, unread, every
    record whose stored bytes do not hold that text (see :func:`needles`).
    """

    def _engine_order(self, order: tuple[OrderKey, ...], native: Any) -> bool:
        return len(order) == 1 and order[0].is_pk


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
        wanted = _normalise(self.settings.dbm) if self.settings.dbm else None
        # A snapshot beside the file means a journaled dbm.gnu file: the snapshot
        # and journal are the truth, the data file may be missing or damaged.
        journaled = os.path.exists(_snapshot_path(path))
        existing = None if journaled else dbm.whichdb(path)
        if journaled:
            name = "dbm.gnu"
            if wanted is not None and wanted != name:
                raise ConfigurationError(
                    f"{path} was written by dbm.gnu (it has a journal and a snapshot); "
                    f"refusing to open it with {wanted} (setting 'dbm')"
                )
        elif existing:  # "" means "exists but unknown"; None means "no such file"
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
        if name == "dbm.gnu":
            # Features are per dbm module: the class-level ones are what every
            # module has, a gnu storage (journaled) has more.
            self.__dict__["features"] = GNU_FEATURES
        if not self.read_only:
            _check_writable(path)
        # Set by a failed write: the file may be damaged, so no close clears the mark.
        self._damage: list[str] = []
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._journal: Journal | None = None
        #: read_only on a file whose writer was killed: a private repaired copy.
        self._scratch: str | None = None
        self._checkpoint_at = CHECKPOINT_BYTES
        self._lockfile = _take_lock(path, shared=self.read_only, timeout=self.settings.lock_timeout)
        try:
            if name == "dbm.gnu" and not self.read_only:
                self._open_journaled()
            else:
                if journaled:
                    self._open_journaled_read_only()
                else:
                    self._check_clean_close()
                    self._db = self._open_db()
                self._check_meta()
        except BaseException:
            if self._journal is not None:
                self._journal.close()
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
            _release_lock(self._lockfile, clean=False)
            raise
        if self._lockfile is not None and not self.read_only:
            # Marked open until a clean close: a writer killed with the file
            # open leaves the mark, and the next opening sees it. Without the
            # mark no write may start (nothing has changed the data file yet).
            journaled = self._journal is not None
            try:
                _mark(self._lockfile, f"open by pid {os.getpid()}\n", sync=journaled)
            except OSError as e:
                with contextlib.suppress(Exception):
                    self._db.close()
                if self._journal is not None:
                    self._journal.close()
                _release_lock(self._lockfile, clean=False)
                raise _open_error(path, name, e, write=True) from e
        self._arm_finalizer()

    def _arm_finalizer(self) -> None:
        # A storage dropped without close() (or left open at exit) still closes cleanly.
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(
            self,
            _shut,
            self._db,
            self._lockfile,
            self._damage,
            self._journal,
            self.settings.path,
            self._scratch,
        )

    def _open_db(self, *, create: bool = True) -> Any:
        path = self.settings.path
        flag = "r" if self.read_only else ("c" if create else "w")
        try:
            return self._module.open(path, flag)
        except Exception as e:
            raise _open_error(path, self.dbm_module, e, write=not self.read_only) from e

    def _open_journaled(self) -> None:
        """Open a dbm.gnu file for writing with its journal: adopt, create or repair it first."""
        path = self.settings.path
        snapshot, journal = _snapshot_path(path), _journal_path(path)
        mark = _read_mark(self._lockfile)
        for leftover in (snapshot + ".tmp", path + ".rebuild"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)  # a checkpoint or repair that was killed: redone below
        if mark.startswith("new by"):
            # A creation killed before it returned: nothing in it was acknowledged.
            for name in (path, snapshot, journal):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
        if not os.path.exists(snapshot):
            if os.path.exists(path):
                # A file from before the journal (or written by plain shelve): checked
                # as before, then its snapshot is taken and it is journaled from now on.
                self._check_clean_close()
                self._db = self._open_db(create=False)
            else:
                assert self._lockfile is not None  # a writer always has its lock file
                _mark(self._lockfile, f"new by pid {os.getpid()}\n", sync=True)
                self._db = self._open_db()
            self._check_meta()
            self._call(self._db.sync, "write")
            try:
                _copy_durably(path, snapshot)
            except OSError as e:
                self._db.close()
                raise _error(path, "write", None, e) from e
            self._journal = Journal(journal, size=0, sync=self.settings.sync)
            return
        clean, stamp = _parse_clean(mark)
        if clean and os.path.exists(path):
            actual = _size_of(journal)
            self._db = self._open_db(create=False)
            self._check_meta()
            self._journal = Journal(journal, size=actual, sync=self.settings.sync)
            if stamp is not None and stamp != _stamp(actual, path):
                # Closed cleanly, so the data file holds everything; but the journal
                # or the data file changed since (plain shelve wrote it, a copy
                # came from elsewhere): a repair would undo that, so start afresh.
                log.warning(
                    "%s: data file or journal changed since the last clean close; took a "
                    "new snapshot from the data file",
                    path,
                )
                self._checkpoint()
                if self._damage:
                    raise PyModelsError(f"cannot open {path}: {self._damage[0]}")
            self._checkpoint_at = _checkpoint_threshold(path)
            return
        end = self._repair(mark)
        self._db = self._open_db(create=False)
        self._check_meta()
        self._journal = Journal(journal, size=end, sync=self.settings.sync)
        self._checkpoint_at = _checkpoint_threshold(path)

    def _repair(self, mark: str, *, private: str | None = None) -> int:
        """Rebuild the data file from the snapshot and the journal; return the journal's whole end.

        The data file is deleted first: it is only a copy of what snapshot and
        journal hold, possibly damaged, and its space may be what a full disk
        needs for the rebuild. A repair killed half way is simply redone.
        ``private`` (read_only): build the repaired file there instead, and
        leave every file beside the data as it is.
        """
        path = self.settings.path
        snapshot = _snapshot_path(path)
        rebuild = private or path + ".rebuild"
        payloads, end, size = _journal.read(_journal_path(path))
        try:
            if private is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            shutil.copyfile(snapshot, rebuild)
            db = self._module.open(rebuild, "w")
            try:
                ops = (op for payload in payloads for op in _journal.decode(payload))
                count = _journal.apply(db, ops, META_KEY.encode())
            finally:
                db.close()
            if private is None:
                _fsync_path(rebuild)
                os.replace(rebuild, path)
                _fsync_path(os.path.dirname(os.path.abspath(path)))
        except Exception as e:
            with contextlib.suppress(OSError):
                os.unlink(rebuild)
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise PyModelsError(
                    f"cannot repair {path} (not closed cleanly): disk full ({e.strerror}). "
                    f"Nothing is lost: free some space and open it again ({snapshot} and "
                    f"{_journal_path(path)} hold every acknowledged write)"
                ) from e
            raise CorruptData(
                f"cannot repair {path} from {snapshot} and its journal: {type(e).__name__}: {e}",
                path=path,
            ) from e
        torn = f"; dropped {size - end} bytes of a write never acknowledged" if size > end else ""
        where = (
            f" (read_only: into a private copy, {private}; the next opening for writing "
            "repairs the file itself)"
            if private
            else ""
        )
        log.warning(
            "%s was not closed cleanly (%s): repaired from its snapshot and journal%s, "
            "%d writes replayed from %d journal entries%s",
            path,
            mark or "data file missing",
            where,
            count,
            len(payloads),
            torn,
        )
        return end

    def _open_journaled_read_only(self) -> None:
        """Read-only on a journaled file: as it is if closed cleanly, else a repaired copy."""
        path = self.settings.path
        mark = _read_mark(self._lockfile)
        if _parse_clean(mark)[0] and os.path.exists(path):
            self._db = self._open_db()
            return
        # A reader may not write beside the file: it repairs a private copy.
        self._scratch = tempfile.mkdtemp(prefix="pymodels-shelve-")
        private = os.path.join(self._scratch, os.path.basename(path))
        self._repair(mark, private=private)
        try:
            self._db = self._module.open(private, "r")
        except Exception as e:
            raise _open_error(path, self.dbm_module, e, write=False) from e

    def _check_clean_close(self) -> None:
        if self._lockfile is None:
            return
        mark = _read_mark(self._lockfile)
        if _parse_clean(mark)[0]:
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

    def _load(
        self, pk: str, needed: tuple[bytes, ...] = (), key: bytes | None = None
    ) -> dict[str, Any] | None:
        """The record under ``pk`` (stored as ``key``, when the caller has it); None if
        there is none, or if its bytes lack one of ``needed`` (so it cannot match the
        query that needs them: not unpickled)."""
        # The hot path: the dbm call inline (no _call closure), errors typed the same way.
        try:
            with self._lock:
                raw = self._db.get(pk.encode() if key is None else key)
        except Exception as e:
            raise _error(self.settings.path, "read", pk, e) from e
        return _record_of(raw, needed, self.settings.path, pk)

    def _store(self, pk: str, record: dict[str, Any], *, overwrite: bool) -> bool:
        data = pickle.dumps(record, self.settings.protocol)
        key = pk.encode()
        with self._lock:
            if not overwrite and self._call(lambda: key in self._db, "read", pk):
                return False
            if self._journal is not None:
                self._write_ops([("S", key, data)], pk)
            else:
                self._call(lambda: self._db.__setitem__(key, data), "write", pk)
            return True

    def _remove(self, pk: str) -> bool:
        key = pk.encode()
        with self._lock:
            if not self._call(lambda: key in self._db, "read", pk):
                return False
            if self._journal is not None:
                self._write_ops([("D", key, b"")], pk)
            else:
                self._call(lambda: self._db.__delitem__(key), "write", pk)
            return True

    def _keys(self) -> Iterator[str]:
        # In pk order, sorted in bounded memory (see _ordered_keys): no list of every key.
        path = self.settings.path
        return (_pk_of(key, path) for key in self._ordered_keys())

    def _compile_condition(self, condition: Condition) -> Compiled:
        found = needles(condition)
        if not found:
            return super()._compile_condition(condition)
        shown = ", ".join(map(repr, found))
        # A superset of the matches: Python still checks the whole condition.
        return Compiled(found, condition, f"full scan, unpickling only records holding {shown}")

    def _scan(self, needed: tuple[bytes, ...] = ()) -> Iterator[tuple[str, dict[str, Any]]]:
        # Any order will do, and the file's own is the cheap one: gdbm reads its
        # buckets in turn where pk order jumps between them, and nothing is sorted (a
        # count of every record took 1.15 times the CPU in pk order). Spooled, so no
        # list of every key is held.
        return self._records(self._stored_keys(KeySorter.spool), needed)

    def _select(
        self, native: Any, order: Any, offset: int, limit: int | None
    ) -> Iterator[Item] | list[Item]:
        # native is None or the needles of _compile_condition; only pk order
        # comes here (Query._engine_order accepts nothing else).
        needed: tuple[bytes, ...] = native or ()
        stop = None if limit is None else offset + limit
        if order is None:
            return itertools.islice(self._scan(needed), offset, stop)
        if needed:
            # Records are skipped as they are read: slice what is left (the query
            # slices in Python anyway, as it checks the condition after this).
            walk = self._in_pk_order(bool(order[0].descending), 0, None, needed)
            return itertools.islice(walk, offset, stop)
        return self._in_pk_order(bool(order[0].descending), offset, stop)

    def _in_pk_order(
        self, descending: bool, offset: int, stop: int | None, needed: tuple[bytes, ...] = ()
    ) -> Iterator[Item]:
        """Every record in pk order (``[offset:stop]`` of it), holding no list of every pk
        (see :meth:`_ordered_keys` and :meth:`_records`)."""
        return self._records(self._ordered_keys(descending, stop), needed, offset, stop)

    def _records(
        self,
        keys: Generator[bytes, None, None],
        needed: tuple[bytes, ...] = (),
        offset: int = 0,
        stop: int | None = None,
    ) -> Generator[Item, None, None]:
        """The records of ``keys[offset:stop]`` as the keys come, read a batch at a time
        under one hold of the lock, the batches growing from :data:`_FIRST_READ` keys to
        :data:`_READ_AHEAD` (``first()`` reads few). One removed before its batch is read
        is skipped, as is one whose bytes lack one of ``needed``. Ending or closing this
        generator closes ``keys`` (removing the runs behind them)."""
        with contextlib.closing(keys):
            wanted = itertools.islice(keys, offset, stop)
            size = _FIRST_READ
            while batch := list(itertools.islice(wanted, size)):
                yield from self._read_batch(batch, needed)
                size = min(size * 4, _READ_AHEAD)

    def _read_batch(self, keys: list[bytes], needed: tuple[bytes, ...]) -> Iterator[Item]:
        """The records of ``keys`` (see :meth:`_records`), in their order."""
        path = self.settings.path
        raws: list[bytes | None] | None
        try:
            with self._lock:
                raws = list(map(self._db.get, keys))
        except Exception:
            raws = None  # read again one at a time, so that the error names its record
        for i, key in enumerate(keys):
            pk = _pk_of(key, path)
            if raws is None:
                record = self._load(pk, needed, key)
            else:
                record = _record_of(raws[i], needed, path, pk)
            if record is not None:
                yield pk, record

    def _ordered_keys(
        self, descending: bool = False, stop: int | None = None
    ) -> Generator[bytes, None, None]:
        """Every record's key in pk order (the first ``stop`` of them if given).

        UTF-8 keeps code point order, so stored keys sort as their pks do. At most
        ``spill.RUN_SIZE`` keys are held: beyond that, sorted runs go to temporary files
        and are merged; a short slice keeps only its ``stop`` first keys.
        """
        return self._stored_keys(
            lambda sorter, keys: sorter.sort(keys, descending=descending, stop=stop)
        )

    def _stored_keys(
        self, arrange: Callable[[KeySorter[bytes], Iterable[bytes]], Iterable[bytes]]
    ) -> Generator[bytes, None, None]:
        """Every record's key, as ``arrange`` hands them out of a sorter given the walk
        of the file's keys (:meth:`KeySorter.sort` or :meth:`KeySorter.spool`, which
        hold at most ``spill.RUN_SIZE`` keys). The runs on disk are removed when this
        generator ends, is closed or is collected.
        """
        path = self.settings.path
        with KeySorter[bytes](f"the pks of a query on {path}") as sorter:
            arranged: Iterable[bytes]
            with self._lock:
                # The whole walk under the lock (as one keys() call was): a write
                # between two nextkey calls could make gdbm skip or repeat keys.
                try:
                    arranged = arrange(sorter, _record_keys(self._db))
                except PyModelsError:
                    raise
                except Exception as e:
                    raise _error(path, "read", None, e) from e
            yield from arranged

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
            if self._journal is not None:
                self._write_ops([("C", b"", b"")], None)
                return
            for pk in list(self._keys()):
                self._delete_key(pk)

    def _close(self) -> None:
        with self._lock:
            if self._finalizer is not None:
                self._finalizer.detach()
            journal = self._journal
            if journal is not None and not self._damage and journal.size >= self._checkpoint_at:
                self._checkpoint()
            problem = _shut(
                self._db,
                self._lockfile,
                self._damage,
                self._journal,
                self.settings.path,
                self._scratch,
            )
            if problem is None:
                return
            if self._journal is None:
                raise _error(self.settings.path, "close", None, problem) from problem
            # Nothing acknowledged is lost: the journal holds it, and the next
            # opening repairs the data file from it.
            log.warning(
                "%s: closing failed (%s: %s); the next opening repairs it from its journal",
                self.settings.path,
                type(problem).__name__,
                problem,
            )

    def _save_batch(self, start: int, batch: list[Any], written: list[str]) -> None:
        # Journaled: a batch of mappings is one journal frame, written whole or not at
        # all (a full disk leaves none of it); documents take the base class's path.
        if self._journal is None or batch_has_documents(batch):
            super()._save_batch(start, batch, written)
            return
        records, failure = batch_records(start, batch)
        protocol = self.settings.protocol
        pks = self._new_pks(len(records))
        with self._lock:
            ops: list[Op] = []
            for i, (pk, record) in enumerate(zip(pks, records, strict=True)):
                key = pk.encode()
                while self._call(lambda: key in self._db, "read", pk):  # noqa: B023
                    # A generated pk that clashes (however unlikely) is replaced.
                    pk = pks[i] = self._new_pk()
                    key = pk.encode()
                ops.append(("S", key, pickle.dumps(record, protocol)))
            if ops:
                try:
                    self._write_ops(ops, None)
                except PyModelsError as e:
                    if not written:
                        raise  # nothing is stored: the error as it is
                    raise BulkWriteError(
                        f"save_many failed at item {start}: {e}", index=start, written_pks=written
                    ) from e
        written.extend(pks)
        if failure is not None:
            index, error = failure
            raise BulkWriteError(
                f"save_many failed at item {index}: {error}", index=index, written_pks=written
            ) from error

    # ------------------------------------------------------------ journal

    def _write_ops(self, ops: list[Op], pk: str | None) -> None:
        """Journal ``ops`` then apply them to the data file (the lock is held).

        A failed journal append leaves everything as it was. A failed apply
        leaves the data file unknown: the journal is cut back (the write did
        not happen) and this storage stops; the next opening repairs the file.
        """
        journal = self._journal
        assert journal is not None
        path = self.settings.path
        if self._damage:
            raise PyModelsError(
                f"{path}: this storage stopped after a failed write ({self._damage[0]}); "
                "close it and open the file again, which repairs it from its journal"
            )
        start = journal.size
        try:
            journal.append(_journal.encode(ops))
        except OSError as e:
            raise _error(path, "write", pk, e) from e
        try:
            _journal.apply(self._db, ops, META_KEY.encode())
        except Exception as e:
            cut = ""
            try:
                journal.cut(start)
            except OSError as again:
                cut = f" (and the journal could not be cut back: {again}; the write may be "
                cut += "applied when the file is next opened)"
            self._stop(e)
            error = _error(path, "write", pk, e)
            if cut:
                error.args = (f"{error}{cut}",)
            raise error from e
        if journal.size >= self._checkpoint_at:
            self._checkpoint()

    def _stop(self, e: BaseException) -> None:
        """Stop using a data file a write may have left half done; the next opening repairs it."""
        self._damage.append(f"{type(e).__name__}: {e}")
        with contextlib.suppress(Exception):
            self._db.close()
        self._db = _Closed(self.settings.path)
        self._arm_finalizer()

    def _checkpoint(self) -> None:
        """Copy the (synced) data file to the snapshot and empty the journal.

        Never raises: if the copy fails (full disk) the old snapshot and the
        journal still hold everything; if the sync fails the storage stops.
        """
        journal = self._journal
        assert journal is not None
        path = self.settings.path
        try:
            self._db.sync()
        except Exception as e:
            log.warning("%s: syncing for a checkpoint failed (%s); stopped", path, e)
            self._stop(e)
            return
        try:
            _copy_durably(path, _snapshot_path(path))
        except OSError as e:
            log.warning("%s: checkpoint failed (%s); the journal keeps every write", path, e)
            self._checkpoint_at = max(self._checkpoint_at, journal.size) * 2
            return
        with contextlib.suppress(OSError):  # a journal left whole replays harmlessly
            journal.cut(0)
            journal.flush()
        self._checkpoint_at = _checkpoint_threshold(path)

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
            self._arm_finalizer()


# ---------------------------------------------------------------- loading

#: Keys a walk reads first under one hold of the lock, and at most (the batches grow
#: fourfold): few for a first(), and a walk of every record takes the lock once per
#: 256 records instead of once per record.
_FIRST_READ: Final = 4
_READ_AHEAD: Final = 256


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


def _record_of(
    raw: bytes | None, needed: tuple[bytes, ...], path: str, pk: str
) -> dict[str, Any] | None:
    """The record a dbm value holds; None for no value, or for one lacking one of
    ``needed`` (it cannot match the query that needs them: not unpickled)."""
    if raw is None:
        return None
    for needle in needed:
        if needle not in raw:
            return None
    return _loads(raw, path, pk)


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


# ---------------------------------------------------------------- prefilter

#: Operators whose str operand, where the record matches, is part of a str the
#: record holds: the value itself (equals), or a substring of one (contains on a
#: str, starts/endswith), or an element of a list (contains on a list).
_NEEDLE_OPS: Final = frozenset({"equals", "contains", "startswith", "endswith"})
#: Printable ASCII characters an old pickle may write escaped: protocol 0 writes a
#: backslash as ``\\u005c``, and Python 2's ``str`` was pickled as its ``repr``, which
#: escapes quotes (control characters are not printable, so never needles either).
_ESCAPED: Final = frozenset("\\'\"")


def needles(condition: Condition) -> tuple[bytes, ...]:
    """Byte strings every record matching ``condition`` holds in its pickle.

    A str in a record is pickled as its characters: UTF-8 in protocols 1 and up,
    and raw in protocol 0 for ASCII characters but the few it escapes. The safe
    unpickler makes no str any other way (it runs no code), and a str pickled
    twice is written once and referenced after. So a record whose bytes lack the
    text of such an operand cannot match, and is never unpickled. Only conjunctions
    give needles (an OR of two needs neither), and only printable ASCII operands
    without backslashes or quotes, which every protocol writes as they are
    (Python 2's pickles too), so that any file reads by the same rule.
    """
    found: list[bytes] = []
    for part in condition.children if isinstance(condition, And) else (condition,):
        if isinstance(part, And):
            found.extend(needles(part))
        elif isinstance(part, Lookup) and part.op in _NEEDLE_OPS:
            found.extend(_texts(part.value))
        elif isinstance(part, Lookup) and part.op == "contains_all":
            for item in part.value:
                found.extend(_texts(item))
    # Longest first: the rarest text tends to rule a record out soonest.
    return tuple(sorted(set(found), key=len, reverse=True))


def _texts(value: Any) -> list[bytes]:
    """The needle of a str operand (none for another kind or an unsafe str)."""
    if (
        type(value) is str
        and value.isascii()
        and value.isprintable()
        and value
        and _ESCAPED.isdisjoint(value)
    ):
        return [value.encode("ascii")]
    return []


# ---------------------------------------------------------------- pk order


def _record_keys(db: Any) -> Iterator[bytes]:
    """Every record's key as stored (no metadata); :func:`_pk_of` decodes one.

    dbm.gnu walks its keys one at a time; the other modules can only list them.
    """
    meta = META_KEY.encode()
    if not hasattr(db, "firstkey"):
        listed: list[bytes] = db.keys()
        yield from (key for key in listed if key != meta)
        return
    key, nextkey = db.firstkey(), db.nextkey
    while key is not None:
        if key != meta:
            yield key
        key = nextkey(key)


def _pk_of(key: bytes, path: str) -> str:
    """The pk stored as ``key``; CorruptData if it is not UTF-8 (no pymodels pk)."""
    try:
        return key.decode()
    except UnicodeDecodeError as e:
        raise CorruptData(f"{path}: key {key!r} is not UTF-8 (not a pymodels pk)", path=path) from e


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


def _mark(handle: IO[str], text: str, *, sync: bool = False) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(text)
    handle.flush()
    if sync:  # a journaled file's mark must be on disk before the data file changes
        os.fsync(handle.fileno())


def _read_mark(handle: IO[str] | None) -> str:
    if handle is None:
        return ""
    handle.seek(0)
    return handle.read().strip()


def _parse_clean(mark: str) -> tuple[bool, str | None]:
    """Whether ``mark`` says the last writer closed cleanly, and its stamp (journaled files)."""
    if not mark:
        return True, None
    word, _, stamp = mark.partition(" ")
    if word == "clean":
        return True, stamp
    return False, None


def _stamp(journal_size: int, path: str) -> str:
    """What a clean close records: the journal's size, the data file's size and mtime."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return f"{journal_size} missing"
    return f"{journal_size} {info.st_size} {info.st_mtime_ns}"


def _release_lock(handle: IO[str] | None, *, clean: bool) -> None:
    if handle is None or handle.closed:
        return
    if clean:
        with contextlib.suppress(OSError):
            _mark(handle, "")
    handle.close()  # releases the flock


def _shut(
    db: Any,
    handle: IO[str] | None,
    damage: list[str],
    journal: Journal | None,
    path: str,
    scratch: str | None = None,
) -> BaseException | None:
    """Close the dbm, the journal and the lock; return what failed, if anything.

    Also the finalizer (garbage collection, exit). The lock file is marked clean
    only when a writer closed an undamaged file: a journaled one after syncing
    the data file and the journal, with the journal's size, so the next opening
    trusts the data file as it is.
    """
    problem: BaseException | None = None
    journaled = journal is not None and not damage
    try:
        if journaled:
            db.sync()
        db.close()
        if journaled:
            _fsync_path(path)
            assert journal is not None
            journal.flush()
    except Exception as e:
        problem = e
    if journal is not None:
        journal.close()
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    if handle is None or handle.closed:
        return problem
    writer = "+" in handle.mode
    if writer and not damage and problem is None:
        with contextlib.suppress(OSError):
            if journal is not None:
                _mark(handle, f"clean {_stamp(journal.size, path)}\n", sync=True)
            else:
                _mark(handle, "")
    handle.close()  # releases the flock
    return problem


# ---------------------------------------------------------------- files


def _snapshot_path(path: str) -> str:
    return f"{path}.snapshot"


def _journal_path(path: str) -> str:
    return f"{path}.journal"


def _size_of(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _checkpoint_threshold(path: str) -> int:
    """Journal bytes that start a checkpoint: the data file's size, CHECKPOINT_BYTES at least.

    Copying the data file then costs at most one byte per byte journaled.
    """
    return max(CHECKPOINT_BYTES, _size_of(path))


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_durably(source: str, target: str) -> None:
    """Replace ``target`` with a copy of ``source``: whole or not at all, and on disk."""
    temporary = f"{target}.tmp"
    try:
        shutil.copyfile(source, temporary)
        _fsync_path(temporary)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_path(os.path.dirname(os.path.abspath(target)))


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

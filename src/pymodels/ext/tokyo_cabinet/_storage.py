"""The Tokyo Cabinet storage: settings, capabilities and the backend hooks."""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import decimal
import os
import threading
import time
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal
from urllib.parse import parse_qsl, unquote_to_bytes, urlsplit

import pydantic

from ...backend import (
    BATCH_SIZE,
    BaseQuery,
    BaseSettings,
    BaseStorage,
    Compiled,
    Condition,
    ConfigurationError,
    Features,
    IndexSpec,
    IntegrityError,
    LockTimeout,
    NotSupported,
    PyModelsError,
    declared_types,
    open_failure,
    sort_items,
    url_path,
)
from . import _binding
from ._binding import (
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
)
from ._columns import decode_dump, decode_record, dump_types, encode_dump, name_bytes
from ._compiler import (
    Block,
    OrderPlan,
    Plan,
    TCCond,
    compile_condition,
    gates_hold,
    pk_order_in_python,
)
from ._query import Query

if TYPE_CHECKING:
    from ...backend import Document

__all__ = ["Settings", "Storage", "features"]

# An op is "native" only where Tokyo decides it exactly for every value; "prefilter" where
# it does for most values but re-checks some in Python (docs/tokyo_cabinet.md lists which);
# "python" where Tokyo only narrows to records whose field has the right kind.
features = Features(
    ops={
        "equals": "prefilter",  # exact except dicts, lists of numbers, bytes holding NUL
        "exists": "native",
        "gt": "prefilter",  # dates exact; numbers, datetimes: bound ties checked; str: python
        "gte": "prefilter",
        "lt": "prefilter",
        "lte": "prefilter",
        "between": "prefilter",
        "in": "prefilter",  # as equals
        "contains": "prefilter",
        "contains_all": "prefilter",
        "contains_any": "prefilter",
        "startswith": "native",
        "endswith": "native",
        "iequals": "prefilter",  # exact except values holding a Greek sigma
        "icontains": "prefilter",
        "istartswith": "prefilter",
        "iendswith": "prefilter",
        "matches": "python",
        "imatches": "python",
        "year": "native",
        "month": "native",
        "day": "native",
        "like": "prefilter",
    },
    transactions=True,
    indexes=True,
    unique_indexes=False,
    compound_indexes=False,
    index_kinds=frozenset({"lexical", "decimal", "token", "qgram"}),
    partial_update=False,
    thread_safe=True,
    fork_safe=False,
    concurrent_processes=False,
    persistent=True,
)

#: Written into the file header's user area (``tctdbopaque``): outside every record.
MAGIC: Final = b"pymodels-tct "
FORMAT_VERSION: Final = 1
_OPAQUE_SIZE: Final = 64

_INDEX_TYPES: Final = {
    "lexical": IndexType.LEXICAL,
    "decimal": IndexType.DECIMAL,
    "token": IndexType.TOKEN,
    "qgram": IndexType.QGRAM,
}
_INDEX_SUFFIXES: Final = {"lex": "lexical", "dec": "decimal", "tok": "token", "qgr": "qgram"}
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

    @pydantic.field_validator("lock_timeout")
    @classmethod
    def _non_negative(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise ValueError("must be 0 or more, or None to wait forever")
        return value


class _File:
    """Per-file state shared by every storage on it in this process."""

    def __init__(self) -> None:
        # Tokyo's transactions belong to the handle, and the handle is shared by every
        # storage on the file: one lock serialises transactions with every other use.
        self.lock = threading.RLock()
        self.indexes: dict[bytes, str] = {}


_FILES: dict[str, _File] = {}
_FILES_LOCK = threading.Lock()


def _file_state(path: str) -> _File:
    real = os.path.realpath(path)
    with _FILES_LOCK:
        state = _FILES.get(real)
        if state is None:
            state = _FILES[real] = _File()
        return state


class Storage(BaseStorage):
    """Records in a Tokyo Cabinet table database, one column per top-level field."""

    features: ClassVar[Features] = features
    query_class: ClassVar[type[BaseQuery[Any]]] = Query
    settings_class: ClassVar[type[BaseSettings]] = Settings
    url_schemes: ClassVar[tuple[str, ...]] = ("tokyo-cabinet", "tokyo_cabinet")
    settings: Settings

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
            raise ConfigurationError(f"{path} does not exist (read_only is set)")
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
        self._file = _file_state(path)
        # Every storage on this file shares one lock (see _File): the base class's
        # transaction() and read-modify-write paths hold it.
        self._lock = self._file.lock
        try:
            with self._lock:
                self._check_format()
                self._file.indexes = _scan_indexes(path)
        except BaseException:
            self._db.close()
            raise

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

    def _close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except TCError as e:
                raise PyModelsError(f"closing {self.settings.path}: {e}") from e

    @property
    def path(self) -> str:
        """The database file."""
        return self.settings.path

    # ---------------------------------------------------------------- records

    # The hot paths catch TCError themselves: a context manager per call costs about as
    # much as decoding a column.

    def _load(self, pk: str) -> dict[str, Any] | None:
        key = pk.encode("utf-8")
        try:
            with self._lock:
                dump = self._db.getdump(key)
        except TCError as e:
            raise _error("get", e) from e
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
            raise _error("get", e) from e

    def _load_raw(self, keys: list[bytes]) -> list[dict[bytes, bytes] | None]:
        """Column maps of several keys, aligned with them (None: deleted meanwhile)."""
        get = self._db.get
        try:
            with self._lock:
                return [get(k) for k in keys]
        except TCError as e:
            raise _error("get", e) from e

    def _store(self, pk: str, record: dict[str, Any], *, overwrite: bool) -> bool:
        dump = encode_dump(record)
        key = pk.encode("utf-8")
        try:
            with self._lock:
                return self._db.putdump(key, dump, keep=not overwrite)
        except TCError as e:
            raise _error("put", e) from e

    def _store_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        putdump = self._db.putdump
        try:
            with self._lock:
                # Each record is encoded right before its put: the encoded form is bytes,
                # and holding a whole batch of it would only feed the garbage collector.
                for pk, record in items:
                    key = pk.encode("utf-8")
                    # Generated pks are written insert-if-absent: a clash (however
                    # unlikely) makes the base class redo the batch one by one with
                    # fresh pks.
                    if not putdump(key, encode_dump(record), keep=True):
                        raise IntegrityError(f"a record with pk {pk!r} exists already")
        except TCError as e:
            raise _error("put", e) from e

    def _remove(self, pk: str) -> bool:
        key = pk.encode("utf-8")
        with self._lock, _translate("out"):
            return self._db.out(key)

    def _keys(self) -> Iterator[str]:
        with self._lock, _translate("fwmkeys"):
            keys = self._db.keys()
        return (_pk(k) for k in keys)

    def _scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._lock, _translate("fwmkeys"):
            keys = self._db.keys()
        yield from self._records(keys)

    def _records(
        self, keys: list[bytes], gates: tuple[TCCond, ...] = ()
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(pk, record)`` for keys, loaded in batches; keys deleted meanwhile are skipped,
        and so are records failing ``gates`` (see :attr:`Plan.deferred`)."""
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
                yield _pk(key), decode_dump(dump)

    def _count(self) -> int:
        with self._lock, _translate("rnum"):
            return self._db.rnum()

    def _contains(self, pk: str) -> bool:
        key = pk.encode("utf-8")
        with self._lock, _translate("vsiz"):
            return self._db.vsiz(key) >= 0

    def _clear(self) -> None:
        with self._lock, _translate("clear"):
            handle = self._db._handle
            in_tx = handle is not None and handle.tx_owner is not None
            if in_tx or self._db.rnum() <= _VANISH_ABOVE:
                with self._db.query() as q:
                    q.searchout()
            else:
                self._db.vanish()  # truncates the file, header included
                self._stamp()

    # ----------------------------------------------------------- transactions

    def _begin(self) -> None:
        with _translate("tranbegin"):
            self._db.tranbegin()

    def _commit(self) -> None:
        with _translate("trancommit"):
            self._db.trancommit()

    def _rollback(self) -> None:
        with _translate("tranabort"):
            self._db.tranabort()

    def _tx_open(self) -> bool:
        handle = self._db._handle
        return handle is not None and handle.tx_owner is not None

    # ----------------------------------------------------------------- indexes

    def _create_index(self, spec: IndexSpec) -> None:
        (key,) = spec.keys
        if len(key.path) > 1:
            # Tokyo indexes whole columns; a nested path lives inside a JSON column.
            return
        col = name_bytes(key.path[0])
        with self._lock:
            current = self._file.indexes.get(col)
            wanted = spec.kind or current or "lexical"
            if current == wanted:
                return
            if self._tx_open():
                raise NotSupported(
                    "Tokyo Cabinet cannot create an index inside a transaction "
                    "(create it before the transaction starts)"
                )
            with _translate("setindex"):
                if wanted in ("lexical", "decimal"):
                    self._refuse_empty_values(col)
                self._db.setindex(col, _INDEX_TYPES[wanted])
            self._file.indexes[col] = wanted

    def _refuse_empty_values(self, col: bytes) -> None:
        # Tokyo Cabinet 1.4.48 aborts the process (a failed C assertion) when it meets an
        # empty value while building a lexical or decimal index. pymodels never writes
        # one; other clients may have.
        with self._db.query() as q:
            q.addcond(col, Cond.STREQ, b"")
            empty = q.searchcount()
        if empty:
            raise PyModelsError(
                f"cannot build a lexical or decimal index on {col.decode('utf-8', 'replace')!r}: "
                f"{empty} records (written by another client) hold an empty value there, which "
                "makes Tokyo Cabinet abort the process; rewrite them or use a token index"
            )

    def _index_kind(self, doc_class: type[Document], fields: str | Sequence[str]) -> str:
        # The kind that fits the field's declared type: decimal for numbers, dates and
        # datetimes, token for lists, lexical otherwise. (A compound entry arrives as
        # its first field: Tokyo has no compound indexes.)
        first = fields if isinstance(fields, str) else fields[0]
        return _default_kind(doc_class, first.lstrip("-"))

    def _has_index(self, spec: IndexSpec) -> bool:
        # Tokyo's own record of its indexes: the index files beside the table file.
        key = spec.keys[0]
        if len(spec.keys) != 1 or len(key.path) != 1:
            return False
        kind = _scan_indexes(self.settings.path).get(name_bytes(key.path[0]))
        return kind is not None and (spec.kind is None or spec.kind == kind)

    def _can_index_now(self) -> bool:
        # Tokyo cannot build an index inside a transaction: a later save does it.
        return not self._tx_open()

    def index_kinds(self) -> dict[str, str]:
        """The indexed columns of the file and their kinds."""
        with self._lock:
            return {k.decode("utf-8", "replace"): v for k, v in self._file.indexes.items()}

    def _index_map(self) -> Mapping[bytes, str]:
        return self._file.indexes

    # ------------------------------------------------------------ query support

    def _tc_queries(
        self,
        blocks: Sequence[Block],
        order: tuple[bytes, int] | None = None,
        limit: int = -1,
        skip: int = 0,
        extra: TCCond | None = None,
    ) -> list[_binding.Query]:
        """One Tokyo query per block; the first carries the order and the limit."""
        queries: list[_binding.Query] = []
        try:
            for block in blocks:
                q = self._db.query()
                queries.append(q)
                for c in block:
                    q.addcond(c.col, c.op, c.expr, negate=c.negate, noidx=c.noidx)
                if extra is not None:
                    q.addcond(
                        extra.col, extra.op, extra.expr, negate=extra.negate, noidx=extra.noidx
                    )
            if order is not None:
                queries[0].setorder(order[0], order[1])
            if limit >= 0 or skip:
                queries[0].setlimit(limit, skip)
        except BaseException:
            for q in queries:
                q.close()
            raise
        return queries

    def _run(
        self,
        blocks: Sequence[Block],
        order: tuple[bytes, int] | None = None,
        limit: int = -1,
        skip: int = 0,
        extra: TCCond | None = None,
    ) -> list[bytes]:
        """Keys of the union of ``blocks`` (a search, or a metasearch), ordered and sliced."""
        if not blocks:
            return []
        if order is not None and pk_order_in_python(len(blocks), order, limit, skip):
            keys = self._run(blocks, extra=extra)
            keys.sort(reverse=order[1] == Order.STRDESC)
            return _sliced(keys, limit, skip)
        queries = self._tc_queries(blocks, order, limit, skip, extra)
        try:
            if len(queries) == 1:
                return queries[0].search()
            return metasearch(queries, SetOp.UNION)
        finally:
            for q in queries:
                q.close()

    def _checked_keys(
        self, plan: Plan, extra: TCCond | None = None, exclude: set[bytes] | None = None
    ) -> list[bytes]:
        """Keys of the checked blocks whose records pass their check."""
        assert plan.blocks is not None
        found: list[bytes] = []
        seen = set() if exclude is None else set(exclude)
        for block in plan.blocks:
            if block.check is None:
                continue
            candidates = [k for k in self._run([block.conds], extra=extra) if k not in seen]
            for key, columns in zip(candidates, self._load_raw(candidates), strict=True):
                if columns is not None and block.check.matches(decode_record(columns)):
                    found.append(key)
                    seen.add(key)
        return found

    def _tc_search(
        self,
        plan: Plan,
        order: tuple[bytes, int] | None = None,
        limit: int = -1,
        skip: int = 0,
        extra: TCCond | None = None,
    ) -> list[bytes]:
        """Primary keys the plan selects, in ``order`` (column, :class:`Order`), sliced.

        A plan with checked blocks takes no column order (the query never asks for one).
        """
        if plan.nothing:
            return []
        # try/except rather than _translate: this runs once per query.
        try:
            with self._lock:
                if plan.blocks is None:
                    if extra is None and (order is None or order[0] == b""):
                        # Every record: the key list is cheaper than a table scan.
                        keys = self._db.keys()
                        if order is not None:
                            keys.sort(reverse=order[1] == Order.STRDESC)
                        return _sliced(keys, limit, skip)
                    return self._run([()], order, limit, skip, extra)
                if not plan.checked:
                    return self._run([b.conds for b in plan.blocks], order, limit, skip, extra)
                assert order is None or order[0] == b"", "checked plans are not ordered by Tokyo"
                sure = self._run([b.conds for b in plan.blocks if b.check is None], extra=extra)
                exclude = None if plan.disjoint else set(sure)
                keys = sure + self._checked_keys(plan, extra, exclude)
                if order is not None:
                    keys.sort(reverse=order[1] == Order.STRDESC)
                return _sliced(keys, limit, skip)
        except TCError as e:
            raise _error("search", e) from e

    def _compile_condition(self, condition: Condition) -> Compiled:
        plan, residual = compile_condition(condition, self._index_map())
        # No description here: explain() asks _explain_select, which describes the plan.
        return Compiled(plan, residual)

    def _select(
        self, native: Any, order: Any, offset: int, limit: int | None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        # ``order``: the OrderPlan the query made of the order keys, or None.
        plan: Plan = native
        oplan: OrderPlan | None = order
        if plan.nothing:
            return
        by_pk = oplan is None or oplan.by_pk
        if plan.deferred is not None and limit is None and not offset and by_pk:
            # Every match is loaded: its kind gates are checked on the loaded record rather
            # than by Tokyo reading it once more.
            lean, gates = plan.deferred
            tc_order = None if oplan is None else (b"", oplan.tc_order)
            yield from self._records(self._tc_search(lean, tc_order), gates)
            return
        if oplan is None:
            keys = self._tc_search(plan)
            stop = None if limit is None else offset + limit
            yield from self._records(keys[offset:stop] if offset or stop else keys)
            return
        if oplan.by_pk:
            keys = self._tc_search(
                plan, (b"", oplan.tc_order), -1 if limit is None else limit, offset
            )
            yield from self._records(keys)
            return
        if limit is not None:
            yield from self._top(plan, oplan, offset, limit)
            return
        yield from self._ordered_stream(plan, oplan, offset)

    def _ordered_stream(
        self, plan: Plan, oplan: OrderPlan, offset: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every match in order: Tokyo's order with runs of equal values sorted exactly."""
        keys = self._tc_search(plan, (oplan.column, oplan.tc_order))
        run: list[tuple[str, dict[str, Any]]] = []
        run_value: bytes | None = None
        skipped = 0
        for start in range(0, len(keys), BATCH_SIZE):
            batch = keys[start : start + BATCH_SIZE]
            for key, columns in zip(batch, self._load_raw(batch), strict=True):
                if columns is None:
                    continue
                value = columns.get(oplan.column)
                if run and value != run_value:
                    for item in sort_items(run, oplan.keys):
                        if skipped < offset:
                            skipped += 1
                        else:
                            yield item
                    run = []
                run_value = value
                run.append((_pk(key), decode_record(columns)))
        for item in sort_items(run, oplan.keys):
            if skipped < offset:
                skipped += 1
            else:
                yield item

    def _top(
        self, plan: Plan, oplan: OrderPlan, offset: int, limit: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """A slice of the order: Tokyo's top records plus every tie of the last one."""
        want = offset + limit
        if want == 0:
            return
        order = (oplan.column, oplan.tc_order)
        keys = self._tc_search(plan, order, want)
        raw = self._load_raw(keys)
        found = {k: c for k, c in zip(keys, raw, strict=True) if c is not None}
        if len(keys) == want and keys:
            last = raw[-1]
            boundary = None if last is None else last.get(oplan.column)
            if boundary is None or b"\x00" in boundary:
                # No way to name the boundary in a condition: take the whole order.
                items = list(self._ordered_stream(plan, oplan, 0))
                yield from items[offset:want]
                return
            tie = TCCond(oplan.column, Cond.STREQ, boundary)
            more = [k for k in self._tc_search(plan, extra=tie) if k not in found]
            for key, columns in zip(more, self._load_raw(more), strict=True):
                if columns is not None:
                    found[key] = columns
        items = [(_pk(k), decode_record(c)) for k, c in found.items()]
        yield from sort_items(items, oplan.keys)[offset:want]

    def _count_where(self, native: Any) -> int:
        plan: Plan = native
        if plan.nothing:
            return 0
        if plan.blocks is None:
            return self._count()
        # try/except rather than _translate: this runs once per query.
        try:
            with self._lock:
                sure = [b.conds for b in plan.blocks if b.check is None]
                if plan.checked and not plan.disjoint:
                    return len(self._tc_search(plan))
                total = 0
                if len(sure) == 1 or (sure and plan.disjoint):
                    # searchcount leaves the key list in the library: nothing is copied.
                    for conds in sure:
                        queries = self._tc_queries([conds])
                        try:
                            total += queries[0].searchcount()
                        finally:
                            queries[0].close()
                elif sure:
                    total += len(self._run(sure))
                if plan.checked:
                    total += len(self._checked_keys(plan))
                return total
        except TCError as e:
            raise _error("search", e) from e

    def _delete_where(self, native: Any) -> int | None:
        plan: Plan = native
        if plan.nothing:
            return 0
        if plan.blocks is None:
            with self._lock:
                total = self._count()
                self._clear()
                return total
        with self._atomic(), self._lock, _translate("searchout"):
            # Checked records are found before anything is deleted; the rest goes with
            # searchout (a record deleted by an earlier block is not found again).
            checked = self._checked_keys(plan) if plan.checked else []
            total = 0
            for block in plan.blocks:
                if block.check is None:
                    with self._db.query() as q:
                        for c in block.conds:
                            q.addcond(c.col, c.op, c.expr, negate=c.negate, noidx=c.noidx)
                        q.searchout()
                        total += q.count()
            out = self._db.out
            return total + sum(1 for k in checked if out(k))

    def _explain_select(self, native: Any, order: Any, offset: int, limit: int | None) -> str:
        # ``order``: as for _select; ``offset``/``limit``: the slice Tokyo runs, if any.
        plan: Plan = native
        oplan: OrderPlan | None = order
        tc_order = None if oplan is None else (oplan.column, oplan.tc_order)
        lines = [plan.describe()]
        tc_limit = -1
        skip = 0
        if oplan is not None:
            if limit is not None:
                tc_limit = offset + limit if not oplan.by_pk else limit
            if oplan.by_pk:
                skip = offset
        blocks = 1 if plan.blocks is None else len(plan.blocks)
        if tc_order is not None and pk_order_in_python(blocks, tc_order, tc_limit, skip):
            lines.append("order by pk: sorted in Python")
        elif tc_order is not None:
            column = tc_order[0].decode("utf-8", "replace") or '"" (the pk)'
            direction = "STRDESC" if tc_order[1] == Order.STRDESC else "STRASC"
            lines.append(f"tctdbqrysetorder: {column} {direction}")
        unsliced = limit is None and not offset
        if plan.deferred is not None and unsliced and (oplan is None or oplan.by_pk):
            lean, gates = plan.deferred
            checked = " AND ".join(map(str, gates))
            lines.append(f"documents: {lean.describe()} (then checked in Python: {checked})")
        for i, hint in enumerate(self._tc_hints(plan, tc_order, tc_limit, skip)):
            label = "tokyo hint" if i == 0 else f"tokyo hint (query {i + 1})"
            lines.append(f"{label}: " + hint.replace("\n", "; "))
        return "\n  ".join(lines)

    def _tc_hints(
        self, plan: Plan, order: tuple[bytes, int] | None, limit: int, skip: int
    ) -> list[str]:
        """Tokyo's own account of each query of the plan (runs the searches)."""
        if plan.nothing or (plan.everything and order is None):
            return []
        blocks = [()] if plan.blocks is None else [b.conds for b in plan.blocks]
        if order is not None and pk_order_in_python(len(blocks), order, limit, skip):
            order, limit, skip = None, -1, 0  # as _run does
        with self._lock, _translate("search"):
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


def _sliced(keys: list[bytes], limit: int, skip: int) -> list[bytes]:
    stop = None if limit < 0 else skip + limit
    return keys[skip:stop] if skip or stop is not None else keys


def _pk(key: bytes) -> str:
    # Keys other clients wrote may not be UTF-8; such records still list and count.
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key.decode("utf-8", "replace")


def _error(operation: str, e: TCError) -> PyModelsError:
    return PyModelsError(f"Tokyo Cabinet {operation} failed: {e}")


@contextlib.contextmanager
def _translate(operation: str) -> Iterator[None]:
    """Library errors as :class:`PyModelsError`, the original chained."""
    try:
        yield
    except TCError as e:
        raise _error(operation, e) from e


def _open_locked(db: TableDB, path: str, mode: OpenMode, timeout: float | None) -> TableDB:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            if timeout is None:
                return db.open(path, mode)
            return db.open(path, mode | OpenMode.LCKNB)
        except TCError as e:
            if e.ecode == ErrorCode.LOCK:
                if deadline is not None and time.monotonic() < deadline:
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
            if e.ecode in (ErrorCode.META, ErrorCode.RHEAD):
                raise ConfigurationError(
                    f"{path} is not a Tokyo Cabinet table database ({e.message})"
                ) from e
            writing = bool(mode & OpenMode.WRITER)
            raise PyModelsError(open_failure(path, e, write=writing)) from e


def _scan_indexes(path: str) -> dict[bytes, str]:
    """Indexed columns of a file, from the index files Tokyo keeps beside it."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = os.path.basename(path) + ".idx."
    found: dict[bytes, str] = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return found
    for name in names:
        if not name.startswith(prefix):
            continue
        column, _, suffix = name[len(prefix) :].rpartition(".")
        if suffix in _INDEX_SUFFIXES and column:
            found[unquote_to_bytes(column)] = _INDEX_SUFFIXES[suffix]
    return found


#: Declared types whose values Tokyo compares as numbers (dates and datetimes as digits).
_NUMERIC_TYPES: Final = (int, float, decimal.Decimal, datetime.date, datetime.datetime)


def _default_kind(doc_class: type[Document], field: str) -> str:
    options = declared_types(doc_class, field)
    if options is None:
        return "lexical"
    if (
        options
        and all(isinstance(o, type) and issubclass(o, _NUMERIC_TYPES) for o in options)
        and not any(o is bool for o in options)
    ):
        return "decimal"
    if options and all(typing.get_origin(o) is list or o is list for o in options):
        return "token"
    return "lexical"

"""Storages: one namespace of records in one database.

:class:`BaseStorage` is the backend contract. Its methods fall in three groups,
kept apart below:

* **required hooks** every backend implements (:data:`REQUIRED_HOOKS`):
  abstract methods, so a class lacking one cannot be instantiated;
* **optional hooks** a backend overrides only to be faster or to expose a
  capability (:data:`OPTIONAL_HOOKS`, each described in ``docs/backends.md``);
* the **public API** users call, built on the hooks and identical everywhere.

Every other underscore name here is internal: backends neither call nor
override it (``tests/test_backend_contract.py`` checks the overriding).

Records cross the hook boundary as plain dicts of values from the value domain
(already validated, aware datetimes in UTC); each backend encodes them for its
engine and decodes them back exactly.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import math
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, Self, TypeVar, overload

import pydantic

from . import documents
from .changes import Change, apply_changes, parse_changes
from .conditions import ALL, Condition, parse_path
from .documents import Document
from .errors import (
    BulkWriteError,
    ConfigurationError,
    ConflictError,
    ConnectionFailed,
    DoesNotExist,
    IntegrityError,
    LockTimeout,
    NotSupported,
    PyModelsError,
    ValidationError,
    check_usable,
)
from .features import Features
from .ordering import OrderKey, parse_order, sort_items
from .pks import new_pk, new_pks
from .query import BaseQuery, Compiled, Item
from .values import (
    MISSING,
    check_pk,
    get_path,
    stored_dict,
    stored_record,
    strict_equal,
    validate_record,
)

__all__ = [
    "OPTIONAL_HOOKS",
    "REQUIRED_HOOKS",
    "BaseSettings",
    "BaseStorage",
    "Change",
    "IndexSpec",
    "apply_changes",
]

#: The hooks every backend implements (abstract in :class:`BaseStorage`).
REQUIRED_HOOKS: tuple[str, ...] = (
    "_open",
    "_load",
    "_store",
    "_remove",
    "_scan",
    "_clear",
    "_close",
)

#: The hooks a backend may override, and no other underscore name
#: (``docs/backends.md`` says when to override each).
OPTIONAL_HOOKS: tuple[str, ...] = (
    "_load_many",
    "_store_many",
    "_keys",
    "_count",
    "_contains",
    "_begin",
    "_commit",
    "_rollback",
    "_create_index",
    "_indexes",
    "_index_kind",
    "_can_index_now",
    "_has_index",
    "_serialize",
    "_update_many",
    "_remove_many",
    "_compare_and_store",
    "_new_pk",
    "_new_pks",
    "_save_batch",
    # The engine's side of queries: called by the backend's query class (and
    # by BaseQuery's defaults), never by the public API.
    "_compile_condition",
    "_select",
    "_select_page",
    "_bound_after",
    "_count_where",
    "_delete_where",
    "_explain_select",
)

D = TypeVar("D", bound="Document")

# What from_record does for a free-form Document, which get(None, pk) does inline.
_new_document = object.__new__
_SET_PK, _SET_STORAGE, _SET_EXTRA = documents.FREE_FORM_SETTERS


class BaseSettings(pydantic.BaseModel):
    """Settings every backend accepts; backends subclass it with their own keys."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, strict=False)

    #: Open the storage for reading only: writes raise NotSupported.
    read_only: bool = False

    @pydantic.field_validator("*", mode="after")
    @classmethod
    def _sane(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        """Checks every backend's settings share (the error names the setting).

        Text reaches file systems and drivers: no NUL, no lone surrogate
        (Python's stand-in for undecodable bytes). A float reaches a timer:
        finite, and a timeout is never negative (None, where a backend accepts
        it, means no limit).
        """
        if type(value) is str:
            if "\x00" in value:
                raise ValueError("must not contain NUL (U+0000)")
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise ValueError(f"is not valid Unicode ({e.reason} at {e.start})") from e
        elif type(value) is float:
            if not math.isfinite(value):
                raise ValueError(f"must be a finite number, not {value}")
            if value < 0 and (info.field_name or "").endswith("timeout"):
                raise ValueError(f"must not be negative, not {value}")
        return value


class IndexSpec(NamedTuple):
    """An index request as ``create_index`` received it, parsed."""

    keys: tuple[OrderKey, ...]
    unique: bool
    kind: str | None

    @property
    def name(self) -> str:
        """A stable name built from the keys (used by engines that name indexes)."""
        return "__".join(("d_" if k.descending else "") + "_".join(k.path) for k in self.keys)


class BaseStorage(abc.ABC):
    """The backend contract and the public storage API."""

    #: What this backend's engine can do.
    features: ClassVar[Features] = Features()
    #: The query class this storage's queries are made of.
    query_class: ClassVar[type[BaseQuery[Any]]] = BaseQuery
    #: The pydantic model that validates this backend's settings.
    settings_class: ClassVar[type[BaseSettings]] = BaseSettings
    #: URL schemes this backend answers to (``get_storage("scheme://...")``).
    url_schemes: ClassVar[tuple[str, ...]] = ()

    @property
    def backend(self) -> str:
        """The backend's public module (``pymodels.ext.sqlite``): its name in messages.

        A backend kept in private submodules (``ext/tokyo_cabinet/_storage.py``)
        is named by its package, the module users import and name in settings.
        """
        return backend_module(type(self))

    def __init__(self, **settings: Any) -> None:
        self.settings = _validate_settings(type(self), settings)
        self.closed = False
        # Guards the generic read-modify-write paths (update, compare-and-swap)
        # and makes a transaction exclusive to the thread that opened it.
        self._lock = threading.RLock()
        self._tx_depth = 0
        self._indexed: set[type[Any]] = set()
        self._index_failed: set[type[Any]] = set()
        self._open()

    @classmethod
    def settings_from_url(cls, url: str) -> dict[str, Any]:
        """Settings for a URL of one of :attr:`url_schemes` (override per backend)."""
        raise ConfigurationError(f"{backend_module(cls)} takes no URLs")

    @property
    def read_only(self) -> bool:
        """Whether the storage was opened for reading only."""
        return self.settings.read_only

    # ================================================== required hooks

    @abc.abstractmethod
    def _open(self) -> None:
        """Connect to or open the database described by ``self.settings``."""

    @abc.abstractmethod
    def _load(self, pk: str) -> dict[str, Any] | None:
        """Return the record stored under ``pk``, or None."""

    @abc.abstractmethod
    def _store(self, pk: str, record: dict[str, Any], *, overwrite: bool) -> bool:
        """Write ``record`` under ``pk``, replacing it if ``overwrite``.

        Without ``overwrite``, leave an existing record alone and return False.
        Return True when written. ``record`` is valid and may be the caller's
        own dict: encode or copy it, never keep or change it.
        """

    @abc.abstractmethod
    def _remove(self, pk: str) -> bool:
        """Delete the record under ``pk``; return whether it existed."""

    @abc.abstractmethod
    def _scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield every ``(pk, record)`` pair, in any order, without library metadata."""

    @abc.abstractmethod
    def _clear(self) -> None:
        """Remove every record (library metadata stays)."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release the engine's resources (called once)."""

    # =================================================== optional hooks

    def _load_many(self, pks: list[str]) -> list[dict[str, Any] | None]:
        """Records for several pks, aligned with ``pks``."""
        return [self._load(pk) for pk in pks]

    def _store_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Write one batch of ``save_many``: new records under freshly generated pks.

        ``items`` is an iterable of ``(pk, record)``, to be consumed once.
        Called inside a transaction when the engine has them. Write
        insert-if-absent and raise :class:`IntegrityError` on a clash (or any
        other failure): the generic code then rolls back and redoes the batch
        one by one, with fresh pks, naming the failing record.
        """
        for pk, record in items:
            if not self._store(pk, record, overwrite=False):
                raise IntegrityError(f"a record with pk {pk!r} exists already")

    def _keys(self) -> Iterator[str]:
        """Every pk (engine order)."""
        for pk, _ in self._scan():
            yield pk

    def _count(self) -> int:
        """The number of records."""
        return sum(1 for _ in self._keys())

    def _contains(self, pk: str) -> bool:
        """Whether a record is stored under ``pk``."""
        return self._load(pk) is not None

    def _begin(self) -> None:
        """Start a transaction (only when ``features.transactions``)."""
        raise NotSupported(f"{self.backend} has no transactions")

    def _commit(self) -> None:
        """Commit the transaction :meth:`_begin` started."""
        raise NotSupported(f"{self.backend} has no transactions")

    def _rollback(self) -> None:
        """Abandon the transaction :meth:`_begin` started."""
        raise NotSupported(f"{self.backend} has no transactions")

    def _create_index(self, spec: IndexSpec) -> None:  # noqa: B027 - an optional no-op hook
        """Create an index (idempotently). Only called when ``features.indexes``."""

    def _indexes(self) -> list[IndexSpec]:
        """The indexes the engine holds for this storage. Only called when ``features.indexes``."""
        return []

    def _index_kind(self, doc_class: type[Document], fields: str | Sequence[str]) -> str | None:
        """The index kind for a ``Meta.indexes`` entry that names none (None: the default).

        Engines with several kinds pick one from the fields' declared types.
        """
        return None

    def _has_index(self, spec: IndexSpec) -> bool:
        """Whether the engine holds the index ``spec`` describes (with ``features.indexes``).

        The default looks in :meth:`_indexes` (none unless a backend lists its
        indexes); a backend may answer from the engine more directly.
        """
        return any(
            held.keys == spec.keys
            and held.unique == spec.unique
            and (spec.kind is None or held.kind == spec.kind)
            for held in self._indexes()
        )

    def _serialize(self, key: str) -> None:  # noqa: B027 - an optional no-op hook
        """Inside a transaction: make other processes' transactions that pass ``key`` wait.

        ``get_or_create`` and ``upsert`` call it first thing in their
        transaction, so that two processes cannot both find nothing and both
        write. The default does nothing, which is right where a transaction
        already excludes other writers from its start (SQLite's ``BEGIN
        IMMEDIATE``) or where one process owns the database.
        """

    def _can_index_now(self) -> bool:
        """Whether ``ensure_indexes`` may create indexes now (False: at a later save)."""
        return True

    def _update_many(self, pks: list[str], changes: list[Change]) -> int:
        """Apply partial changes to the records under ``pks``; return how many existed.

        The default reads, changes and writes each record under the storage
        lock, in one transaction where there are transactions. Engines that
        change fields in place (``features.partial_update``) override it.
        """
        with self._lock, self._atomic():
            if self.features.transactions:
                changed = 0
                for pk in pks:
                    record = self._load(pk)
                    if record is not None:
                        self._store(pk, apply_changes(record, changes, pk), overwrite=True)
                        changed += 1
                return changed
            # No transaction to roll back: a change that one record cannot take
            # must be refused before any record is written, so every changed
            # record is computed first (held in memory), then written.
            updated = [
                (pk, apply_changes(record, changes, pk))
                for pk in pks
                if (record := self._load(pk)) is not None
            ]
            for pk, record in updated:
                self._store(pk, record, overwrite=True)
            return len(updated)

    def _remove_many(self, pks: list[str]) -> int:
        """Delete the records under ``pks``; return how many existed (one transaction)."""
        with self._atomic():
            return sum(1 for pk in pks if self._remove(pk))

    def _compare_and_store(
        self, pk: str, record: dict[str, Any], field: str, expected: Any
    ) -> bool:
        """Write ``record`` only if the stored record's ``field`` equals ``expected``.

        ``expected`` is None for "no record stored yet" and MISSING for "stored
        without that field". Return False on a mismatch. The default holds the
        storage lock, which is exact within one process; backends shared
        between processes override it.
        """
        with self._lock, self._atomic():
            current = self._load(pk)
            if expected is None:
                return current is None and self._store(pk, record, overwrite=False)
            if current is None or not _same(current.get(field, MISSING), expected):
                return False
            return self._store(pk, record, overwrite=True)

    def _new_pk(self) -> str:
        """A new primary key (override to generate keys another way, e.g. to force clashes)."""
        return new_pk()

    def _new_pks(self, count: int) -> list[str]:
        """``count`` new primary keys (for ``save_many``; follows an overridden ``_new_pk``)."""
        if type(self)._new_pk is not BaseStorage._new_pk:
            return [self._new_pk() for _ in range(count)]
        return new_pks(count)

    # ---- the engine's side of queries

    def _compile_condition(self, condition: Condition) -> Compiled:
        """The engine's form of ``condition`` (what ``BaseQuery._compile`` returns by default).

        ``native`` selects the condition or a superset of it, ``residual`` is
        what Python must still check. The default selects every record.
        """
        return Compiled(None, None if condition == ALL else condition, "full scan")

    def _select(
        self, native: Any, order: Any, offset: int, limit: int | None
    ) -> Iterator[Item] | list[Item]:
        """The ``(pk, record)`` pairs ``native`` selects, in ``order``, sliced.

        ``order`` is None (any order), the order keys ``_engine_order``
        accepted, or whatever engine form of them the backend's query passes.
        The default (for ``native`` None) scans every record.
        """
        it: Iterable[Item] = self._scan()
        if order is not None:
            it = sort_items(list(it), order)
        return itertools.islice(it, offset, None if limit is None else offset + limit)

    def _select_page(
        self, condition: Condition, order: tuple[OrderKey, ...], offset: int, limit: int | None
    ) -> list[Item] | None:
        """A short exact page of ``condition`` in ``order`` in one step, or None (the default).

        ``limit`` None asks for every match from ``offset`` on: a backend returns them
        only when they are few (say, at most a page), else None, and the query streams.
        """
        return None

    def _bound_after(
        self, native: Any, order: tuple[OrderKey, ...], pk: str, record: Mapping[str, Any]
    ) -> Any:
        """``native`` narrowed to records at or after ``(pk, record)`` in ``order``.

        For ``after()``: a superset is enough, since Python still drops every
        record that is not strictly after the anchor. The default narrows
        nothing, so the engine reads from the start of the order; an engine
        that seeks an index to the anchor's first order key makes a deep
        page cost what a first page costs.
        """
        return native

    def _count_where(self, native: Any) -> int:
        """How many records ``native`` selects."""
        return sum(1 for _ in self._select(native, None, 0, None))

    def _delete_where(self, native: Any) -> int | None:
        """Delete what ``native`` selects and return how many; None: delete by pk instead."""
        return None

    def _explain_select(self, native: Any, order: Any, offset: int, limit: int | None) -> str:
        """What the engine runs to select ``native`` in ``order`` (for ``explain()``)."""
        return "full scan" if native is None else repr(native)

    # ======================================================= public API

    # ---- writing

    def save(self, data: Document | Mapping[str, Any], primary_key: str | None = None) -> str:
        """Store a document or mapping, replacing any record under its pk; return the pk."""
        return self._write_data(data, primary_key, insert=False)

    def insert(self, data: Document | Mapping[str, Any], primary_key: str | None = None) -> str:
        """As :meth:`save`, but raise :class:`IntegrityError` if the pk exists."""
        return self._write_data(data, primary_key, insert=True)

    def update(self, pk: str | Document, **changes: Any) -> int:
        """Change fields of one record without loading it into a document.

        ``field=value`` sets, ``field__unset=True`` removes, ``field__inc=n``
        adds; a saved document as a value stands for its pk. Returns the number
        of records changed (1); raises :class:`DoesNotExist` when no record is
        stored under ``pk``, as :meth:`delete` does. ``pk`` may be a saved
        document: its class then validates the changes, as a typed
        ``Query.update`` does (the document object itself is not changed).
        """
        self._check_writable()
        key = check_pk(_pk_of(pk, "update"))
        parsed = parse_changes(changes)
        if isinstance(pk, Document):
            parsed = documents.check_changes(type(pk), parsed)
        if not self._update_many([key], parsed):
            raise DoesNotExist(f"no record with pk {key!r}")
        return 1

    def upsert(self, data: Document | Mapping[str, Any], on: str) -> str:
        """Replace the record whose field ``on`` equals ``data``'s, or insert a new one.

        Return the pk (a document takes the pk of the record it replaces).
        ``on`` names a field that identifies records (an email): where several
        records hold the value, :class:`IntegrityError` and nothing is written.
        Atomic where the engine can make it so: in a transaction that other
        processes' upserts wait for, and with a unique index on ``on`` against
        every writer.
        """
        self._check_writable()
        path = parse_path(on)
        if isinstance(data, Document):
            value = get_path(dict(data.items()), path)
        elif isinstance(data, Mapping):
            value = get_path(data, path)
        else:
            raise ValidationError(
                f"upsert() takes a Document or a mapping, not {type(data).__name__}"
            )
        if value is MISSING or value is None:
            raise ValidationError(f"upsert on {on!r}: the data has no {on!r}", field=on)
        query = self.query().where(**{f"{on}__equals": value})
        key = f"upsert {on} {value!r}"

        def write() -> str:
            found = query[:2].values("pk")
            if len(found) > 1:
                raise IntegrityError(
                    f"upsert on {on!r}: several records hold {value!r} (pks {found!r}, ...)"
                )
            return self.save(data, primary_key=found[0] if found else None)

        try:
            with self._exclusive(key):
                return write()
        except IntegrityError:
            # A unique index refused a twin another writer inserted meanwhile:
            # that record is now the one to replace.
            if not query.exists():
                raise
            with self._exclusive(key):
                return write()

    def save_many(
        self, items: Iterable[Document | Mapping[str, Any]], batch_size: int = 1000
    ) -> list[str]:
        """Save many documents or mappings, committing once per batch; return their pks.

        On failure raise :class:`BulkWriteError` with ``.index`` (the failing
        item) and ``.written_pks``. With transactions a failing batch writes
        nothing; without, the records before the failing one stay.
        """
        self._check_writable()
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        written: list[str] = []
        start = 0  # the index of batch[0] among all items
        # Plain lists of the caller's items and of pks: no object per item
        # (tuples holding records would be work for the garbage collector).
        # islice takes each batch in C, no Python step per item; like a loop it
        # takes no item past the batch before saving it.
        it = iter(items)
        while batch := list(itertools.islice(it, batch_size)):
            self._save_batch(start, batch, written)
            start += len(batch)
        return written

    # ---- reading

    @overload
    def get(self, doc_class: type[D], pk: str) -> D: ...
    @overload
    def get(self, doc_class: None, pk: str) -> Document: ...

    def get(self, doc_class: type[D] | None, pk: str) -> D | Document:
        """The document under ``pk``; :class:`DoesNotExist` if missing or not a member."""
        if self.closed:
            self._check_open()
        # check_pk's tests inline for the common pk, which it would return unchanged: a
        # call fewer on the path of every get (check_pk raises for the others).
        if type(pk) is not str or not pk.isascii() or not pk or "\x00" in pk:
            check_pk(pk)
        record = self._load(pk)
        if doc_class is None:
            # Every record is a free-form Document: no member test, and what
            # from_record does for Document, without its lookups.
            if record is None:
                raise DoesNotExist(f"no Document with pk {pk!r}")
            doc = _new_document(Document)
            _SET_PK(doc, pk)
            _SET_STORAGE(doc, self)
            _SET_EXTRA(doc, record)
            return doc
        if record is None or not documents.is_member(doc_class, record):
            raise DoesNotExist(f"no {doc_class.__name__} with pk {pk!r}")
        return documents.from_record(doc_class, self, pk, record)

    def get_many(self, doc_class: type[D] | None, pks: Iterable[str]) -> list[D | None]:
        """Documents for several pks, aligned with them; None for missing or non-members."""
        cls: Any = doc_class or Document
        self._check_open()
        keys = [check_pk(pk) for pk in pks]
        out: list[D | None] = []
        for pk, record in zip(keys, self._load_many(keys), strict=True):
            if record is not None and documents.is_member(cls, record):
                out.append(documents.from_record(cls, self, pk, record))
            else:
                out.append(None)
        return out

    def get_or_create(
        self, doc_class: type[D], defaults: Mapping[str, Any] | None = None, **lookups: Any
    ) -> tuple[D, bool]:
        """The first member matching ``lookups`` and False, or a new one saved from them and True.

        Lookups are equalities only (others raise :class:`InvalidQuery`
        naming them); a new document takes its fields from them, then from
        ``defaults``. Atomic where the engine can make it so: the look-up and
        the save run under the storage lock, in a transaction that other
        processes' ``get_or_create`` of the same lookups wait for (where the
        engine has transactions); and where a unique index refuses the new
        document because another writer made its twin, that one is returned.
        """
        data = documents.creation_data(doc_class, lookups, defaults)
        query = self.query(doc_class).where(**lookups)  # also makes Meta.indexes
        found = query.first()
        if found is not None:
            return found, False
        doc = documents.new_document(doc_class, self, data)  # invalid: raises, writes nothing
        key = f"get_or_create {doc_class.__name__} {sorted(lookups.items())!r}"
        try:
            with self._exclusive(key):
                found = query.first()
                if found is not None:
                    return found, False
                self.save(doc)
        except IntegrityError:
            found = query.first()
            if found is None:
                raise
            return found, False
        return doc, True

    @overload
    def query(self, doc_class: None = None) -> BaseQuery[Document]: ...
    @overload
    def query(self, doc_class: type[D]) -> BaseQuery[D]: ...

    def query(self, doc_class: type[D] | None = None) -> BaseQuery[D] | BaseQuery[Document]:
        """A query over every record (or every member of ``doc_class``).

        The class's ``Meta.indexes`` are made first if this storage object has
        not made them yet, whatever wrote the records (``save_many`` of
        mappings, an import, another program): a query never runs without them.
        """
        self._check_open()
        if (
            doc_class is not None
            and doc_class not in self._indexed
            and doc_class not in self._index_failed
            and not self.read_only
        ):
            self._ensure_indexes_to_read(doc_class)
        return self.query_class(self, doc_class)

    def __contains__(self, pk: object) -> bool:
        self._check_open()
        return type(pk) is str and bool(pk) and self._contains(pk)

    def __len__(self) -> int:
        self._check_open()
        return self._count()

    def __iter__(self) -> Iterator[str]:
        self._check_open()
        return self._keys()

    # ---- removing

    def delete(self, pk: str | Document) -> None:
        """Delete the record under ``pk`` (or a saved document's); :class:`DoesNotExist` if none."""
        self._check_writable()
        key = check_pk(_pk_of(pk, "delete"))
        if not self._remove(key):
            raise DoesNotExist(f"no record with pk {key!r}")

    def delete_many(self, pks: Iterable[str | Document]) -> int:
        """Delete the records under several pks (or saved documents); return how many.

        All or nothing: if any pk has no record, :class:`DoesNotExist` names the
        missing ones and nothing is deleted. Where the engine has transactions
        this holds against other writers too; elsewhere the pks are checked
        first, so only a writer deleting one of them meanwhile can leave the
        deletion partial (the error then says so).
        """
        self._check_writable()
        keys = list(dict.fromkeys(check_pk(_pk_of(pk, "delete_many")) for pk in pks))
        with self._lock, self._atomic():
            missing = [pk for pk in keys if not self._contains(pk)]
            if missing:
                raise DoesNotExist(
                    f"no record with pk {', '.join(map(repr, missing[:10]))}"
                    + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
                    + ": nothing deleted"
                )
            removed = self._remove_many(keys)
            if removed != len(keys):
                partial = "" if self.features.transactions else f" ({removed} deleted)"
                raise DoesNotExist(
                    f"delete_many: {len(keys) - removed} of the records vanished while "
                    f"deleting{partial}"
                )
        return removed

    def clear(self) -> None:
        """Delete every record."""
        self._check_writable()
        self._clear()

    # ---- transactions and indexes

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Self]:
        """All writes in the block commit together at its end, or none do.

        Raises :class:`NotSupported` where the engine has no transactions.
        Nested blocks join the outermost one.
        """
        if not self.features.transactions:
            raise NotSupported(
                f"{self.backend} has no transactions (features.transactions is False)"
            )
        self._check_writable()
        with self._lock:
            if self._tx_depth:
                self._tx_depth += 1
                try:
                    yield self
                finally:
                    self._tx_depth -= 1
                return
            self._begin()
            self._tx_depth = 1
            try:
                yield self
            except BaseException:
                self._tx_depth = 0
                self._rollback()
                raise
            self._tx_depth = 0
            self._commit()

    @property
    def in_transaction(self) -> bool:
        """Whether a :meth:`transaction` block is open."""
        return self._tx_depth > 0

    def create_index(
        self,
        path_or_tuple: str | tuple[str, ...] | list[str],
        unique: bool = False,
        kind: str | None = None,
    ) -> None:
        """Create an index on a path or (compound) on a tuple of paths, ``-`` for descending.

        Raises :class:`NotSupported` for a kind or ``unique`` the engine lacks.
        On an engine without indexes a plain index succeeds and changes nothing.
        """
        self._check_writable()
        spec = self._parse_index(path_or_tuple, unique, kind)
        if spec.unique and not self.features.unique_indexes:
            raise NotSupported(f"{self.backend} has no unique indexes")
        if spec.kind is not None and spec.kind not in self.features.index_kinds:
            accepted = ", ".join(sorted(self.features.index_kinds)) or "none"
            raise NotSupported(
                f"{self.backend} has no index kind {spec.kind!r} (kinds: {accepted})"
            )
        if len(spec.keys) > 1 and not self.features.compound_indexes and self.features.indexes:
            raise NotSupported(f"{self.backend} has no compound indexes")
        if self.features.indexes:
            self._create_index(spec)

    def has_index(
        self,
        path_or_tuple: str | tuple[str, ...] | list[str],
        unique: bool = False,
        kind: str | None = None,
    ) -> bool:
        """Whether the engine holds the index :meth:`create_index` would make with these arguments.

        Asks the engine (its own list of indexes), not this object's memory.
        ``kind=None`` accepts any kind. Always False where ``features.indexes``
        is False.
        """
        self._check_open()
        if not self.features.indexes:
            return False
        return self._has_index(self._parse_index(path_or_tuple, unique, kind))

    def indexes(self) -> list[IndexSpec]:
        """The indexes this storage holds, as :meth:`create_index` received them.

        Empty on an engine without indexes. The command line shows them
        (``pymodels info``) and ``pymodels copy`` makes them on the destination.
        """
        self._check_open()
        return self._indexes() if self.features.indexes else []

    def ensure_indexes(self, doc_class: type[Document]) -> None:
        """Create the indexes ``doc_class.Meta.indexes`` asks for (idempotent)."""
        if self.read_only:
            warnings.warn(
                f"storage is read-only: indexes of {doc_class.__name__} not created",
                stacklevel=2,
            )
            self._indexed.add(doc_class)
            return
        if not self._can_index_now():
            return  # not marked indexed: a later save tries again
        for entry in documents.index_entries(doc_class):
            if isinstance(entry, Mapping):
                fields, unique, kind = (
                    entry["fields"],
                    entry.get("unique", False),
                    entry.get("kind"),
                )
            else:
                fields, unique, kind = entry, False, None
            if (
                not isinstance(fields, str)
                and len(fields) > 1
                and self.features.indexes
                and not self.features.compound_indexes
            ):
                # A class must stay savable on every backend: where compound
                # indexes are missing, its leading path is indexed instead.
                fields = fields[0]
            if kind is None:
                kind = self._index_kind(doc_class, fields)
            self.create_index(fields, unique=unique, kind=kind)
        self._indexed.add(doc_class)

    # ---- lifecycle

    def close(self) -> None:
        """Close the storage (idempotent). Later use raises :class:`PyModelsError`."""
        if not self.closed:
            self.closed = True
            self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def location(self) -> str | None:
        """Where the data lives, for people: a file path, a server and database, or None."""
        return None

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        where = self.location
        at = "" if where is None else f" at {where!r}"
        return f"<{self.backend}.{type(self).__name__}{at}{state}>"

    # ======================================================== internals

    def _check_open(self) -> None:
        check_usable(self)

    def _check_writable(self) -> None:
        check_usable(self, write=True)

    def _atomic(self) -> contextlib.AbstractContextManager[Any]:
        """A transaction where the engine has them, else nothing."""
        if self.features.transactions:
            return self.transaction()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _exclusive(self, key: str) -> Iterator[None]:
        """A block no other writer passing ``key`` runs at the same time, where the engine allows.

        The storage lock excludes this object's other threads; a transaction
        (where the engine has them) with :meth:`_serialize` excludes other
        processes. Read, decide and write inside it.
        """
        with self._lock, self._atomic():
            if self.features.transactions:
                self._serialize(key)
            yield

    def _ensure_indexes_to_read(self, doc_class: type[Document]) -> None:
        """Make ``doc_class``'s indexes before a query; a failure warns and the query runs.

        Reading must not fail for want of an index: an index the engine lacks
        (``unique`` where there are none) is reported by the class's saves.
        """
        try:
            self.ensure_indexes(doc_class)
        except PyModelsError as e:
            if isinstance(e, (ConnectionFailed, LockTimeout)):
                raise
            # Warned once; the class's saves still try (and report) it.
            self._index_failed.add(doc_class)
            warnings.warn(
                f"indexes of {doc_class.__name__} not made on {self.backend}: {e}", stacklevel=3
            )

    def _write_data(self, data: Any, primary_key: str | None, *, insert: bool) -> str:
        self._check_writable()
        pk = None if primary_key is None else check_pk(primary_key)
        if isinstance(data, Document):
            return self._save_document(data, pk, insert=insert)
        if not isinstance(data, Mapping):
            raise ValidationError(
                f"save() takes a Document or a mapping, not {type(data).__name__}"
            )
        return self._write_record(pk, stored_record(data), insert=insert)

    def _write_record(self, pk: str | None, record: dict[str, Any], *, insert: bool) -> str:
        if pk is None:
            while True:
                pk = self._new_pk()
                if self._store(pk, record, overwrite=False):
                    return pk
        if not self._store(pk, record, overwrite=not insert):
            raise IntegrityError(f"a record with pk {pk!r} exists already")
        return pk

    def _save_document(self, doc: Document, pk: str | None, *, insert: bool) -> str:
        """Save ``doc`` and, first, every unsaved document it references."""
        plan = documents.plan_save(doc, pk, insert=insert, new_pk=self._new_pk)
        for cls in plan.classes:
            if cls not in self._indexed:
                self.ensure_indexes(cls)
        with self._atomic():
            for write in plan.writes:
                if write.version_field is not None:
                    if not self._compare_and_store(
                        write.pk, write.record, write.version_field, write.expected
                    ):
                        raise ConflictError(
                            f"{type(write.doc).__name__} {write.pk!r} changed since it was "
                            f"loaded ({write.version_field} is no longer {write.expected!r})"
                        )
                elif not self._store(write.pk, write.record, overwrite=not write.insert):
                    raise IntegrityError(f"a record with pk {write.pk!r} exists already")
        # Only now, with every record written, do the documents learn their pks.
        documents.mark_saved(plan, self)
        return plan.pk

    def _save_batch(self, start: int, batch: list[Any], written: list[str]) -> None:
        docs = batch_has_documents(batch)
        if docs:
            # Before the batch's transaction: some engines (Tokyo Cabinet) cannot
            # build an index inside one, and the first save would then skip it.
            for cls in {type(item) for item in batch if isinstance(item, Document)}:
                if cls not in self._indexed:
                    self.ensure_indexes(cls)
        if docs or not self.features.transactions:
            self._save_batch_one_by_one(start, batch, written)
        else:
            self._save_batch_bulk(start, batch, written)

    def _save_batch_one_by_one(self, start: int, batch: list[Any], written: list[str]) -> None:
        done: list[str] = []
        index = start
        try:
            with self._atomic():
                for index, item in enumerate(batch, start):  # noqa: B007 - names the failure
                    done.append(self._write_data(item, None, insert=False))
        except (IntegrityError, ValidationError) as e:
            if not self.features.transactions:
                written.extend(done)
            raise BulkWriteError(
                f"save_many failed at item {index}: {e}", index=index, written_pks=written
            ) from e
        written.extend(done)

    def _save_batch_bulk(self, start: int, batch: list[Any], written: list[str]) -> None:
        records, failure = batch_records(start, batch)
        if failure is not None:
            index, e = failure
            raise BulkWriteError(
                f"save_many failed at item {index}: {e}", index=index, written_pks=written
            ) from e
        pks = self._new_pks(len(records))
        try:
            with self.transaction():
                self._store_many(zip(pks, records, strict=True))
        except IntegrityError:
            # Find the failing record: redo the batch one by one, which rolls
            # back again and raises BulkWriteError naming it.
            self._save_batch_one_by_one(start, batch, written)
            return
        written.extend(pks)

    def _parse_index(
        self, path_or_tuple: str | tuple[str, ...] | list[str], unique: bool, kind: str | None
    ) -> IndexSpec:
        names = [path_or_tuple] if isinstance(path_or_tuple, str) else list(path_or_tuple)
        if not names:
            raise ConfigurationError("create_index needs at least one path")
        keys = parse_order(names)
        if any(k.is_pk for k in keys):
            raise ConfigurationError("the pk is always indexed; name fields in create_index")
        return IndexSpec(keys, bool(unique), kind)


# ------------------------------------------------------------------ helpers


def batch_has_documents(batch: Sequence[Any]) -> bool:
    """Whether a ``save_many`` batch holds a Document (whose save plans its own writes:
    indexes, references, saved state), rather than plain mappings only."""
    # The set of item types is gathered in C: a batch of dicts alone (the common
    # case) needs no Python step per item.
    if set(map(type, batch)) <= {dict}:
        return False
    return any(type(item) is not dict and isinstance(item, Document) for item in batch)


def batch_records(
    start: int, batch: Sequence[Any]
) -> tuple[list[dict[str, Any]], tuple[int, ValidationError] | None]:
    """The stored records of a batch of mappings, up to its first invalid item, and that
    item's index (counted from ``start``) with its error; ``None`` when all are valid.

    For backends that write a batch of mappings their own way (``_save_batch``): they
    write the records, then raise ``BulkWriteError`` for the failure, if any.
    """
    records: list[dict[str, Any]] = []
    append = records.append
    for item in batch:
        # stored_record's common case without its call: a dict in stored form is
        # its own record (the loop runs for every record a bulk save writes).
        if type(item) is dict and stored_dict(item):
            append(item)
            continue
        try:
            if type(item) is dict:
                append(validate_record(item))
                continue
            if not isinstance(item, Mapping):
                raise ValidationError(
                    f"save_many takes Documents or mappings, not {type(item).__name__}"
                )
            append(stored_record(item))
        except ValidationError as e:
            # Every item before this one gave a record.
            return records, (start + len(records), e)
    return records, None


def _pk_of(pk: Any, method: str) -> Any:
    """A saved document's pk, or ``pk`` itself; an unsaved document is refused."""
    if isinstance(pk, Document):
        if pk.pk is None:
            raise PyModelsError(
                f"{method}(): the {type(pk).__name__} given was never saved, so it has no pk"
            )
        return pk.pk
    return pk


def _same(a: Any, b: Any) -> bool:
    if a is MISSING or b is MISSING:
        return a is b
    return strict_equal(a, b)


def _validate_settings(cls: type[BaseStorage], settings: Mapping[str, Any]) -> BaseSettings:
    model = cls.settings_class
    accepted = ", ".join(model.model_fields)
    try:
        return model(**settings)
    except pydantic.ValidationError as e:
        problems = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "settings"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown setting {key!r}")
            elif err["type"] == "missing":
                problems.append(f"missing setting {key!r}")
            else:
                # A validator's ValueError reads "Value error, <reason>": keep the reason.
                reason = err["msg"].removeprefix("Value error, ")
                problems.append(f"setting {key!r}: {reason}")
        raise ConfigurationError(
            f"{backend_module(cls)}: {'; '.join(problems)} (accepted settings: {accepted})"
        ) from e


def backend_module(cls: type) -> str:
    """The public module of a backend class: its module up to the first private part."""
    parts = cls.__module__.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and i > 0:
            return ".".join(parts[:i])
    return cls.__module__

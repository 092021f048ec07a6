"""Queries: lazy, immutable descriptions of a set of records.

:class:`BaseQuery` holds the public API every backend shares. Each builder
method returns a new query (peewee's clone-on-write); nothing reaches the
engine until a query is iterated, indexed, counted, printed or deleted.

A backend plugs in by subclassing :class:`BaseQuery` and overriding the
*engine hooks* (:data:`OPTIONAL_HOOKS`: ``_compile``, ``_engine_order``,
``_engine_fetch`` and the ``_engine_count``/``_engine_delete``/... fast
paths), and no other underscore name. The generic executor in this module
combines what the engine ran with exact filtering, sorting and slicing in
Python for whatever it could not, so every op works on every backend and
gives the reference answer.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, Self, TypeVar, overload

from . import documents
from .changes import parse_changes
from .conditions import ALL, And, Condition, Lookup, Not, Q, combine, parse_path, record_test
from .documents import Document, from_record, record_loader
from .errors import DoesNotExist, InvalidQuery, check_usable
from .ordering import (
    PK_ORDER,
    Descending,
    OrderKey,
    parsed_order,
    pks_in_order,
    record_sort_key,
    total_key,
)
from .values import INT_MAX, MISSING, check_pk, freeze, get_path

if TYPE_CHECKING:
    from .storage import BaseStorage

__all__ = ["OPTIONAL_HOOKS", "BaseQuery", "Compiled"]

#: The engine hooks a backend's query class may override, and no other
#: underscore name (``docs/backends.md`` says when to override each).
OPTIONAL_HOOKS: tuple[str, ...] = (
    "_compile",
    "_engine_order",
    "_engine_fetch",
    "_engine_count",
    "_engine_delete",
    "_engine_explain",
)

_new = object.__new__

D = TypeVar("D", bound="Document")

#: The path ``values("pk")`` and ``order_by("pk")`` name: the primary key.
_PK_PATH = ("pk",)

#: A stored record with its pk, as engines hand them out.
Item = tuple[str, dict[str, Any]]

#: How many records to load from the engine at a time (the executor's and
#: backends' batches of ``_load_many`` and the like).
BATCH_SIZE = 1000


class Compiled(NamedTuple):
    """A condition as a backend compiled it.

    ``native`` is the engine's form of (a superset of) the condition, or None
    for "every record". ``residual`` is what Python must still check on each
    record the engine returns (None when ``native`` is exact).
    """

    native: Any
    residual: Condition | None
    description: str = ""


def _bad_bound(value: object) -> bool:
    """Whether ``value`` cannot be a slice bound or index (an int in [0, 2**63-1])."""
    return type(value) is not int or not 0 <= value <= INT_MAX


def _bound_error(value: int) -> str:
    if value < 0:
        return f"queries take no negative indices or bounds (got {value})"
    return f"query index or bound {value} is beyond int64 (2**63-1)"


class BaseQuery(Generic[D]):
    """A lazy, immutable query over one storage (and optionally one class)."""

    # ------------------------------------------------------------------ state

    def __init__(self, storage: BaseStorage, doc_class: type[D] | None = None) -> None:
        self.storage = storage
        self.doc_class = doc_class
        self._where: Condition = ALL
        self._order: tuple[OrderKey, ...] = ()
        # The total order: the order_by keys, then the pk (kept, not rebuilt per run).
        self._full_order: tuple[OrderKey, ...] = PK_ORDER
        self._offset = 0
        self._limit: int | None = None
        self._only: tuple[str, ...] | None = None
        self._after: tuple[str, dict[str, Any]] | None = None
        # The compiled condition, made on first use (see _compiled).
        self._compiled_cache: Compiled | None = None

    def _clone(self, changes: dict[str, Any]) -> Self:
        # A dict, not **changes: keyword packing costs about 0.1 µs a call.
        new = _new(self.__class__)
        state = self.__dict__.copy()
        state.update(changes)
        # What was compiled for the old query does not hold for the new one.
        state["_compiled_cache"] = None
        new.__dict__ = state
        return new

    def _clone_with(self, name: str, value: Any) -> Self:
        # _clone of one change, for where() and q[:n] (run per query): no dict
        # of changes built and merged.
        new = _new(self.__class__)
        state = self.__dict__.copy()
        state[name] = value
        state["_compiled_cache"] = None
        new.__dict__ = state
        return new

    # ------------------------------------------------------- engine hooks
    # A backend overrides these. The defaults ask the storage's side of them
    # (``_compile_condition``, ``_select``, ...), whose own defaults describe
    # an engine that can only list every record: everything else happens in
    # Python. ``self.storage`` is reached through storage hooks only.

    def _compile(self, condition: Condition) -> Compiled:
        """Translate ``condition`` for the engine (hook).

        Return the native form of the condition (or of a superset of it) and
        the residual that Python must check. The default asks the storage's
        ``_compile_condition``.
        """
        return self.storage._compile_condition(condition)

    def _engine_order(self, order: tuple[OrderKey, ...], native: Any) -> bool:
        """Whether the engine sorts what ``native`` selects by all of ``order`` exactly (hook).

        Exactly: as the contract's total order does.
        """
        return False

    def _engine_fetch(
        self,
        native: Any,
        order: tuple[OrderKey, ...] | None,
        offset: int,
        limit: int | None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(pk, record)`` pairs the engine selects with ``native`` (hook).

        ``order`` is given only when :meth:`_engine_order` accepted it, and
        ``offset``/``limit`` are non-trivial only when the result needs no
        filtering in Python. The default asks the storage's ``_select``.
        """
        return iter(self.storage._select(native, order, offset, limit))

    def _engine_count(self, native: Any) -> int:
        """Count what ``native`` selects (optional fast path)."""
        return sum(1 for _ in self._engine_fetch(native, None, 0, None))

    def _engine_delete(self, native: Any) -> int | None:
        """Delete what ``native`` selects and return how many (optional fast path).

        Return None to let the generic code delete by pk instead. The default
        asks the storage's ``_delete_where``.
        """
        return self.storage._delete_where(native)

    def _engine_explain(
        self,
        compiled: Compiled,
        order: tuple[OrderKey, ...] | None,
        offset: int,
        limit: int | None,
    ) -> str:
        """What the engine would run, for humans (optional).

        ``order`` is given when :meth:`_engine_order` accepted it;
        ``offset``/``limit`` are the query's slice when Python filters nothing
        after the engine (else 0 and None).
        """
        return compiled.description or repr(compiled.native)

    # ------------------------------------------------------------ building

    @property
    def condition(self) -> Condition:
        """The whole condition: class membership and every ``where``."""
        if self.doc_class is None:
            return self._where
        membership = documents.membership(self.doc_class)
        return And.of(membership, self._where) if membership != ALL else self._where

    def where(self, *conditions: Condition, **lookups: Any) -> Self:
        """Records for which every argument holds (AND)."""
        cond = combine(conditions, lookups)
        if self.doc_class is not None:
            self._check_paths(cond)
        if self._offset or self._limit is not None:
            self._unsliced("where")
        return self._clone_with("_where", cond if self._where is ALL else And.of(self._where, cond))

    def where_not(self, *conditions: Condition, **lookups: Any) -> Self:
        """Records for which each argument fails (each negated, then ANDed)."""
        parts = [Not(c) if not isinstance(c, Not) else c.child for c in conditions]
        parts += [Not(Q(**{k: v})) for k, v in lookups.items()]
        cond = Q(*parts)
        self._check_paths(cond)
        return self._unsliced("where_not")._clone({"_where": And.of(self._where, cond)})

    def order_by(self, *names: str) -> Self:
        """Sort by these paths; ``"-name"`` descends and ``"pk"`` is the primary key."""
        keys, full = parsed_order(names)
        if self.doc_class is not None:
            for k in keys:
                if not k.is_pk:
                    self._check_path(k.path, f"order_by({str(k)!r})")
        return self._unsliced("order_by")._clone({"_order": keys, "_full_order": full})

    def only(self, *names: str) -> Self:
        """Load just these fields; such documents cannot be saved."""
        for name in names:
            self._check_path(parse_path(name), f"only({name!r})")
        return self._clone({"_only": tuple(names)})

    def after(self, doc_or_pk: Document | str) -> Self:
        """Continue after this document in the query's order (keyset pagination)."""
        if isinstance(doc_or_pk, Document):
            if doc_or_pk.pk is None:
                raise InvalidQuery("after() needs a saved document")
            anchor = (doc_or_pk.pk, documents.stored_values(doc_or_pk))
        else:
            check_usable(self.storage)
            record = self.storage._load(check_pk(doc_or_pk))
            if record is None:
                raise DoesNotExist(f"no record with pk {doc_or_pk!r}")
            anchor = (doc_or_pk, record)
        return self._unsliced("after")._clone({"_after": anchor})

    def _unsliced(self, method: str) -> Self:
        if self._offset or self._limit is not None:
            raise InvalidQuery(f"{method}() cannot follow a slice; slice last")
        return self

    def _check_paths(self, cond: Condition) -> None:
        if self.doc_class is None:
            return
        if type(cond) is Lookup:
            documents.check_lookup(self.doc_class, cond)
            return
        for lookup in cond.lookups():
            documents.check_lookup(self.doc_class, lookup)

    def _check_path(self, path: tuple[str, ...], where: str) -> None:
        if self.doc_class is not None:
            documents.check_query_path(self.doc_class, path, where)

    # -------------------------------------------------------------- slicing

    @overload
    def __getitem__(self, index: int) -> D: ...
    @overload
    def __getitem__(self, index: slice) -> Self: ...

    def __getitem__(self, index: int | slice) -> D | Self:
        # One check for every backend: each engine would fail differently on a
        # negative, stepped or beyond-int64 bound (or quietly wrap it).
        if isinstance(index, slice):
            stop = index.stop
            if (
                index.start is None
                and index.step is None
                and type(stop) is int
                and 0 <= stop <= INT_MAX
                and not self._offset
                and self._limit is None
            ):
                # q[:n] of an unsliced query, the commonest slice: the general
                # path below gives offset 0 and limit n, and raises nothing.
                return self._clone_with("_limit", stop)
            if index.step is not None and (_bad_bound(index.step) or index.step != 1):
                raise InvalidQuery(f"query slices take no step (got {index.step!r})")
            for bound in (index.start, index.stop):
                if bound is not None and _bad_bound(bound):
                    if isinstance(bound, bool) or not isinstance(bound, int):
                        raise TypeError("query slice bounds must be ints")
                    raise InvalidQuery(_bound_error(bound))
            start = 0 if index.start is None else index.start
            offset = self._offset + start
            if offset > INT_MAX:
                raise InvalidQuery(f"query offset {offset} is beyond int64 (2**63-1)")
            limit = self._limit
            if limit is not None:
                limit = max(0, limit - start)
            if index.stop is not None:
                stop_limit = max(0, index.stop - start)
                limit = stop_limit if limit is None else min(limit, stop_limit)
            if limit is not None:
                # No storage holds 2**63 records: capping offset + limit there
                # changes no answer and keeps both in every engine's range.
                limit = min(limit, INT_MAX - offset)
            return self._clone({"_offset": offset, "_limit": limit})
        if _bad_bound(index):
            if isinstance(index, bool) or not isinstance(index, int):
                raise TypeError(f"query indices must be ints or slices, not {type(index).__name__}")
            raise InvalidQuery(_bound_error(index))
        for doc in self[index:][:1]:  # not [index : index + 1]: 2**63-1 + 1 is no bound
            return doc
        raise IndexError(f"query index {index} out of range")

    # ------------------------------------------------------------ execution

    @property
    def _compiled(self) -> Compiled:
        value = self._compiled_cache
        if value is None:
            value = self._compiled_cache = self._compile(self.condition)
        return value

    def _fetching(self, order: tuple[OrderKey, ...]) -> Compiled:
        """The compiled condition, its native narrowed to ``after()``'s anchor if any."""
        compiled = self._compiled
        if self._after is None:
            return compiled
        native = self.storage._bound_after(compiled.native, order, *self._after)
        return compiled._replace(native=native)

    def _residual_matches(self, order: tuple[OrderKey, ...]) -> Callable[[Item], bool] | None:
        """A predicate over ``(pk, record)`` items for what Python must still check, or
        None when the engine selects exactly."""
        residual = self._compiled.residual
        after = self._after
        if after is None:
            if residual is None:
                return None
            matches = record_test(residual)
            return lambda item: matches(item[1])
        test = None if residual is None else record_test(residual)
        anchor_key = total_key(after[0], after[1], order)

        def check(item: Item) -> bool:
            pk, record = item
            if test is not None and not test(record):
                return False
            return _after(total_key(pk, record, order), anchor_key, order)

        return check

    def _items(self, limit: int | Literal["query"] | None = "query") -> Iterator[Item]:
        """The ``(pk, record)`` pairs of this query, ordered and sliced.

        Not a generator: the common case hands out the engine's own iterator,
        with no Python frame resumed per record. ``limit`` replaces the
        query's own (``first()`` asks for one without building a new query).
        """
        if self.storage.closed:
            check_usable(self.storage)
        if limit == "query":
            limit = self._limit
        if limit != 0 and self._after is None:
            # A short exact result (first(), q[:10], a lookup of a few records)
            # straight from the engine, before compiling, where it can (the
            # storage's _select_page).
            condition = self._where if self.doc_class is None else self.condition
            page = self.storage._select_page(condition, self._full_order, self._offset, limit)
            if page is not None:
                return iter(page)
        offset = self._offset
        order = self._full_order
        compiled = self._fetching(order)
        exact = compiled.residual is None and self._after is None
        check = None if exact else self._residual_matches(order)
        if limit == 0:
            return iter(())
        if self._engine_order(order, compiled.native):
            if check is None:
                return self._engine_fetch(compiled.native, order, offset, limit)
            stop = None if limit is None else offset + limit
            if stop is not None and compiled.native is not self._compiled.native:
                # after() with a bound from the anchor: most rows the engine gives pass,
                # so a page asks the engine for a few more than it needs (the anchor's
                # ties on the first key come first) and streams only if they fall short.
                asked = stop + 1 + AFTER_SLACK
                head = list(self._engine_fetch(compiled.native, order, 0, asked))
                passing = [item for item in head if check(item)]
                if len(passing) >= stop or len(head) < asked:
                    return iter(passing[offset:stop])
            stream = self._engine_fetch(compiled.native, order, 0, None)
            return itertools.islice(filter(check, stream), offset, stop)
        return self._sorted_in_python(compiled, order, check, offset, limit)

    def _sorted_in_python(
        self,
        compiled: Compiled,
        order: tuple[OrderKey, ...],
        check: Callable[[Item], bool] | None,
        offset: int,
        limit: int | None,
    ) -> Iterator[Item]:
        # The engine cannot order: keep only sort keys and pks, sort them, then load
        # the records of the slice in batches.
        fetched = self._engine_fetch(compiled.native, None, 0, None)
        passing = fetched if check is None else filter(check, fetched)
        if limit is not None:
            # A slice holds only its offset + limit first keys (a bounded heap),
            # not one per match. The total order ends with the unique pk, so no
            # two keys tie and the heap picks exactly what the full sort would.
            heap_key = _heap_key(order)
            matches = ((heap_key(pk, record), pk) for pk, record in passing)
            chosen = [pk for _, pk in heapq.nsmallest(offset + limit, matches)][offset:]
            yield from self._load_in_batches(chosen)
            return
        # The whole order: an external merge sort, so that a stream holds a run of sort
        # keys, not one per match.
        with contextlib.closing(pks_in_order(passing, order, "the sort keys of a query")) as pks:
            yield from self._load_in_batches(itertools.islice(pks, offset, None))

    def _load_in_batches(self, pks: Iterable[str]) -> Iterator[Item]:
        """The records of ``pks`` in their order, loaded :data:`BATCH_SIZE` at a time
        (one deleted meanwhile is left out)."""
        it = iter(pks)
        while batch := list(itertools.islice(it, BATCH_SIZE)):
            for pk, loaded in zip(batch, self.storage._load_many(batch), strict=True):
                if loaded is not None:
                    yield pk, loaded

    def __iter__(self) -> Iterator[D]:
        return itertools.starmap(self._materializer(), self._items())

    def _materializer(self) -> Any:
        cls: type[Document] = self.doc_class or Document
        only = self._only
        storage = self.storage
        if only is None:
            return record_loader(cls, storage)
        paths = [parse_path(n) for n in only]

        def project(pk: str, record: dict[str, Any]) -> Document:
            projected: dict[str, Any] = {}
            for path in paths:
                value = get_path(record, path)
                if value is not MISSING:
                    target = projected
                    for part in path[:-1]:
                        target = target.setdefault(part, {})
                    target[path[-1]] = value
            return from_record(cls, storage, pk, projected, partial=True)

        return project

    def _matching(self) -> Iterator[Item]:
        """Every matching record, unordered and unsliced (for counting and testing)."""
        items = self._engine_fetch(self._fetching(self._full_order).native, None, 0, None)
        check = self._residual_matches(self._full_order)
        return items if check is None else filter(check, items)

    def count(self) -> int:
        """How many records match (honouring a slice)."""
        check_usable(self.storage)
        if self._residual_matches(self._full_order) is None:
            total = self._engine_count(self._compiled.native)
        else:
            # Order cannot change a count: no sorting, no second read.
            total = _count(self._matching())
        total = max(0, total - self._offset)
        return total if self._limit is None else min(total, self._limit)

    def exists(self) -> bool:
        """Whether at least one record matches."""
        check_usable(self.storage)
        if self._offset or self._limit is not None:
            return self.count() > 0
        if self._residual_matches(self._full_order) is None:
            return any(True for _ in self._engine_fetch(self._compiled.native, None, 0, 1))
        return any(True for _ in self._matching())

    def __bool__(self) -> bool:
        return self.exists()

    def first(self) -> D | None:
        """The first document in order, or None."""
        for pk, record in self._items(1 if self._limit is None else min(self._limit, 1)):
            if self._only is not None:
                return self._materializer()(pk, record)  # type: ignore[no-any-return]
            doc = from_record(self.doc_class or Document, self.storage, pk, record)
            return doc  # type: ignore[return-value]
        return None

    def values(self, name: str, *names: str) -> list[Any]:
        """The distinct values of a field among matching records, in query order.

        ``values("pk")`` gives the primary keys. With several names, tuples of
        their values (``None`` for a missing one) over the records that have at
        least one of them, deduplicated the same way (``values_list`` elsewhere).
        """
        paths = []
        for n in (name, *names):
            path = parse_path(n)
            if path != _PK_PATH:
                self._check_path(path, f"values({n!r})")
            paths.append(path)
        seen: set[Any] = set()
        out: list[Any] = []
        if not names:
            path = paths[0]
            for pk, record in self._items():
                value = pk if path == _PK_PATH else get_path(record, path)
                if value is MISSING:
                    continue
                frozen = freeze(value)
                if frozen not in seen:
                    seen.add(frozen)
                    out.append(value)
            return out
        for pk, record in self._items():
            row = [pk if p == _PK_PATH else get_path(record, p) for p in paths]
            if all(v is MISSING for v in row):
                continue
            # MISSING itself in the key: a missing value differs from every stored one.
            frozen = tuple(v if v is MISSING else freeze(v) for v in row)
            if frozen not in seen:
                seen.add(frozen)
                out.append(tuple(None if v is MISSING else v for v in row))
        return out

    def delete(self) -> int:
        """Delete exactly the records iteration yields; return how many."""
        check_usable(self.storage, write=True)
        if (
            self._offset == 0
            and self._limit is None
            and self._residual_matches(self._full_order) is None
        ):
            deleted = self._engine_delete(self._compiled.native)
            if deleted is not None:
                return deleted
        pks = [pk for pk, _ in self._items()]
        return self.storage._remove_many(pks)

    def update(self, **changes: Any) -> int:
        """Apply partial changes (``f=v``, ``f__unset=True``, ``f__inc=n``) to every match.

        Returns how many records changed. On a class's query every change is
        first validated against the declared field (:class:`ValidationError`
        naming it, nothing written); a saved document as a value stands for
        its pk.
        """
        check_usable(self.storage, write=True)
        parsed = parse_changes(changes)
        if self.doc_class is not None:
            # Nothing is written that the class could not load back.
            parsed = documents.check_changes(self.doc_class, parsed)
        pks = [pk for pk, _ in self._items()]
        return self.storage._update_many(pks, parsed)

    # ---------------------------------------------------------- set algebra

    def _combine(self, other: BaseQuery[Any], op: str) -> Self:
        if not isinstance(other, BaseQuery):
            return NotImplemented
        if other.storage is not self.storage or other.doc_class is not self.doc_class:
            raise InvalidQuery(f"{op} needs two queries over the same storage and class")
        for q in (self, other):
            if q._offset or q._limit is not None or q._after is not None:
                raise InvalidQuery(f"{op} takes unsliced queries without after()")
        if op == "&":
            where = And.of(self._where, other._where)
        elif op == "|":
            where = Q(self._where) | Q(other._where)
        else:
            where = And.of(self._where, Not(other._where))
        return self._clone({"_where": where})

    def __and__(self, other: BaseQuery[Any]) -> Self:
        return self._combine(other, "&")

    def __or__(self, other: BaseQuery[Any]) -> Self:
        return self._combine(other, "|")

    def __sub__(self, other: BaseQuery[Any]) -> Self:
        return self._combine(other, "-")

    # ----------------------------------------------------------- for humans

    def explain(self) -> str:
        """What the engine runs and what Python does after it."""
        order = self._full_order
        compiled = self._fetching(order)
        native_order = self._engine_order(order, compiled.native)
        exact = compiled.residual is None and self._after is None
        offset, limit = (self._offset, self._limit) if exact else (0, None)
        engine = self._engine_explain(compiled, order if native_order else None, offset, limit)
        lines = [
            f"backend: {self.storage.backend}",
            f"condition: {self.condition!r}",
            f"engine: {engine}",
            f"python filter: {compiled.residual!r}"
            if compiled.residual is not None
            else "python filter: none",
            f"order: {', '.join(map(str, order))} ({'engine' if native_order else 'python'})",
        ]
        if self._after is not None:
            seeks = compiled.native is not self._compiled.native
            how = "engine from the anchor, python past it" if seeks else "python"
            lines.append(f"after: pk {self._after[0]!r} ({how})")
        if self._offset or self._limit is not None:
            lines.append(f"slice: offset {self._offset}, limit {self._limit}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        name = self.doc_class.__name__ if self.doc_class is not None else "Document"
        if self.storage.closed:
            return f"<Query {name} (storage closed)>"
        docs = list(self[:11])
        shown = ", ".join(repr(d) for d in docs[:10])
        more = ""
        if len(docs) > 10:
            more = f" ...and {self.count() - 10} more"
        return f"<Query {name}: [{shown}]{more}>"

    # No __len__ (count() asks the engine): list(query) calls __len__ for a size hint,
    # and one that raised cost every list() an exception.


#: Rows beyond a page and its anchor that an ``after()`` page asks the engine for at first.
AFTER_SLACK = 8


def _count(items: Iterable[Any]) -> int:
    """How many items there are, counted in C (no Python frame resumed per item)."""
    counter = itertools.count()
    collections.deque(zip(items, counter, strict=False), maxlen=0)
    return next(counter)


def _heap_key(order: tuple[OrderKey, ...]) -> Any:
    """``(pk, record) -> key`` whose ascending order is the total ``order``, directions included.

    What :func:`sort_keyed` does in one stable pass per key, as one
    comparable key, so ``heapq.nsmallest`` can keep only a slice's keys.
    """
    if not any(k.descending for k in order):
        return lambda pk, record: total_key(pk, record, order)
    keys = tuple(order)

    def key(pk: str, record: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(
            Descending(record_sort_key(pk, record, k))
            if k.descending
            else record_sort_key(pk, record, k)
            for k in keys
        )

    return key


def _after(key: tuple[Any, ...], anchor: tuple[Any, ...], order: tuple[OrderKey, ...]) -> bool:
    """Whether ``key`` comes strictly after ``anchor`` in the total order."""
    for k, a, o in zip(key, anchor, order, strict=True):
        if k != a:
            return bool(k < a) if o.descending else bool(k > a)
    return False

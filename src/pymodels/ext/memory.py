"""In-memory backend: the reference.

Engine: Python dicts in this process. Dependencies: none.
Suits: tests, prototypes, caches; it defines the answers every other backend
must give (queries evaluate :mod:`pymodels.conditions` directly).
Indexes: ``create_index``/``Meta.indexes`` build indexes of its own (records
grouped by the value at the first path, each group in the total order of the
other keys then the pk); they answer equality on the first path, and in order
without a sort when the query's order is the index's. The pks are kept in
ascending order too, so a query in pk order streams without a list of its
matches. Every answer is the scan's: an index only chooses which records the
condition is evaluated on.
Limits: nothing persists; one process. Storages opened with the same
``name`` (``memory://name``) share one namespace (records and indexes)
within the process.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

from ..backend import (
    ALL,
    COMPARISONS,
    MISSING,
    OPS,
    PK_ORDER,
    And,
    BaseQuery,
    BaseSettings,
    BaseStorage,
    Compiled,
    Condition,
    Features,
    IndexSpec,
    Item,
    Lookup,
    OrderKey,
    copy_value,
    freeze,
    get_path,
    record_test,
    sort_items,
    sort_key,
)

__all__ = ["Query", "Settings", "Storage", "features"]

features = Features(
    ops=dict.fromkeys(OPS, "native"),
    transactions=True,
    indexes=True,
    compound_indexes=True,
    thread_safe=True,
    fork_safe=True,
    concurrent_processes=False,
    persistent=False,
)

Record = dict[str, Any]


# ------------------------------------------------------------------ indexes


_PK_ASC = OrderKey(())
_PK_DESC = (OrderKey((), True),)


def _sort_key_at(record: Record, path: tuple[str, ...]) -> tuple[Any, ...]:
    """The ascending sort key of the value at ``path`` (absent first), as ordering sorts it."""
    value = record.get(path[0], MISSING) if len(path) == 1 else get_path(record, path)
    return (0,) if value is MISSING else sort_key(value)


class _Group:
    """The records of one index whose first path holds one value (strictly equal values)."""

    __slots__ = ("entries", "ordered")

    def __init__(self) -> None:
        # pk -> the ascending sort keys of the index's other keys.
        self.entries: dict[str, tuple[Any, ...]] = {}
        # The pks in the index's order; None after a write (sorted again when asked).
        self.ordered: list[str] | None = None

    def pks(self, rest: tuple[OrderKey, ...], lock: threading.RLock) -> list[str]:
        """The group's pks in the order of ``rest``, then pk ascending.

        The list is never changed once made (a write makes a new one), so a
        query may iterate it while others write. It is made under the
        namespace's lock, which every writer holds: a list sorted from entries
        a writer changed meanwhile would otherwise be kept as current.
        """
        ordered = self.ordered
        if ordered is None:
            with lock:
                ordered = self.ordered
                if ordered is None:
                    items = sorted(self.entries.items(), key=operator.itemgetter(0))
                    # Stable sorts from the last key to the first: each key its own
                    # direction, exactly as ordering.sort_items does for the scan.
                    for i in reversed(range(len(rest))):
                        items.sort(key=lambda item, i=i: item[1][i], reverse=rest[i].descending)  # type: ignore[misc]
                    ordered = self.ordered = [pk for pk, _ in items]
        return ordered


class _Index:
    """Records grouped by the value at the first path; each group in the other keys' order."""

    def __init__(self, keys: tuple[OrderKey, ...]) -> None:
        self.keys = keys
        self.path = keys[0].path
        self.rest = keys[1:]
        #: The order a group's pks come in: the other keys, then the pk.
        self.order = (*self.rest, _PK_ASC)  # index keys never name the pk
        self.groups: dict[Any, _Group] = {}
        self.group_of: dict[str, Any] = {}  # pk -> its group's key

    def add(self, pk: str, record: Record) -> None:
        if pk in self.group_of:
            self.remove(pk)
        path = self.path
        value = record.get(path[0], MISSING) if len(path) == 1 else get_path(record, path)
        if value is MISSING:
            return  # equality never matches an absent field
        # freeze: equal forms exactly when the values are strictly equal (1 and 1.0, not True).
        key = ("str", value) if type(value) is str else freeze(value)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group()
        rest = self.rest
        if len(rest) == 1:
            group.entries[pk] = (_sort_key_at(record, rest[0].path),)
        else:
            group.entries[pk] = tuple(_sort_key_at(record, k.path) for k in rest)
        group.ordered = None
        self.group_of[pk] = key

    def remove(self, pk: str) -> None:
        key = self.group_of.pop(pk, MISSING)
        if key is MISSING:
            return
        group = self.groups[key]
        del group.entries[pk]
        group.ordered = None
        if not group.entries:
            del self.groups[key]

    def clear(self) -> None:
        self.groups.clear()
        self.group_of.clear()

    def describe(self) -> str:
        return "(" + ", ".join(map(str, self.keys)) + ")"


class _Namespace:
    """One namespace of records, with what keeps it searchable: its indexes and sorted pks."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.indexes: dict[tuple[OrderKey, ...], _Index] = {}
        # Writers hold it; readers never wait (they read snapshots, see _Group.pks).
        self.lock = threading.RLock()
        # Every pk in ascending order, or None when a write broke the order (sorted
        # again when asked). Generated pks grow, so saving them appends.
        self._pks: list[str] | None = []
        # Whether the dict's own order (insertion order) is ascending pk order: true
        # while every new pk was greater than every earlier one, which generated pks
        # are. Then a scan walks the dict itself (see _walk), several times faster
        # than looking each pk up in turn.
        self.in_pk_order = True
        self._max_pk: str | None = None

    def sorted_pks(self) -> list[str]:
        """Every pk, ascending. Never changed in place except by appending a greater pk."""
        pks = self._pks
        if pks is None:
            with self.lock:
                pks = self._pks = sorted(self.records)
        return pks

    def put(self, pk: str, record: Record) -> None:
        """Store ``record`` (the namespace's own copy) under ``pk``; the caller holds the lock."""
        records = self.records
        if pk not in records:
            if self._max_pk is None or self._max_pk < pk:
                self._max_pk = pk
                if self._pks is not None:
                    self._pks.append(pk)  # an iterator over it may see it: a live cursor
            else:
                self._pks = None
                self.in_pk_order = False
        records[pk] = record
        for index in self.indexes.values():
            index.add(pk, record)

    def pop(self, pk: str) -> bool:
        """Remove the record under ``pk``; the caller holds the lock."""
        if self.records.pop(pk, None) is None:
            return False
        # Never delete from the list in place: an iterator over it would skip a pk.
        self._pks = None
        for index in self.indexes.values():
            index.remove(pk)
        return True

    def clear(self) -> None:
        self.records.clear()
        self._pks = []
        self.in_pk_order = True
        self._max_pk = None
        for index in self.indexes.values():
            index.clear()

    def add_index(self, keys: tuple[OrderKey, ...]) -> None:
        with self.lock:
            if keys not in self.indexes:
                index = _Index(keys)
                for pk, record in self.records.items():
                    index.add(pk, record)
                self.indexes[keys] = index


# Named namespaces shared by every storage of this process opened with that name.
_NAMED: dict[str, _Namespace] = {}
_NAMED_LOCK = threading.Lock()


# --------------------------------------------------------- record tests


def _item_test(cond: Condition) -> Callable[[tuple[str, Record | None]], bool]:
    """A test of ``(pk, record or None)`` pairs: the record exists and matches ``cond``.

    One call per record: the specialised leaves of
    :func:`~pymodels.conditions.record_test` are spelled here again over the pair
    rather than wrapped (a second call per record costs as much as the test itself).
    """
    if cond == ALL:
        return lambda item: item[1] is not None
    if type(cond) is Lookup and len(cond.path) == 1:
        name, op, value = cond.path[0], cond.op, cond.value
        t = type(value)
        if op == "equals" and t is str:
            return lambda item: (r := item[1]) is not None and r.get(name) == value
        if op in COMPARISONS and (t is int or t is float):
            cmp = COMPARISONS[op]
            return lambda item: (
                (r := item[1]) is not None
                and (type(x := r.get(name)) is int or type(x) is float)
                and cmp(x, value)
            )
    test = record_test(cond)
    return lambda item: (r := item[1]) is not None and test(r)


def _count_records(records: Iterable[Record], cond: Condition) -> int | None:
    """How many of ``records`` match ``cond`` when it is a number comparison, else None.

    The count of every record against ``age > 50``, the commonest unindexed count,
    as one generator expression per operator: the test runs inline in the
    expression's frame, where ``map`` with :func:`_item_test`'s lambda calls a
    Python function per record (half as much again as the test). Same decision
    as :func:`~pymodels.conditions.record_test`: an int or a float, never a bool or a Decimal.
    """
    if type(cond) is not Lookup or len(cond.path) != 1 or cond.op not in COMPARISONS:
        return None
    name, op, v = cond.path[0], cond.op, cond.value
    if type(v) is not int and type(v) is not float:
        return None
    if op == "gt":
        return sum(
            1 for r in records if (type(x := r.get(name)) is int or type(x) is float) and x > v
        )
    if op == "gte":
        return sum(
            1 for r in records if (type(x := r.get(name)) is int or type(x) is float) and x >= v
        )
    if op == "lt":
        return sum(
            1 for r in records if (type(x := r.get(name)) is int or type(x) is float) and x < v
        )
    return sum(1 for r in records if (type(x := r.get(name)) is int or type(x) is float) and x <= v)


def _matching(items: Iterable[tuple[str, Record]], cond: Condition) -> Iterator[tuple[str, Record]]:
    """The ``(pk, record)`` pairs of ``items`` (no record None) that match ``cond``.

    Every item, or equality to a str on a top-level field (the commonest unindexed
    ``first()``), as a generator expression: its test runs inline in the
    expression's frame, where ``filter`` with :func:`_item_test`'s lambda calls a
    Python function per record (over 100,000 workload records a scan for a name
    took 2.4x a plain loop through ``filter``, 1.3x this way). The test is
    :func:`~pymodels.conditions.record_test`'s for that leaf.
    """
    if cond == ALL:
        return iter(items)
    if type(cond) is Lookup and len(cond.path) == 1 and cond.op == "equals":
        name, value = cond.path[0], cond.value
        if type(value) is str:
            return ((pk, r) for pk, r in items if r.get(name) == value)
    return filter(_item_test(cond), items)


def _walk(ns: _Namespace, cond: Condition, reverse: bool) -> Iterator[tuple[str, Record]]:
    """The ``(pk, record)`` pairs matching ``cond`` in pk order, whatever is written meanwhile.

    Walks the dict itself while its order is pk order. A write that changes its
    size stops a dict iteration (RuntimeError); the walk then goes on from the
    sorted pks, after the last pk it gave.
    """
    records = ns.records
    last: str | None = None
    if ns.in_pk_order:
        hits = _matching(reversed(records.items()) if reverse else records.items(), cond)
        while True:
            try:
                item = next(hits)
            except StopIteration:
                return
            except RuntimeError:
                break  # the dict changed size
            if not ns.in_pk_order:
                break  # a smaller pk came in: the dict's order is no longer the pks'
            last = item[0]
            yield item
    pks = ns.sorted_pks()
    if reverse:
        stop = len(pks) if last is None else bisect.bisect_left(pks, last)
        rest: Iterable[str] = reversed(pks[:stop])
    else:
        start = 0 if last is None else bisect.bisect_right(pks, last)
        rest = itertools.islice(pks, start, None)
    test = _item_test(cond)
    for pk in rest:
        record = records.get(pk)
        if record is not None and test((pk, record)):
            yield pk, record


def _copied(item: tuple[str, Record]) -> Item:
    return item[0], copy_value(item[1])


def _equalities(cond: Condition) -> Iterable[Lookup]:
    """The equality lookups every match must satisfy (the terms an index can answer)."""
    terms: Iterable[Condition] = cond.children if type(cond) is And else (cond,)
    return (t for t in terms if type(t) is Lookup and t.op == "equals")


class _Plan:
    """Which records a query looks at, and whether they come in the query's order."""

    __slots__ = ("description", "exact", "in_order", "pks", "reverse")

    def __init__(
        self,
        pks: list[str] | None,
        in_order: bool,
        exact: bool,
        description: str,
        reverse: bool = False,
    ) -> None:
        # An index group's pks (a list nobody changes, see _Group.pks), or None: every record.
        self.pks = pks
        self.reverse = reverse  # every record, descending
        self.in_order = in_order
        self.exact = exact  # what it looks at are exactly the matches (no other condition)
        self.description = description

    def hits(self, ns: _Namespace, cond: Condition) -> Iterator[tuple[str, Record]]:
        """The matching ``(pk, record)`` pairs, without a Python frame per record looked at."""
        pks = self.pks
        if pks is None:
            return _walk(ns, cond, self.reverse)
        test = _item_test(cond)
        return filter(test, zip(pks, map(ns.records.get, pks), strict=False))  # type: ignore[arg-type]

    def count(self, ns: _Namespace, cond: Condition) -> int:
        if self.exact:
            return len(ns.records) if self.pks is None else len(self.pks)
        pks = self.pks
        test = _item_test(cond)
        if pks is not None:
            # Booleans summed in C: no Python frame per record but the test's.
            return sum(map(test, zip(pks, map(ns.records.get, pks), strict=False)))
        try:
            fast = _count_records(ns.records.values(), cond)
            return sum(map(test, ns.records.items())) if fast is None else fast
        except RuntimeError:  # the dict changed size meanwhile: count in pk order
            return sum(1 for _ in _walk(ns, cond, False))


# ---------------------------------------------------------------- the query


class Query(BaseQuery[Any]):
    """Its engine is Python (and its own indexes): it evaluates the condition tree exactly."""

    storage: Storage

    def _engine_order(self, order: tuple[OrderKey, ...], native: Any) -> bool:
        return True

    def _engine_count(self, native: Any) -> int:
        return self.storage._count_where(native)

    def _engine_explain(
        self,
        compiled: Compiled,
        order: tuple[OrderKey, ...] | None,
        offset: int,
        limit: int | None,
    ) -> str:
        return self.storage._explain_select(compiled.native, order, offset, limit)


# -------------------------------------------------------------- the storage


class Settings(BaseSettings):
    """Settings of the memory backend."""

    #: Share the records with other storages opened with the same name.
    name: str | None = None


class _Tx:
    """A transaction's writes, visible only to the thread that owns it until commit."""

    __slots__ = ("cleared", "writes")

    def __init__(self) -> None:
        self.writes: dict[str, Record | None] = {}  # None: deleted
        self.cleared = False


class Storage(BaseStorage):
    """Records in a dict; a transaction keeps its writes apart until commit."""

    features: ClassVar[Features] = features
    query_class: ClassVar[type[BaseQuery[Any]]] = Query
    settings_class: ClassVar[type[BaseSettings]] = Settings
    url_schemes: ClassVar[tuple[str, ...]] = ("memory",)
    settings: Settings

    @classmethod
    def settings_from_url(cls, url: str) -> dict[str, Any]:
        parts = urlsplit(url)
        name = (parts.netloc + parts.path).strip("/")
        return {"name": name} if name else {}

    _tx: _Tx | None = None
    _tx_owner: int | None = None

    def _open(self) -> None:
        if self.settings.name is None:
            self._ns = _Namespace()
        else:
            with _NAMED_LOCK:
                self._ns = _NAMED.setdefault(self.settings.name, _Namespace())

    def _in_tx(self) -> _Tx | None:
        """This thread's open transaction, if any."""
        tx = self._tx
        if tx is not None and self._tx_owner == threading.get_ident():
            return tx
        return None

    def _data(self) -> dict[str, Record]:
        """The records as this thread sees them (a merged copy inside a transaction)."""
        tx = self._in_tx()
        if tx is None:
            return self._ns.records
        merged = {} if tx.cleared else dict(self._ns.records)
        for pk, record in tx.writes.items():
            if record is None:
                merged.pop(pk, None)
            else:
                merged[pk] = record
        return merged

    def _current(self, pk: str) -> Record | None:
        tx = self._in_tx()
        if tx is not None:
            if pk in tx.writes:
                return tx.writes[pk]
            if tx.cleared:
                return None
        return self._ns.records.get(pk)

    def _load(self, pk: str) -> Record | None:
        record = self._current(pk)
        return None if record is None else copy_value(record)

    def _store(self, pk: str, record: Record, *, overwrite: bool) -> bool:
        tx = self._in_tx()
        if tx is not None:
            if not overwrite and self._current(pk) is not None:
                return False
            tx.writes[pk] = copy_value(record)
            return True
        ns = self._ns
        with ns.lock:
            if not overwrite and pk in ns.records:
                return False
            ns.put(pk, copy_value(record))
            return True

    def _remove(self, pk: str) -> bool:
        tx = self._in_tx()
        if tx is not None:
            if self._current(pk) is None:
                return False
            tx.writes[pk] = None
            return True
        with self._ns.lock:
            return self._ns.pop(pk)

    def _scan(self) -> Iterator[tuple[str, Record]]:
        if self._in_tx() is not None:
            for pk, record in list(self._data().items()):
                yield pk, copy_value(record)
            return
        for pk, record in _walk(self._ns, ALL, False):
            yield pk, copy_value(record)

    def _keys(self) -> Iterator[str]:
        if self._in_tx() is not None:
            return iter(list(self._data()))
        return (pk for pk, _ in _walk(self._ns, ALL, False))

    def _count(self) -> int:
        return len(self._data())

    def _contains(self, pk: str) -> bool:
        return self._current(pk) is not None

    def _clear(self) -> None:
        tx = self._in_tx()
        if tx is not None:
            tx.writes.clear()
            tx.cleared = True
            return
        with self._ns.lock:
            self._ns.clear()

    def _close(self) -> None:
        pass

    # ------------------------------------------------------------ queries

    def _compile_condition(self, condition: Condition) -> Compiled:
        return Compiled(condition, None, "evaluate the condition tree over dicts")

    def _plan(self, native: Condition, order: tuple[OrderKey, ...] | None) -> _Plan:
        """Which records a query looks at: an index group when one answers, else all."""
        ns = self._ns
        best: _Plan | None = None
        if ns.indexes:
            for term in _equalities(native):
                for index in list(ns.indexes.values()):  # create_index may add one meanwhile
                    if index.path != term.path:
                        continue
                    # Keys on the equality's path are equal throughout the group.
                    wanted = tuple(k for k in order or () if k.path != term.path)
                    in_order = order is None or wanted == index.order
                    group = index.groups.get(freeze(term.value))
                    pks = [] if group is None else group.pks(index.rest, ns.lock)
                    if best is None or (in_order and not best.in_order):
                        best = _Plan(
                            pks,
                            in_order,
                            native is term,
                            f"index {index.describe()}: {term.key} == {term.value!r}"
                            + (" (in order)" if in_order else ""),
                        )
        if best is not None:
            return best
        if order == _PK_DESC:
            return _Plan(None, True, native == ALL, "every record, pk descending", True)
        in_order = order is None or order == PK_ORDER
        return _Plan(None, in_order, native == ALL, "every record, pk ascending")

    def _select(
        self, native: Any, order: tuple[OrderKey, ...] | None, offset: int, limit: int | None
    ) -> Iterator[Item]:
        stop = None if limit is None else offset + limit
        if self._in_tx() is not None:
            # Inside a transaction (this thread's view): the records as the
            # transaction sees them, scanned.
            items = [
                (pk, rec)
                for pk, rec in self._data().items()
                if native == ALL or native.matches(rec)
            ]
            sort_items(items, order or PK_ORDER)
            return map(_copied, itertools.islice(items, offset, stop))
        plan = self._plan(native, order)
        hits = plan.hits(self._ns, native)
        if not plan.in_order:
            matched: list[Any] = list(hits)
            sort_items(matched, order or PK_ORDER)
            return map(_copied, itertools.islice(matched, offset, stop))
        return map(_copied, itertools.islice(hits, offset, stop))

    def _count_where(self, native: Any) -> int:
        if self._in_tx() is not None:
            return sum(1 for rec in self._data().values() if native.matches(rec))
        return self._plan(native, None).count(self._ns, native)

    def _explain_select(
        self, native: Any, order: tuple[OrderKey, ...] | None, offset: int, limit: int | None
    ) -> str:
        if self._in_tx() is not None:
            return "scan the transaction's records, evaluating the condition tree"
        plan = self._plan(native, order)
        sort = "" if plan.in_order else ", then sort"
        return f"{plan.description}; evaluate the condition tree on each{sort}"

    def _create_index(self, spec: IndexSpec) -> None:
        self._ns.add_index(spec.keys)

    def _has_index(self, spec: IndexSpec) -> bool:
        # No kinds and no unique indexes here (features): only plain ones exist.
        return not spec.unique and spec.kind is None and spec.keys in self._ns.indexes

    def _begin(self) -> None:
        self._tx = _Tx()
        self._tx_owner = threading.get_ident()

    def _commit(self) -> None:
        tx = self._tx
        assert tx is not None
        ns = self._ns
        with ns.lock:
            if tx.cleared:
                ns.clear()
            for pk, record in tx.writes.items():
                if record is None:
                    ns.pop(pk)
                else:
                    ns.put(pk, record)
        self._tx = self._tx_owner = None

    def _rollback(self) -> None:
        self._tx = self._tx_owner = None

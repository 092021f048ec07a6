"""Ordering: parsed sort keys and the reference sort.

Every query result has one total order: its ``order_by`` keys, then the pk
ascending. Values of different kinds sort by kind rank (see
:func:`pymodels.values.sort_key`).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from .conditions import parse_path
from .errors import InvalidQuery
from .spill import KeySorter
from .values import MISSING, get_path, sort_key

__all__ = [
    "PK",
    "Descending",
    "OrderKey",
    "parse_order",
    "parsed_order",
    "pks_in_order",
    "record_sort_key",
    "sort_items",
    "sort_keyed",
    "total_key",
]

T = TypeVar("T")

#: The path that names the primary key in ``order_by``.
PK: tuple[str, ...] = ()


class OrderKey(NamedTuple):
    """One sort key: a path (``()`` is the pk) and a direction."""

    path: tuple[str, ...]
    descending: bool = False

    @property
    def is_pk(self) -> bool:
        return self.path == PK

    @property
    def key(self) -> str:
        """The path as written in lookups, ``"pk"`` for the primary key."""
        return "__".join(self.path) if self.path else "pk"

    def __str__(self) -> str:
        return ("-" if self.descending else "") + self.key


def parse_order(names: Iterable[str]) -> tuple[OrderKey, ...]:
    """Parse ``order_by`` arguments (``"-age"``, ``"address__city"``, ``"pk"``)."""
    keys: list[OrderKey] = []
    for name in names:
        if not isinstance(name, str) or name in ("", "-"):
            raise InvalidQuery(f"order_by takes field paths, not {name!r}")
        descending = name.startswith("-")
        bare = name[1:] if descending else name
        path = PK if bare == "pk" else parse_path(bare)
        keys.append(OrderKey(path, descending))
    return tuple(keys)


#: Parsed ``order_by`` arguments: an application asks for the same few orders over and
#: over, and parsing them costs as much as the rest of building its query.
_PARSED: dict[tuple[Any, ...], tuple[tuple[OrderKey, ...], tuple[OrderKey, ...]]] = {}
_PARSED_MAX = 256


def parsed_order(names: tuple[Any, ...]) -> tuple[tuple[OrderKey, ...], tuple[OrderKey, ...]]:
    """:func:`parse_order` of ``names`` and its :func:`full_order`, remembered."""
    try:
        found = _PARSED.get(names)
    except TypeError:  # an unhashable argument: parse_order says what is wrong
        found = None
    if found is None:
        keys = parse_order(names)  # raises for anything but field paths
        found = (keys, full_order(keys))
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[names] = found
    return found


#: The order of a query without ``order_by``.
PK_ORDER: tuple[OrderKey, ...] = (OrderKey(PK),)


def full_order(keys: Sequence[OrderKey]) -> tuple[OrderKey, ...]:
    """The keys followed by the implicit ``pk`` ascending (unless a pk key came already)."""
    if not keys:
        return PK_ORDER
    out: list[OrderKey] = []
    for k in keys:
        out.append(k)
        if k.is_pk:
            # Keys after the pk can never change the order: pks are unique.
            return tuple(out)
    out.append(OrderKey(PK))
    return tuple(out)


def record_sort_key(pk: str, record: Mapping[str, Any], key: OrderKey) -> tuple[Any, ...]:
    """The sort key of one record for one order key (ascending form)."""
    if key.is_pk:
        return (pk,)
    value = get_path(record, key.path)
    return sort_key(value) if value is not MISSING else (0,)


def sort_items(items: list[T], keys: Sequence[OrderKey], key_of: Any = None) -> list[T]:
    """Sort ``items`` in place by ``keys`` (then pk) and return the list.

    ``key_of(item, order_key)`` gives one key's ascending sort key; by default
    an item is a ``(pk, record)`` pair. Python's sort is stable, so sorting by
    each key from the last to the first gives every key its own direction.
    """
    fn = key_of or (lambda item, k: record_sort_key(item[0], item[1], k))
    for k in reversed(full_order(keys)):
        items.sort(key=lambda item, k=k: fn(item, k), reverse=k.descending)  # type: ignore[misc]
    return items


def total_key(pk: str, record: Mapping[str, Any], order: Sequence[OrderKey]) -> tuple[Any, ...]:
    """One record's sort keys for every key of ``order`` (ascending forms)."""
    return tuple(record_sort_key(pk, record, k) for k in order)


class Descending:
    """A sort key that compares in reverse, for one descending key of a composite key."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Descending) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __lt__(self, other: Descending) -> bool:
        return other.key < self.key


def sort_keyed(keyed: list[tuple[tuple[Any, ...], str]], order: Sequence[OrderKey]) -> None:
    """Sort ``(total key, pk)`` items in place by ``order``: one stable pass per key, from
    the last, each in its own direction (cheaper than a composite key per item)."""
    for i in reversed(range(len(order))):
        keyed.sort(key=lambda item, i=i: item[0][i], reverse=order[i].descending)  # type: ignore[misc]


def _merge_key(order: Sequence[OrderKey]) -> Any:
    """The key of a ``(total key, pk)`` item whose ascending order is what
    :func:`sort_keyed` gives; None when the items' own order is (no descending key)."""
    if not any(k.descending for k in order):
        return None
    descending = tuple(k.descending for k in order)

    def key(item: tuple[tuple[Any, ...], str]) -> tuple[Any, ...]:
        return tuple(
            Descending(part) if down else part
            for part, down in zip(item[0], descending, strict=True)
        )

    return key


def pks_in_order(
    items: Iterable[tuple[str, Mapping[str, Any]]], keys: Sequence[OrderKey], what: str
) -> Generator[str, None, None]:
    """The pks of ``items`` (``(pk, record)`` pairs) in the total order of ``keys`` (then
    the pk), sorted in bounded memory.

    Only each record's sort keys and pk are kept, and at most ``spill.RUN_SIZE`` of
    them in memory: beyond that, sorted runs go to a private temporary directory
    (:class:`~pymodels.spill.KeySorter`; ``what`` names them in its error) and are merged
    as the pks are taken. ``items`` is read to its end at the first pk. Use the
    generator to its end or close it: that removes the runs.
    """
    order = full_order(keys)
    with KeySorter[tuple[tuple[Any, ...], str]](what) as sorter:
        keyed = ((total_key(pk, record, order), pk) for pk, record in items)
        ordered = sorter.sort(
            keyed, sort_run=lambda run: sort_keyed(run, order), merge_key=_merge_key(order)
        )
        for _, pk in ordered:
            yield pk

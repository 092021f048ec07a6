"""The query class both SQL backends use: compile, run, order, count, delete.

Ordering runs in SQL (``ORDER BY rank, value..., pk``) with offset and limit.
That order is the contract's for every kind but lists and dicts, whose SQL
form does not sort element by element. Rows whose order SQL may get wrong are
exactly those holding a list or dict at an order key, and they form contiguous
runs in the SQL order; so :meth:`SQLQuery._engine_fetch` streams SQL rows until
the first such row appears and only then sorts the rest in Python. Queries that
never meet a list or dict at an order key keep SQL's limits and indexes.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ...backend import BaseQuery, Compiled, Item, OrderKey, get_path, sort_items
from .compiler import valid_path

if TYPE_CHECKING:
    from .storage import SQLStorage

__all__ = ["SQLQuery", "any_container", "order_paths"]


def _holds_container(record: dict[str, Any], paths: Sequence[tuple[str, ...]]) -> bool:
    for path in paths:
        # One-part paths (the common case) without get_path's loop.
        value = record.get(path[0]) if len(path) == 1 else get_path(record, path)
        if type(value) is list or type(value) is dict:
            return True
    return False


def any_container(rows: list[Item], paths: Sequence[tuple[str, ...]]) -> bool:
    """Whether some row holds a list or dict at one of ``paths`` (SQL may misorder it)."""
    if len(paths) == 1 and len(paths[0]) == 1:
        # Ordered by one top-level field, the common case: one test per row.
        # A loop, not any() over a generator: this runs on every page a query reads.
        name = paths[0][0]
        for _, record in rows:
            t = type(record.get(name))
            if t is list or t is dict:
                return True
        return False
    return any(_holds_container(record, paths) for _, record in rows)


class SQLQuery(BaseQuery[Any]):
    """A query compiled to SQL (shared by the SQLite and PostgreSQL backends)."""

    if TYPE_CHECKING:
        # The storage of an SQLQuery is always a SQL backend (its query_class).
        storage: SQLStorage

    def _engine_order(self, order: tuple[OrderKey, ...], native: Any) -> bool:
        # Always: _engine_fetch repairs the order among lists and dicts itself.
        return True

    def _engine_fetch(
        self,
        native: Any,
        order: tuple[OrderKey, ...] | None,
        offset: int,
        limit: int | None,
    ) -> Iterator[Item]:
        paths = () if order is None else order_paths(order)
        selected = self.storage._select(native, order, offset, limit)
        if isinstance(selected, list):
            if not paths or not any_container(selected, paths):
                return iter(selected)
            rows = iter(selected)
        elif not paths:
            return selected
        else:
            rows = selected
        assert order is not None  # paths come from it
        return self._fetch_repairing(rows, native, order, offset, limit, paths)

    def _fetch_repairing(
        self,
        rows: Iterator[Item],
        native: Any,
        order: tuple[OrderKey, ...],
        offset: int,
        limit: int | None,
        paths: Sequence[tuple[str, ...]],
    ) -> Iterator[Item]:
        backend = self.storage
        yielded = 0
        try:
            for pk, record in rows:
                if _holds_container(record, paths):
                    break
                yield pk, record
                yielded += 1
            else:
                return
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()
        # A list or dict at an order key: rows before it are in place; take
        # the whole result again and sort from that row on in Python.
        repaired = _repair_order(iter(backend._select(native, order, 0, None)), order, paths)
        stop = None if limit is None else offset + limit
        yield from itertools.islice(repaired, offset + yielded, stop)

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


@functools.lru_cache(maxsize=1024)
def order_paths(order: tuple[OrderKey, ...]) -> tuple[tuple[str, ...], ...]:
    """The paths of ``order`` that records can hold (where a list or dict may need repair)."""
    return tuple(k.path for k in order if valid_path(k.path))


def _repair_order(
    rows: Iterator[Item],
    order: tuple[OrderKey, ...],
    paths: Sequence[tuple[str, ...]],
) -> Iterator[Item]:
    for pk, record in rows:
        if _holds_container(record, paths):
            rest = [(pk, record), *rows]
            yield from sort_items(rest, order)
            return
        yield pk, record

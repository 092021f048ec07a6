"""The query class both SQL backends use: compile, run, order, count, delete.

Ordering runs in SQL (``ORDER BY rank, value..., pk``) with offset and limit.
Where that order is not the contract's (a list or dict at an order key: see
:mod:`.order_repair`), :meth:`SQLQuery._engine_fetch` streams SQL rows until
the first such row appears and only then sorts the rest in Python. Queries that
never meet a list or dict at an order key keep SQL's limits and indexes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ...backend import BaseQuery, Compiled, Item, OrderKey
from .compiler import Chain
from .order_repair import any_container, holds_container, order_paths, repair_order

if TYPE_CHECKING:
    from .storage import SQLStorage

__all__ = ["SQLQuery"]


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
        if type(native) is Chain:
            stop = None if limit is None else offset + limit
            return itertools.islice(self._chained(native, order, stop), offset, stop)
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

    def _chained(
        self, chain: Chain, order: tuple[OrderKey, ...] | None, stop: int | None
    ) -> Iterator[Item]:
        """The rows of each part of ``chain`` in turn, ``stop`` of them at most."""
        given = 0
        for part in chain.parts:
            if stop is not None and given >= stop:
                return
            for item in self._engine_fetch(part, order, 0, None if stop is None else stop - given):
                given += 1
                yield item

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
                if holds_container(record, paths):
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
        repaired = repair_order(iter(backend._select(native, order, 0, None)), order, paths)
        stop = None if limit is None else offset + limit
        yield from itertools.islice(repaired, offset + yielded, stop)

    def _engine_count(self, native: Any) -> int:
        if type(native) is Chain:
            return sum(self.storage._count_where(part) for part in native.parts)
        return self.storage._count_where(native)

    def _engine_delete(self, native: Any) -> int | None:
        return None if type(native) is Chain else super()._engine_delete(native)

    def _engine_explain(
        self,
        compiled: Compiled,
        order: tuple[OrderKey, ...] | None,
        offset: int,
        limit: int | None,
    ) -> str:
        native = compiled.native
        if type(native) is Chain:
            return "\nthen: ".join(
                self.storage._explain_select(part, order, 0, None) for part in native.parts
            )
        return self.storage._explain_select(native, order, offset, limit)

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

import itertools
from collections.abc import Generator, Iterator
from typing import Any, Protocol

from ...ordering import OrderKey, sort_items
from ...query import BaseQuery, Compiled
from ...values import get_path
from .compiler import Frag, valid_path

__all__ = ["SQLBackend", "SQLQuery"]


class SQLBackend(Protocol):
    """What :class:`SQLQuery` needs from its storage."""

    def _compile_condition(self, condition: Any) -> Compiled: ...

    def _select(
        self, where: Frag | None, order: tuple[OrderKey, ...] | None, offset: int, limit: int | None
    ) -> Generator[tuple[str, dict[str, Any]], None, None]: ...

    def _count_where(self, where: Frag | None) -> int: ...

    def _delete_where(self, where: Frag | None) -> int: ...

    def _explain_select(self, where: Frag | None, order: tuple[OrderKey, ...] | None) -> str: ...


def _holds_container(record: dict[str, Any], paths: list[tuple[str, ...]]) -> bool:
    for path in paths:
        # One-part paths (the common case) without get_path's loop.
        value = record.get(path[0]) if len(path) == 1 else get_path(record, path)
        if type(value) is list or type(value) is dict:
            return True
    return False


class SQLQuery(BaseQuery[Any]):
    """A query compiled to SQL (shared by the SQLite and PostgreSQL backends)."""

    def _backend(self) -> SQLBackend:
        # The storage of an SQLQuery is always a SQL backend (its query_class).
        backend: SQLBackend = self.storage  # type: ignore[assignment]
        return backend

    def _compile(self, condition: Any) -> Compiled:
        return self._backend()._compile_condition(condition)

    def _engine_order(self, order: tuple[OrderKey, ...]) -> bool:
        # Always: _engine_fetch repairs the order among lists and dicts itself.
        return True

    def _engine_fetch(
        self,
        native: Any,
        order: tuple[OrderKey, ...] | None,
        offset: int,
        limit: int | None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        backend = self._backend()
        paths = [] if order is None else [k.path for k in order if valid_path(k.path)]
        if not paths:
            yield from backend._select(native, order, offset, limit)
            return
        yielded = 0
        rows = backend._select(native, order, offset, limit)
        try:
            for pk, record in rows:
                if _holds_container(record, paths):
                    break
                yield pk, record
                yielded += 1
            else:
                return
        finally:
            rows.close()
        # A list or dict at an order key: rows before it are in place; take
        # the whole result again and sort from that row on in Python.
        assert order is not None  # paths come from it
        repaired = _repair_order(backend._select(native, order, 0, None), order, paths)
        stop = None if limit is None else offset + limit
        yield from itertools.islice(repaired, offset + yielded, stop)

    def _engine_count(self, native: Any) -> int:
        return self._backend()._count_where(native)

    def _engine_delete(self, native: Any) -> int | None:
        return self._backend()._delete_where(native)

    def _engine_explain(self, compiled: Compiled, order: tuple[OrderKey, ...] | None) -> str:
        return self._backend()._explain_select(compiled.native, order)


def _repair_order(
    rows: Iterator[tuple[str, dict[str, Any]]],
    order: tuple[OrderKey, ...],
    paths: list[tuple[str, ...]],
) -> Iterator[tuple[str, dict[str, Any]]]:
    for pk, record in rows:
        if _holds_container(record, paths):
            rest = [(pk, record), *rows]
            yield from sort_items(rest, order)
            return
        yield pk, record

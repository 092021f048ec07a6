"""The storage base both SQL backends share.

:class:`~.query.SQLQuery` reaches it through the storage hooks of queries
only (``_compile_condition``, ``_select``, ``_select_page``, ``_count_where``,
``_delete_where``, ``_explain_select``). A backend supplies its connection
(``_db``), its dialect and compiler, and the statements that differ between
engines (reading rows, explaining a plan). The statements that are the same
in every dialect live here once: counting and deleting what a compiled
condition selects, clearing the table, creating an index from the dialect's
DDL, the short page of a cached statement.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...backend import BaseStorage, Compiled, Condition, IndexSpec, Item, OrderKey
from .compiler import Compiler, Dialect, Frag
from .connections import Guard

__all__ = ["SQLStorage"]


class SQLStorage(BaseStorage):
    """Records as JSON in one table of a SQL database."""

    _dialect: Dialect
    _compiler: Compiler
    #: The table's name, and as it appears in SQL.
    _table: str
    _qtable: str
    #: Results up to this many rows are fetched in one go (see _fetch_records).
    _page_size: int

    # ------------------------------------------------------------ per engine

    def _db(self) -> Guard[Any]:
        """``with self._db() as conn``: this thread's connection, errors translated."""
        raise NotImplementedError

    def _fetch_records(self, sql: str, params: tuple[Any, ...]) -> list[Item]:
        """Run a rendered SELECT of ``pk, body`` and return every row, decoded."""
        raise NotImplementedError

    def _select(
        self, where: Frag | None, order: tuple[OrderKey, ...] | None, offset: int, limit: int | None
    ) -> Iterator[Item] | list[Item]:
        """The selected rows: a list when the limit is small, else a stream."""
        raise NotImplementedError

    def _explain_select(  # the statement, without the slice
        self,
        where: Frag | None,
        order: tuple[OrderKey, ...] | None,
        offset: int = 0,
        limit: int | None = None,
    ) -> str:
        """The statement a query runs and the engine's plan for it."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared

    def _scalar(self, frag: Frag) -> int:
        """The int a one-value statement returns (0 for no row)."""
        text, params = self._dialect.render(frag)
        with self._db() as conn:
            row = conn.execute(text, params).fetchone()
        return int(row[0]) if row else 0

    def _rowcount(self, frag: Frag) -> int:
        """Execute a statement; return how many rows it changed."""
        text, params = self._dialect.render(frag)
        with self._db() as conn:
            changed: int = conn.execute(text, params).rowcount
        return changed

    def _compile_condition(self, condition: Condition) -> Compiled:
        return self._compiler.compile(condition)

    def _select_page(
        self, condition: Condition, order: tuple[OrderKey, ...], offset: int, limit: int
    ) -> list[Item] | None:
        # One cached statement per condition shape: no compiling, one fetch.
        if limit > self._page_size:
            return None
        statement = self._compiler.select(condition, self._table, order, offset, limit)
        return None if statement is None else self._fetch_records(*statement)

    def _count_where(self, where: Frag | None) -> int:
        return self._scalar(self._dialect.count(self._table, where))

    def _delete_where(self, where: Frag | None) -> int:
        return self._rowcount(self._dialect.delete(self._table, where))

    def _count(self) -> int:
        return self._count_where(None)

    def _clear(self) -> None:
        self._delete_where(None)

    def _create_index(self, spec: IndexSpec) -> None:
        self._rowcount(Frag(self._dialect.create_index(self._table, spec)))

"""The storage base both SQL backends share.

:class:`~.query.SQLQuery` reaches it through the storage hooks of queries
only (``_compile_condition``, ``_select``, ``_select_page``, ``_count_where``,
``_delete_where``, ``_explain_select``). A backend supplies its connection
(``_db``), its dialect and compiler, and what differs between engines: how
rows are read and streamed, explaining a plan, opening and rolling back. Every
statement both engines run is written here once, with the dialect's parameter
marker, body parameter and codec: reading, writing, removing and testing one
record, listing pks, starting and committing a transaction, compare-and-swap,
counting and deleting what a compiled condition selects, clearing the table,
creating an index, the short page of a cached statement.
"""

from __future__ import annotations

import abc
import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ...backend import (
    BaseStorage,
    Compiled,
    Condition,
    CorruptData,
    IndexSpec,
    Item,
    OrderKey,
    PyModelsError,
    ValidationError,
)
from .compiler import PARAM, Chain, Compiler, Dialect, Frag, join
from .connections import Guard
from .encoding import json_kind
from .order_repair import settled_page

__all__ = ["KEY_COLUMNS", "META_TABLE", "RECORD_COLUMNS", "SQLStorage"]

#: The columns of a row that is a record, and of one that is only its pk.
RECORD_COLUMNS = "pk, body"
KEY_COLUMNS = "pk, NULL"

#: The library's own table (format versions, index descriptions), beside the records.
META_TABLE = "pymodels_meta"


class SQLStorage(BaseStorage):
    """Records as JSON in one table of a SQL database."""

    #: The engine's SQL and the compiler writing it, as this thread's connection
    #: sees the table (SQLite's depend on the columns the table has).
    @property
    @abc.abstractmethod
    def _dialect(self) -> Dialect: ...

    @property
    @abc.abstractmethod
    def _compiler(self) -> Compiler: ...

    def __init__(self, **settings: Any) -> None:
        #: The unique indexes this storage made or listed, by the engine's name for
        #: them (see _unique_refusal); before opening, which may list them.
        self._unique_named: dict[str, IndexSpec] = {}
        super().__init__(**settings)

    #: The table's name, and as it appears in SQL.
    _table: str
    _qtable: str
    #: Results up to this many rows are fetched in one go (see _fetch_records).
    _page_size: int

    # ------------------------------------------------------------ per engine

    @abc.abstractmethod
    def _db(self) -> Guard[Any]:
        """``with self._db() as conn``: this thread's connection, errors translated."""

    @abc.abstractmethod
    def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """The rows of one rendered statement."""

    @abc.abstractmethod
    def _fetch_records(self, sql: str, params: tuple[Any, ...]) -> list[Item]:
        """Run a rendered SELECT of ``pk, body`` and return every row, decoded."""

    @abc.abstractmethod
    def _rows(
        self,
        where: Frag | None,
        order: tuple[OrderKey, ...] | None,
        offset: int,
        limit: int | None,
        columns: str = RECORD_COLUMNS,
    ) -> Iterator[tuple[str, Any]]:
        """Stream the selected rows (records decoded; :data:`KEY_COLUMNS` rows as they are)."""

    @abc.abstractmethod
    def _select(
        self, where: Frag | None, order: tuple[OrderKey, ...] | None, offset: int, limit: int | None
    ) -> Iterator[Item] | list[Item]:
        """The selected rows: a list when the limit is small, else a stream."""

    @abc.abstractmethod
    def _explain_select(  # the statement, without the slice
        self,
        where: Frag | None,
        order: tuple[OrderKey, ...] | None,
        offset: int = 0,
        limit: int | None = None,
    ) -> str:
        """The statement a query runs and the engine's plan for it."""

    # ------------------------------------------------------------ shared

    def _prepare_statements(self) -> None:
        """Render the one-record statements for this table (once, from ``_open``)."""
        d = self._dialect
        t = self._qtable
        insert = f"INSERT INTO {t} (pk, body) VALUES ({PARAM}, {d.body_param}) ON CONFLICT (pk)"
        self._load_sql = d.render(Frag(f"SELECT body FROM {t} WHERE pk = {PARAM}"))[0]
        self._insert_sql = d.render(Frag(f"{insert} DO NOTHING"))[0]
        self._upsert_sql = d.render(Frag(f"{insert} DO UPDATE SET body = excluded.body"))[0]
        self._remove_sql = d.render(Frag(f"DELETE FROM {t} WHERE pk = {PARAM}"))[0]
        self._contains_sql = d.render(Frag(f"SELECT 1 FROM {t} WHERE pk = {PARAM}"))[0]
        if d.row_locks:
            lock = Frag(f"SELECT 1 FROM {t} WHERE pk = {PARAM} FOR UPDATE")
            self._lock_row_sql = d.render(lock)[0]
        # The codec, looked up once: _load and _store run per record.
        self._dumps: Callable[[dict[str, Any]], Any] = d.dumps_body
        self._loads: Callable[[Any], dict[str, Any]] = d.loads_body

    def _load(self, pk: str) -> dict[str, Any] | None:
        rows = self._fetchall(self._load_sql, (pk,))
        return self._record(pk, rows[0][0]) if rows else None

    #: Where records are kept, for messages: the backend, and the file and table.
    _where: str
    #: The file records are kept in (None: a server's table).
    _file: str | None = None

    def _record(self, pk: str, body: Any) -> dict[str, Any]:
        """The record of the body stored under ``pk``, as the driver returned it.

        Another program may have written a body that holds no record: text that is
        not JSON, a malformed tagged value, or JSON other than an object. That
        raises :class:`CorruptData` naming the pk, never a bare ``TypeError`` later.
        """
        try:
            value = self._loads(body)
        except ValidationError as e:
            raise self._unreadable(pk, str(e)) from e
        if type(value) is not dict:
            raise self._unreadable(pk, f"it holds {json_kind(value)}, not an object")
        return value

    def _unreadable(self, pk: str, reason: str) -> CorruptData:
        return CorruptData(
            f"{self._where}: record {pk!r} cannot be read back: {reason}",
            path=self._file,
            pk=pk,
        )

    def _store(self, pk: str, record: dict[str, Any], *, overwrite: bool) -> bool:
        body = self._dumps(record)
        with self._db() as conn:
            if overwrite:
                conn.execute(self._upsert_sql, (pk, body))
                return True
            written: int = conn.execute(self._insert_sql, (pk, body)).rowcount
        return written == 1

    def _remove(self, pk: str) -> bool:
        with self._db() as conn:
            removed: int = conn.execute(self._remove_sql, (pk,)).rowcount
        return removed == 1

    def _contains(self, pk: str) -> bool:
        with self._db() as conn:
            return conn.execute(self._contains_sql, (pk,)).fetchone() is not None

    def _scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(self._select(None, None, 0, None))

    def _keys(self) -> Iterator[str]:
        for pk, _ in self._rows(None, None, 0, None, KEY_COLUMNS):
            yield pk

    def _begin(self) -> None:
        with self._db() as conn:
            conn.execute(self._dialect.begin)

    def _commit(self) -> None:
        with self._db() as conn:
            conn.execute("COMMIT")

    def _lock_row(self, pk: str) -> None:
        """Hold the row of ``pk`` until the transaction ends, where the engine locks rows."""
        if self._dialect.row_locks:
            with self._db() as conn:
                conn.execute(self._lock_row_sql, (pk,))

    def _compare_and_store(
        self, pk: str, record: dict[str, Any], field: str, expected: Any
    ) -> bool:
        # One conditional statement: atomic across threads and processes
        # (PostgreSQL re-checks the condition after waiting for a concurrent
        # writer's row lock, so this is a true compare-and-swap).
        if expected is None:
            return self._store(pk, record, overwrite=False)
        leaf = self._compiler.version_guard(field, expected)
        if leaf is None:
            # A version SQL cannot compare exactly: the generic path, with the
            # row (SQLite: the file, by BEGIN IMMEDIATE) locked meanwhile.
            with self._atomic():
                self._lock_row(pk)
                return super()._compare_and_store(pk, record, field, expected)
        sql = (
            f"UPDATE {self._qtable} SET body = {self._dialect.body_param} "
            f"WHERE pk = {PARAM} AND ({leaf.frag.sql})"
        )
        text, params = self._dialect.render(Frag(sql, (self._dumps(record), pk, *leaf.frag.params)))
        with self._db() as conn:
            written: int = conn.execute(text, params).rowcount
        return written == 1

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
        self, condition: Condition, order: tuple[OrderKey, ...], offset: int, limit: int | None
    ) -> list[Item] | None:
        # The hot path: one cached statement per condition shape, no
        # compiling, its rows in one fetch (a slice only: a whole result streams).
        if limit is None or limit > self._page_size:
            return None
        statement = self._compiler.select(condition, self._table, order, offset, limit)
        if statement is None:
            return None
        return settled_page(self._fetch_records(*statement), order)

    def _bound_after(
        self, native: Frag | None, order: tuple[OrderKey, ...], pk: str, record: Mapping[str, Any]
    ) -> Frag | Chain | None:
        start = self._dialect.at_or_after(order[0], pk, record)
        if start is None:
            return native
        if isinstance(start, Chain):
            return Chain(tuple(_both(native, part) for part in start.parts))
        return _both(native, start)

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
        self._rowcount(self._remember_index(spec))
        self._learn_index(spec)

    # ------------------------------------------------------------ unique refusals

    # The engines name a unique index that refused a write by its digest, or by its
    # expressions (PostgreSQL's DETAIL spells out every CASE of them). Messages name
    # its fields instead: from the indexes this storage made or listed, else from
    # the meta table, where the connection still answers (PostgreSQL answers nothing
    # inside a transaction a failed statement aborted).

    def _learn_index(self, spec: IndexSpec) -> None:
        """Remember what the index of ``spec`` is named, for :meth:`_unique_refusal`."""
        if spec.unique:
            self._unique_named[self._dialect.index_name(self._table, spec)] = spec

    def _unique_refusal(self, index: str | None, fields: tuple[str, ...] = ()) -> str:
        """A write a unique index refused, in words: the index's fields where known
        (given, or from the index's name), else its name."""
        spec = self._unique_named.get(index) if index else None
        if index and spec is None:
            # Made by another storage: the meta table says what it indexes.
            with contextlib.suppress(PyModelsError):
                self._indexes()
            spec = self._unique_named.get(index)
        if spec is not None:
            fields = tuple(k.key for k in spec.keys)
        if fields:
            what = f"unique index on {', '.join(fields)}"
        elif index:
            what = f"unique index {index} (indexes() lists what it indexes)"
        else:
            what = "a unique index"
        return f"{what}: another record holds the same value already"

    # Index names are digests: what each index is for is kept beside it, in
    # the library's own table, so indexes() can list them.

    def _remember_index(self, spec: IndexSpec) -> Frag:
        """The statement recording ``spec`` in the meta table (after its DDL ran)."""
        name = f"{self._table}.index.{self._dialect.index_name(self._table, spec)}"
        value = json.dumps(
            {"keys": [str(k) for k in spec.keys], "unique": spec.unique, "kind": spec.kind}
        )
        return Frag(
            f"INSERT INTO {META_TABLE} (name, value) VALUES ({PARAM}, {PARAM}) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def _indexes(self) -> list[IndexSpec]:
        prefix = f"{self._table}.index."
        text, params = self._dialect.render(
            Frag(
                f"SELECT value FROM {META_TABLE} "
                f"WHERE substr(name, 1, {len(prefix)}) = {PARAM} ORDER BY name",
                (prefix,),
            )
        )
        with self._db() as conn:
            rows = conn.execute(text, params).fetchall()
        specs = []
        for (value,) in rows:
            spec = json.loads(value)
            keys = tuple(
                OrderKey(tuple(key.lstrip("-").split("__")), key.startswith("-"))
                for key in spec["keys"]
            )
            specs.append(IndexSpec(keys, spec["unique"], spec["kind"]))
        for found in specs:
            self._learn_index(found)
        return specs


def _both(a: Frag | None, b: Frag | None) -> Frag | None:
    """Both conditions (None: every row)."""
    if a is None or b is None:
        return b if a is None else a
    return join(" AND ", (a, b))

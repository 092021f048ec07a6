"""PostgreSQL backend: production SQL with JSONB.

Engine: PostgreSQL 12+ (tested with 15) through psycopg 3. Dependencies: the
``postgresql`` extra (``pip install 'pymodels[postgresql]'``).
Suits: servers shared by many processes and machines; everything the SQLite
backend does, with real concurrency.
Layout: one table per storage (setting ``table``, default ``documents``):
``pk TEXT COLLATE "C" PRIMARY KEY`` and ``body JSONB`` holding the record as
tagged JSON (:mod:`pymodels.ext._sql.encoding`); the library's own data lives
in the separate table ``pymodels_meta``. Threads get one connection each.
Queries: compiled to SQL with bound parameters (``$1``...). Everything runs in
PostgreSQL except what its semantics cannot decide exactly: the
case-insensitive ops, ``matches``/``imatches`` and ``like`` run there as a
superset re-checked in Python (``features.ops`` says ``prefilter``).
Limits: ``ConnectionFailed`` leaves the last write's outcome unknown (no write
is ever retried); after a server restart the next call reconnects.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
import re
from collections.abc import Generator, Iterable
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit, urlunsplit

import pydantic

from ..backend import (
    OPS,
    BackendUnavailable,
    BaseQuery,
    BaseSettings,
    Change,
    ConfigurationError,
    ConnectionFailed,
    CorruptData,
    Features,
    IndexSpec,
    IntegrityError,
    Item,
    LockTimeout,
    OrderKey,
    PyModelsError,
    StorageNotFound,
)

try:
    import psycopg
    import psycopg.conninfo
    import psycopg.errors
    import psycopg.pq
    from psycopg.types.json import set_json_loads
except ImportError as e:  # pragma: no cover - depends on the environment
    raise BackendUnavailable(
        f"pymodels.ext.postgresql needs psycopg 3 ({e}): pip install 'pymodels[postgresql]'"
    ) from e

from ._sql.compiler import PARAM, Compiler, Frag
from ._sql.connections import Guard, ThreadConnections
from ._sql.encoding import dumps_pg, loads_pg
from ._sql.postgresql_dialect import PostgresDialect
from ._sql.query import SQLQuery
from ._sql.storage import META_TABLE, RECORD_COLUMNS, SQLStorage

__all__ = ["Query", "Settings", "Storage", "features"]

#: Ops PostgreSQL narrows down and Python finishes (see the dialect for why).
PREFILTER_OPS = frozenset(
    {"iequals", "icontains", "istartswith", "iendswith", "matches", "imatches", "like"}
)

features = Features(
    ops={op: "prefilter" if op in PREFILTER_OPS else "native" for op in OPS},
    transactions=True,
    indexes=True,
    unique_indexes=True,
    compound_indexes=True,
    index_kinds=frozenset({"gin"}),
    partial_update=True,
    thread_safe=True,
    fork_safe=True,
    concurrent_processes=True,
    # A commit is the server's once it returns; killing the client loses nothing
    # acknowledged, and the server refuses a write it cannot store.
    crash_safe=True,
    disk_full_safe=True,
    persistent=True,
    networked=True,
)

TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
FORMAT_VERSION = "1"
#: Serialises the library's DDL (CREATE ... IF NOT EXISTS races in PostgreSQL).
DDL_LOCK = 0x706D_6D6F_6465_6C73  # "pmmodels"
#: Rows per round trip while iterating a result.
FETCH_SIZE = 1000
#: URL parameters that are pymodels settings, removed before libpq sees the URL.
OWN_PARAMETERS = ("table", "read_only", "connect_timeout")


class Settings(BaseSettings):
    """Settings of the PostgreSQL backend.

    A libpq URL or key=value string (``url`` or ``dsn``), with ``host``,
    ``port``, ``user``, ``password`` and ``dbname`` overriding its parts.
    """

    #: postgresql://user:password@host:5432/dbname?sslmode=...
    url: str | None = None
    #: The same as ``url`` (either form libpq accepts).
    dsn: str | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: pydantic.SecretStr | None = None
    dbname: str | None = None
    #: The table holding this storage's records.
    table: str = "documents"
    #: Seconds to wait for a connection before ConnectionFailed.
    connect_timeout: float = 10.0

    @pydantic.field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        if not TABLE_NAME.fullmatch(value):
            raise ValueError("must be a plain identifier (letters, digits, _; at most 40)")
        if value == META_TABLE:
            raise ValueError(f"{META_TABLE} is the library's own table")
        return value


class Query(SQLQuery):
    """A query compiled to PostgreSQL SQL."""


# One dialect for every storage: its caches of per-path SQL are shared.
_DIALECT = PostgresDialect()
_COMPILER = Compiler(_DIALECT)


def _close_quietly(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.close()


def _reusable(conn: psycopg.Connection[Any]) -> bool:
    """Whether a finished thread's connection may serve another thread (see ThreadConnections)."""
    if conn.closed or conn.broken:
        return False
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return False  # a transaction the thread never ended: close it, which rolls it back
    try:
        # Cursors WITH HOLD an abandoned iteration left open outlive the thread.
        conn.execute("CLOSE ALL")
    except psycopg.Error:
        return False
    return True


class Storage(SQLStorage):
    """Records as JSONB in one PostgreSQL table."""

    features: ClassVar[Features] = features
    query_class: ClassVar[type[BaseQuery[Any]]] = Query
    _page_size = FETCH_SIZE
    settings_class: ClassVar[type[BaseSettings]] = Settings
    url_schemes: ClassVar[tuple[str, ...]] = ("postgresql", "postgres")
    settings: Settings
    _dialect = _DIALECT
    _compiler = _COMPILER

    @classmethod
    def settings_from_url(cls, url: str) -> dict[str, Any]:
        """``postgresql://user@host:5432/db?table=people``: pymodels' parameters come out."""
        parts = urlsplit(url)
        own: dict[str, str] = {}
        rest: list[str] = []
        # libpq's parameters stay exactly as written: libpq percent-decodes a URI
        # but reads "+" as itself, so parsing and re-encoding them (which writes
        # a space as "+") would change what the server is sent.
        for item in parts.query.split("&") if parts.query else ():
            key, _, value = item.partition("=")
            if unquote(key) in OWN_PARAMETERS:
                own[unquote(key)] = unquote(value)
            else:
                rest.append(item)
        return {"url": urlunsplit(parts._replace(query="&".join(rest))), **own}

    @property
    def location(self) -> str | None:
        """Server, database and table, for people (never the password)."""
        parsed = psycopg.conninfo.conninfo_to_dict(self._conninfo)
        dbname = parsed.get("dbname") or parsed.get("user") or ""
        return f"{self._host}:{self._port}/{dbname}?table={self._table}"

    def _has_index(self, spec: IndexSpec) -> bool:
        name = self._dialect.index_name(self._table, spec)
        sql = (
            "SELECT 1 FROM pg_indexes WHERE schemaname = current_schema() "
            f"AND tablename = {PARAM} AND indexname = {PARAM}"
        )
        text, params = self._dialect.render(Frag(sql, (self._table, name)))
        with self._db() as conn:
            return conn.execute(text, params).fetchone() is not None

    def _serialize(self, key: str) -> None:
        # READ COMMITTED lets two transactions both find nothing and both write:
        # a transaction-scoped advisory lock on the key makes the second wait.
        digest = hashlib.blake2b(f"{self._table}\0{key}".encode(), digest_size=8).digest()
        with self._db() as conn:
            conn.execute(
                "SELECT pg_advisory_xact_lock($1)", [int.from_bytes(digest, "big", signed=True)]
            )

    # ------------------------------------------------------------ connections

    def _open(self) -> None:
        s = self.settings
        if s.url is not None and s.dsn is not None:
            raise ConfigurationError("give either setting 'url' or 'dsn', not both")
        given = {
            "host": s.host,
            "port": s.port,
            "user": s.user,
            "password": None if s.password is None else s.password.get_secret_value(),
            "dbname": s.dbname,
        }
        try:
            self._conninfo = psycopg.conninfo.make_conninfo(
                s.url or s.dsn or "",
                connect_timeout=max(1, math.ceil(s.connect_timeout)),
                **{k: v for k, v in given.items() if v is not None},
            )
            parsed = psycopg.conninfo.conninfo_to_dict(self._conninfo)
        except psycopg.ProgrammingError as e:
            raise ConfigurationError(f"postgresql: bad connection settings: {e}") from e
        self._host = str(parsed.get("host") or os.environ.get("PGHOST") or "localhost")
        port = str(parsed.get("port") or os.environ.get("PGPORT") or 5432)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"postgresql: port {port!r} is not a port number (1-65535)")
        self._port = int(port)
        self._table = s.table
        self._qtable = f'"{self._table}"'
        self._where = f"postgresql: table {self._table!r}"
        self._prepare_statements()
        self._conns = ThreadConnections(self._connect, _close_quietly, _reusable)
        self._cursor_names = itertools.count()
        try:
            self._init_schema()
        except BaseException:
            self._close()
            raise

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self._conninfo, autocommit=True, cursor_factory=psycopg.RawCursor
            )
        except psycopg.Error as e:
            raise ConnectionFailed(
                f"cannot connect to PostgreSQL at {self._host}:{self._port}: {e}",
                host=self._host,
                port=self._port,
            ) from e
        set_json_loads(loads_pg, conn)
        try:
            # Literals in our SQL double their quotes only: backslashes must be plain.
            conn.execute("SET standard_conforming_strings = on")
        except psycopg.Error as e:
            conn.close()
            raise PyModelsError(f"postgresql: {e}") from e
        return conn

    def _db(self) -> Guard[psycopg.Connection[Any]]:
        """``with self._db() as conn``: this thread's connection, errors translated."""
        if self.closed:
            raise PyModelsError("postgresql storage is closed")
        conn = self._conns.get()
        if conn.closed:
            self._conns.discard()
            conn = self._conns.get()
        return Guard(conn, self._translate)

    def _translate(self, e: BaseException) -> BaseException | None:
        """The library's exception for a psycopg error (None: not a driver error)."""
        if isinstance(e, psycopg.errors.UniqueViolation) and e.diag.constraint_name:
            # Not the message: its DETAIL spells out the index's expressions.
            return IntegrityError(f"postgresql: {self._unique_refusal(e.diag.constraint_name)}")
        if isinstance(e, psycopg.errors.IntegrityError):
            return IntegrityError(f"postgresql: {e}")
        if isinstance(e, CorruptData) and e.pk is None:
            # loads_pg's, from inside the driver's fetch: where the row came from.
            return CorruptData(f"{self._where}: {e}")
        if not isinstance(e, psycopg.Error):
            return None
        if isinstance(e, psycopg.errors.LockNotAvailable):
            return LockTimeout(f"postgresql: {e} (the server's lock_timeout); nothing was written")
        conn = self._conns.current()
        if conn is None or conn.broken or conn.closed:
            # Gone: the next call connects again (nothing is retried here).
            self._conns.discard()
            return ConnectionFailed(
                f"lost the connection to PostgreSQL at {self._host}:{self._port}: {e}",
                host=self._host,
                port=self._port,
            )
        return PyModelsError(f"postgresql: {e}")

    def _init_schema(self) -> None:
        key = f"{self._table}.format"
        with self._db() as conn:
            # Both tables there and the format recorded: nothing to create, and
            # no lock to wait for (another session may be building an index).
            row = conn.execute(
                "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL",
                [self._qtable, META_TABLE],
            ).fetchone()
            version = None
            if row is not None and row[0]:
                found = conn.execute(
                    f"SELECT value FROM {META_TABLE} WHERE name = $1", [key]
                ).fetchone()
                version = None if found is None else found[0]
            if version is None:
                if self.read_only:
                    raise StorageNotFound(
                        f"no pymodels table {self._table!r} (read_only is set)",
                        path=f"table {self._table}",
                    )
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock($1)", [DDL_LOCK])
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {self._qtable} "
                        '(pk TEXT COLLATE "C" PRIMARY KEY, body JSONB NOT NULL)'
                    )
                    conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {META_TABLE} "
                        "(name TEXT PRIMARY KEY, value TEXT NOT NULL)"
                    )
                    conn.execute(
                        f"INSERT INTO {META_TABLE} (name, value) VALUES ($1, $2) "
                        "ON CONFLICT (name) DO NOTHING",
                        [key, FORMAT_VERSION],
                    )
                    found = conn.execute(
                        f"SELECT value FROM {META_TABLE} WHERE name = $1", [key]
                    ).fetchone()
                    version = None if found is None else found[0]
        if version != FORMAT_VERSION:
            raise ConfigurationError(
                f"table {self._table!r} has format {version}; this pymodels "
                f"reads format {FORMAT_VERSION}"
            )

    # ------------------------------------------------------------ required hooks

    def _close(self) -> None:
        self._conns.close_all()

    # ------------------------------------------------------------ optional overrides

    def _load_many(self, pks: list[str]) -> list[dict[str, Any] | None]:
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT pk, body FROM {self._qtable} WHERE pk = ANY($1::text[])", [pks]
            ).fetchall()
        found = {pk: body if type(body) is dict else self._record(pk, body) for pk, body in rows}
        return [found.get(pk) for pk in pks]

    def _store_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        rows = [(pk, dumps_pg(record)) for pk, record in items]
        # COPY into this session's staging table, then one INSERT ... SELECT:
        # a fraction of the per-row cost of executemany. (Called inside the
        # batch's transaction, so a failure leaves neither table changed.)
        with self._db() as conn, conn.cursor() as cur:
            # Every time: a rolled-back transaction may have taken the table with it.
            cur.execute(
                'CREATE TEMP TABLE IF NOT EXISTS pymodels_staging (pk TEXT COLLATE "C", '
                "body JSONB) ON COMMIT DELETE ROWS"
            )
            with cur.copy("COPY pymodels_staging (pk, body) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            # Plain INSERT: the pks are fresh, and a clash (an IntegrityError) makes
            # the caller redo the batch with insert-if-absent, never overwrite.
            cur.execute(
                f"INSERT INTO {self._qtable} (pk, body) SELECT pk, body FROM pymodels_staging"
            )
            # Several batches may share one transaction (save_many in transaction()).
            cur.execute("DELETE FROM pymodels_staging")

    def _rollback(self) -> None:
        conn = self._conns.current()
        if conn is None or conn.closed or conn.broken:
            return  # the server already ended the transaction with the session
        with self._db() as c:
            c.execute("ROLLBACK")

    def _create_index(self, spec: IndexSpec) -> None:
        ddl = self._dialect.create_index(self._table, spec)
        with self._db() as conn, conn.transaction():
            # Nested in a user's transaction this is a savepoint; the lock holds to its end.
            conn.execute("SELECT pg_advisory_xact_lock($1)", [DDL_LOCK])
            conn.execute(ddl)
            conn.execute(*self._dialect.render(self._remember_index(spec)))
        self._learn_index(spec)

    def _update_many(self, pks: list[str], changes: list[Change]) -> int:
        compiled = self._dialect.update(changes)
        if compiled is None:
            return super()._update_many(pks, changes)
        body, guard = compiled
        sql = (
            f"UPDATE {self._qtable} SET body = {body.sql} "
            f"WHERE pk = ANY({PARAM}::text[]) AND ({guard.sql}) RETURNING pk"
        )
        text, params = self._dialect.render(Frag(sql, (*body.params, pks, *guard.params)))
        with self._atomic():
            with self._db() as conn:
                done = {pk for (pk,) in conn.execute(text, params).fetchall()}
            # What the guard kept out (a parent that is not a dict, an int that
            # would overflow, a missing record) takes the exact generic path,
            # with the row locked so that no other writer slips in between.
            rest = [pk for pk in pks if pk not in done]
            return len(done) + sum(1 for pk in rest if self._update_locked(pk, changes))

    def _update_locked(self, pk: str, changes: list[Change]) -> bool:
        self._lock_row(pk)
        return super()._update_many([pk], changes) == 1

    # ------------------------------------------------------------ used by Query

    def _rows(
        self,
        where: Frag | None,
        order: tuple[OrderKey, ...] | None,
        offset: int,
        limit: int | None,
        columns: str = RECORD_COLUMNS,
    ) -> Generator[tuple[str, Any], None, None]:
        """The selected rows, one round trip for the first FETCH_SIZE of them.

        Most results fit in one page: a plain SELECT asking for one row more
        than a page tells whether there is more. Only then does a server-side
        cursor WITH HOLD continue from the end of the page, FETCH_SIZE rows
        per round trip, leaving the connection usable between batches (for
        writes in a loop). The two statements see the table at two moments;
        the order is total (pk last), so the continuation starts exactly where
        the page ended as long as nobody writes in between.
        """
        d = self._dialect
        order = order or (OrderKey(()),)  # pages need a deterministic order
        page = FETCH_SIZE if limit is None else min(limit, FETCH_SIZE)
        more = limit is None or limit > FETCH_SIZE
        text, params = d.render(
            d.select(self._table, where, order, offset, page + 1 if more else page, columns)
        )
        with self._db() as conn:
            rows = conn.execute(text, params).fetchall()
        if len(rows) <= page:
            yield from rows
            return
        yield from rows[:page]
        rest = None if limit is None else limit - page
        text, params = d.render(d.select(self._table, where, order, offset + page, rest, columns))
        guard = self._db()
        with guard as conn:
            cur = psycopg.RawServerCursor(conn, f"pm_{next(self._cursor_names)}", withhold=True)
            cur.execute(text, params)
        try:
            while True:
                with guard:
                    batch = cur.fetchmany(FETCH_SIZE)
                if not batch:
                    return
                yield from batch
        finally:
            with contextlib.suppress(psycopg.Error):
                cur.close()

    def _fetch_records(self, sql: str, params: tuple[Any, ...]) -> list[Item]:
        # The driver decodes the bodies (set_json_loads): the rows are the records,
        # once each is known to be one (another program may have stored any jsonb).
        rows: list[Item] = self._fetchall(sql, params)
        return [(pk, body if type(body) is dict else self._record(pk, body)) for pk, body in rows]

    def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._db() as conn:
            rows: list[Any] = conn.execute(sql, params).fetchall()
        return rows

    def _select(
        self,
        where: Frag | None,
        order: tuple[OrderKey, ...] | None,
        offset: int,
        limit: int | None,
    ) -> Generator[tuple[str, dict[str, Any]], None, None]:
        for pk, body in self._rows(where, order, offset, limit):
            yield pk, body if type(body) is dict else self._record(pk, body)

    def _explain_select(
        self,
        where: Frag | None,
        order: tuple[OrderKey, ...] | None,
        offset: int = 0,
        limit: int | None = None,
    ) -> str:
        text, params = self._dialect.render(self._dialect.select(self._table, where, order))
        with self._db() as conn:
            plan = conn.execute("EXPLAIN " + text, params).fetchall()
        lines = "\n".join("    " + str(line) for (line,) in plan)
        return f"{text}\n  parameters: {list(params)!r}\n  plan (EXPLAIN):\n{lines}"

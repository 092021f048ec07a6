"""The SQLite storage: connections, the table and its formats, writes, row order,
counting from indexes. The package's docstring is the backend's status header."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import pydantic

from ...backend import (
    OPS,
    BaseQuery,
    BaseSettings,
    Change,
    Compiled,
    Condition,
    ConfigurationError,
    CorruptData,
    Features,
    IndexSpec,
    IntegrityError,
    Item,
    LockTimeout,
    OrderKey,
    PyModelsError,
    StorageNotFound,
    open_failure,
    url_path,
)
from .._sql.compiler import PARAM, PK_FROM, Compiler, Frag, valid_path
from .._sql.connections import Guard, ThreadConnections
from .._sql.encoding import dumps, dumps_each, loads_rows
from .._sql.order_repair import settled_page
from .._sql.query import SQLQuery
from .._sql.sqlite_dialect import (
    ROWID_COLUMN,
    ROWID_VIEW,
    ShadowDialect,
    SQLiteDialect,
    over,
    register_functions,
    shadow_names,
)
from .._sql.storage import META_TABLE, RECORD_COLUMNS, SQLStorage
from ._shadow import DIALECT, HINT, Shadow, View, hints_of, view_of

__all__ = ["Query", "Settings", "Storage", "features", "memory_features"]

features = Features(
    # Every op runs in SQLite, some through functions registered per connection.
    ops=dict.fromkeys(OPS, "native"),
    transactions=True,
    indexes=True,
    unique_indexes=True,
    compound_indexes=True,
    partial_update=True,
    thread_safe=True,
    fork_safe=True,
    concurrent_processes=True,
    # A commit is in the file (WAL) before it returns: SIGKILL loses nothing
    # acknowledged, and SQLITE_FULL rolls the statement back (tested in the suite).
    crash_safe=True,
    disk_full_safe=True,
    persistent=True,
)

#: What an in-memory storage (``sqlite://``) can do: the same, but nothing outlives it
#: and no other process sees it.
memory_features = features.replace(
    persistent=False, concurrent_processes=False, crash_safe=False, disk_full_safe=False
)

#: Table names: plain identifiers, so they need no quoting anywhere (and fit
#: PostgreSQL's 63-byte limit with an index-name suffix).
TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
#: The table format this build writes: "3" keeps the rowids ascending as the pks do
#: while the table is in row order (docs/sqlite.md, "Row order"), which builds
#: writing "2" would not (they would insert a lower pk behind the view's back).
FORMAT_VERSION = "3"
#: The format of tables with shadow columns (docs/sqlite.md, "Shadow columns") but
#: no row order, made by earlier builds: read and written alike, in pk order.
SHADOW_FORMAT = "2"
#: The format of tables made by earlier builds still (no shadow columns), read and written alike.
LEGACY_FORMAT = "1"
#: Most top-level fields with shadow columns per table (two columns each): every
#: write computes all of them, so wide records pay per column; further fields are
#: queried through expressions over ``body`` as before.
SHADOW_MAX = 32
#: A field first written with a value longer than this in stored JSON (characters:
#: a text, a blob, a large list or dict) gets no shadow columns: its value column
#: would hold a second copy of it in every row, doubling the file and each write for
#: a field queries rarely filter on. Such fields are queried through the expressions
#: over ``body`` (the same answers); an index on one still gets its columns.
SHADOW_VALUE_MAX = 256
#: How often (seconds) a storage looks whether another connection added shadow
#: columns before it runs a query (writes check on every statement; a query that
#: does not know a column is only slower, never wrong).
SHADOW_RECHECK = 1.0
#: The page size of database files this backend creates (SQLite's default is 4096).
#: Index inserts land at scattered places, and a commit writes every page it dirtied
#: to the WAL (then a checkpoint copies it into the file): with 16 KiB pages the
#: same records dirty fewer pages and cost fewer system calls (docs/sqlite.md,
#: "Performance"). Files made earlier keep their page size.
PAGE_SIZE = 16384
#: Each connection's page cache, in KiB (``PRAGMA cache_size`` negative): 8000 KiB
#: holds 500 pages of 16 KiB, as many pages as SQLite's default 2000 KiB holds at
#: its default 4 KiB pages. The cache grows only as pages are read.
CACHE_KIB = 8000
#: The default ``mmap_size``: none. A map makes random lookups on a file larger than
#: the page cache about 20% cheaper, but turns a disk read error into SIGBUS (the
#: process ends) instead of an exception, and its pages count in the process's RSS
#: (docs/sqlite.md, "Memory map"): a setting to opt into, not a default.
MMAP_SIZE = 0
#: Rows pulled from SQLite at a time while iterating.
FETCH_SIZE = 500
#: Parameters per ``pk IN (...)`` (SQLite allows 32766 since 3.32).
CHUNK = 500
#: Most values of an index's first key a count walks (see Storage._count_by_prefix).
PREFIX_WALK_MAX = 64
#: A JSON path literal after ``body, `` in SQL the dialect wrote (``json_type(body, '$."a"')``).
_BODY_PATH = re.compile(r"\(body, ('(?:[^']|'')*')")
#: The path literal of a tagged value's sort key ends with this part.
_TAG_PART = '."$"\''
#: A part of a JSON path literal, as _json_path writes it.
_PATH_PART = re.compile(r'\."((?:[^"\\]|\\.)*)"')


class Settings(BaseSettings):
    """Settings of the SQLite backend."""

    #: The database file; None or ":memory:" keeps it in memory for this storage only.
    path: str | None = None
    #: The table holding this storage's records.
    table: str = "documents"
    #: Seconds a write waits for another connection's write lock before failing.
    timeout: float = 30.0
    #: PRAGMA synchronous: NORMAL (with WAL: durable against process crashes,
    #: may lose the last commits on power loss) or FULL (durable against both).
    synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"
    #: PRAGMA mmap_size: bytes of the file SQLite reads through a memory map instead
    #: of read() calls (0, the default: none). Only reads: writes still go through the
    #: WAL and its syncs, so durability is the same either way (docs/sqlite.md,
    #: "Memory map").
    mmap_size: int = pydantic.Field(default=MMAP_SIZE, ge=0)

    @pydantic.field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        if not TABLE_NAME.fullmatch(value) or value.lower().startswith("sqlite_"):
            raise ValueError(
                "must be a plain identifier (letters, digits, _; at most 40) "
                "not starting with sqlite_"
            )
        if value == META_TABLE:
            raise ValueError(f"{META_TABLE} is the library's own table")
        return value


class Query(SQLQuery):
    """A query compiled to SQLite SQL."""


class _RowOrderGone(PyModelsError):
    """A statement read a table's row-order view, which another connection dropped
    (the table left row order): the reader learns it and runs the statement again."""


def _translate(e: BaseException, what: str = "sqlite") -> BaseException | None:
    """The library's exception for a sqlite3 error (None: not a driver error)."""
    if isinstance(e, sqlite3.OperationalError):
        message = str(e)
        if message.startswith("no such table: ") and message.endswith(ROWID_VIEW):
            return _RowOrderGone(f"{what}: {e}")
    if isinstance(e, sqlite3.IntegrityError):
        return IntegrityError(f"{what}: {e}")
    if isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)):
        return LockTimeout(
            f"{what}: the database stayed locked by another connection for the whole "
            f"timeout ({e}); nothing was written"
        )
    if isinstance(e, sqlite3.Error):
        return PyModelsError(f"{what}: {e}")
    return None


#: SQLite's primary result codes for a file it cannot read as a database.
_DAMAGE_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def _damaged(e: BaseException) -> bool:
    """Whether SQLite refused the file itself: damaged pages, or not a database at all."""
    code = getattr(e, "sqlite_errorcode", None) if isinstance(e, sqlite3.DatabaseError) else None
    return code is not None and code & 0xFF in _DAMAGE_CODES


_UNIQUE_FAILED = "UNIQUE constraint failed: "
#: A shadow column's name, as SQLite names it in a constraint's message.
_SHADOW_COLUMN = re.compile(r"[rv][0-9]+:(.+)")


def _unique_failed(message: str) -> tuple[str | None, tuple[str, ...]] | None:
    """The index (by name) or the shadow fields a UNIQUE failure names; None where it
    names anything else (the pk, a column another program added)."""
    if not message.startswith(_UNIQUE_FAILED):
        return None
    rest = message[len(_UNIQUE_FAILED) :]
    if rest.startswith("index '") and rest.endswith("'"):
        return rest[len("index '") : -1], ()
    fields: list[str] = []
    for column in rest.split(", "):
        shadow = _SHADOW_COLUMN.fullmatch(column.partition(".")[2])
        if shadow is None:
            return None
        if shadow.group(1) not in fields:
            fields.append(shadow.group(1))
    return None, tuple(fields)


def _numbered(sql: str, first: int) -> str:
    """``sql`` with its parameter markers numbered ``?first``, ``?first+1``, ..."""
    parts = sql.split(PARAM)
    out = [parts[0]]
    for n, part in enumerate(parts[1:], first):
        out.append(f"?{n}{part}")
    return "".join(out)


def _meta_value(conn: sqlite3.Connection, name: str) -> str | None:
    """The value the meta table holds under ``name``, None if it holds none."""
    row = conn.execute(f"SELECT value FROM {META_TABLE} WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row[0])


def _long(value: Any) -> bool:
    """Whether ``value`` takes more than :data:`SHADOW_VALUE_MAX` characters stored."""
    if type(value) is str:
        return len(value) > SHADOW_VALUE_MAX
    if isinstance(value, (bytes, list, dict)):
        return len(dumps(value)) > SHADOW_VALUE_MAX
    return False


def _untagged(literal: str) -> str:
    """The path literal of a field, given its own or its tag's (``'$."a"."$"'``)."""
    return literal[: -len(_TAG_PART)] + "'" if literal.endswith(_TAG_PART) else literal


def _path_of(literal: str) -> tuple[str, ...] | None:
    """The path a JSON path literal of the dialect names (None: not one it writes)."""
    text = literal[1:-1].replace("''", "'")
    if not text.startswith("$"):
        return None
    try:
        path = tuple(json.loads(f'"{part}"') for part in _PATH_PART.findall(text))
    except ValueError:
        return None
    return path if path and DIALECT.path_literal(path) == literal else None


def _path_literal_of_rank(rank: str) -> str:
    """The path literal a rank expression tests (its first ``json_type(body, ...)``)."""
    found = _BODY_PATH.search(rank)
    return found.group(1) if found else ""


class _SchemaIndex(NamedTuple):
    """An index of the dialect's making, as counting sees it."""

    name: str
    #: The first key's rank expression.
    rank: str
    #: Every path literal the index holds (untagged).
    paths: frozenset[str]
    #: The first key's path.
    lead: tuple[str, ...]
    #: The second key's path literal ("" when there is none).
    second: str


def _close_quietly(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.close()


class Storage(SQLStorage):
    """Records as JSON in one SQLite table."""

    features: ClassVar[Features] = features
    query_class: ClassVar[type[BaseQuery[Any]]] = Query
    _page_size = FETCH_SIZE
    settings_class: ClassVar[type[BaseSettings]] = Settings
    url_schemes: ClassVar[tuple[str, ...]] = ("sqlite", "sqlite3")
    settings: Settings

    # The shadow columns every connection can see (committed), and those only the
    # thread holding the open transaction can see (added in it): a statement naming
    # a column its connection cannot see fails, so each thread writes and queries
    # through a view its own connection has. Knowing fewer columns than the table
    # has is always safe (the expression gives the same answer; the upsert's guard
    # sends the write round again).
    _committed: View
    _pending: tuple[int, View] | None

    @property
    def _view(self) -> View:
        pending = self._pending
        if pending is not None and pending[0] == threading.get_ident():
            return pending[1]
        return self._committed

    @property
    def _shadow(self) -> Shadow:
        return self._view.shadow

    @property
    def _dialect(self) -> SQLiteDialect:
        return self._view.dialect

    @property
    def _compiler(self) -> Compiler:
        return self._view.compiler

    @classmethod
    def settings_from_url(cls, url: str) -> dict[str, Any]:
        """``sqlite:///rel.db``, ``sqlite:////abs.db``, ``sqlite://`` (memory); ``?table=...``."""
        parts = urlsplit(url)
        settings: dict[str, Any] = dict(parse_qsl(parts.query, keep_blank_values=True))
        if parts.netloc or parts.path not in ("", "/"):
            settings["path"] = url_path(url)
        return settings

    @property
    def location(self) -> str | None:
        """The database file (``:memory:`` in memory) and the table, for people."""
        path = ":memory:" if self._memory else str(self.settings.path)
        return path if self._table == "documents" else f"{path}?table={self._table}"

    def _has_index(self, spec: IndexSpec) -> bool:
        name = self._dialect.index_name(self._table, spec)
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ? AND tbl_name = ?"
        return bool(self._fetchall(sql, (name, self._table)))

    # ------------------------------------------------------------ connections

    def _open(self) -> None:
        path = self.settings.path
        self._memory = path is None or path == ":memory:"
        if self._memory:
            # Instance attribute on purpose: the class-level flags describe files.
            self.features = memory_features  # type: ignore[misc]
        self._table = self.settings.table
        self._qtable = f'"{self._table}"'
        self._file = None if self._memory else str(path)
        where = "memory" if self._file is None else self._file
        self._where = f"sqlite: {where}, table {self._table!r}"
        self._committed = view_of(self._table, None)
        self._pending = None
        # Whether the table's format keeps row order (every write is guarded), and
        # whether it was still in row order when last looked at (reads use its view).
        self._ordered = False
        self._rowid_order = False
        self._rowid_view = self._table + ROWID_VIEW
        self._make_rowid_view = (
            f"CREATE VIEW IF NOT EXISTS {DIALECT.ident(self._rowid_view)} AS "
            f"SELECT rowid AS {ROWID_COLUMN}, * FROM {self._qtable}"
        )
        self._prepare_statements()
        self._columns_key = f"{self._table}.columns"
        # The fields kept without columns (see SHADOW_VALUE_MAX), as last read from
        # the meta table's list under this key: decided once per table, not per writer.
        self._unshadowed_key = f"{self._table}.unshadowed"
        self._unshadowed: frozenset[str] = frozenset()
        self._synced_at = 0.0
        # Files: one connection per thread. In memory, one connection (each
        # connection would get a database of its own) used under self._lock.
        self._conns = ThreadConnections(self._connect, _close_quietly)
        self._shared: sqlite3.Connection | None = self._connect() if self._memory else None
        try:
            with self._db() as conn:
                self._init_schema(conn)
        except BaseException:
            self._close()
            raise

    def _connect_read_only(self, path: str) -> sqlite3.Connection:
        """A read-only connection, also for a file in a directory this process cannot write.

        A WAL database needs its ``-shm`` file, which SQLite cannot create in a
        read-only directory ("attempt to write a readonly database"). Then the
        file is opened ``immutable``: no locks and no ``-wal``, which is exact
        only while nobody writes it, so a non-empty ``-wal`` (commits not yet
        checkpointed into the file) is refused rather than silently missed.
        """
        # as_uri() percent-quotes the path ("?" or "%" in a name stay names).
        uri = Path(path).absolute().as_uri() + "?mode=ro"
        options: dict[str, Any] = {
            "uri": True,
            "timeout": self.settings.timeout,
            "check_same_thread": False,
            "isolation_level": None,
        }
        conn: sqlite3.Connection = sqlite3.connect(uri, **options)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            conn.close()
            if os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
                raise
        wal = f"{path}-wal"
        if os.path.exists(wal) and os.path.getsize(wal) > 0:
            raise PyModelsError(
                f"cannot open {path} read-only: its directory is read-only and {wal} holds "
                "commits not yet checkpointed into it; open it once where it can be "
                "written (or copy the three files to a writable directory)"
            )
        conn = sqlite3.connect(uri + "&immutable=1", **options)
        return conn

    def _connect(self) -> sqlite3.Connection:
        path = self.settings.path
        try:
            if self._memory:
                conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            elif self.read_only:
                if not os.path.exists(str(path)):
                    raise StorageNotFound(
                        f"{path} does not exist (read_only is set)", path=str(path)
                    )
                conn = self._connect_read_only(str(path))
            else:
                conn = sqlite3.connect(
                    str(path),
                    timeout=self.settings.timeout,
                    check_same_thread=False,
                    # Autocommit: the storage issues BEGIN IMMEDIATE / COMMIT itself.
                    isolation_level=None,
                )
            try:
                conn.execute(f"PRAGMA synchronous = {self.settings.synchronous}")
                conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
                if not self._memory:
                    conn.execute(f"PRAGMA mmap_size = {self.settings.mmap_size}")
                register_functions(conn)
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as e:
            if self._memory:
                raise PyModelsError(f"cannot open an in-memory database: {e}") from e
            message = open_failure(str(path), e, write=not self.read_only)
            if _damaged(e):
                raise CorruptData(
                    f"{message} (damaged, or not a SQLite database; if it was one, restore "
                    "it from a copy)",
                    path=str(path),
                ) from e
            raise PyModelsError(message) from e
        return conn

    def _fetch_records(self, sql: str, params: tuple[Any, ...]) -> list[Item]:
        return loads_rows(self._fetchall(sql, params), self._record)

    def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """The rows of one statement (the hot path: no guard object for files)."""
        if self._shared is None:
            try:
                return self._conns.get().execute(sql, params).fetchall()
            except sqlite3.Error as e:
                raise self._translate(e) or e from e
        with self._db() as conn:
            return conn.execute(sql, params).fetchall()

    def _db(self) -> Guard[sqlite3.Connection]:
        """``with self._db() as conn``: this thread's connection, errors translated."""
        if self.closed:
            raise PyModelsError("sqlite storage is closed")
        if self._shared is not None:
            return Guard(self._shared, self._translate, self._lock)
        return Guard(self._conns.get(), self._translate)

    def _translate(self, e: BaseException) -> BaseException | None:
        """:func:`_translate`, with a unique index's refusal told in words and a damaged
        file named as such."""
        if _damaged(e):
            return CorruptData(
                f"{self._where}: the file is damaged or not a SQLite database ({e}); if it "
                "was one, restore it from a copy",
                path=self._file,
            )
        if isinstance(e, sqlite3.OperationalError) and str(e) == "malformed JSON":
            # pymodels binds only JSON it wrote: the text is a body another program
            # stored, which a query's JSON function met before any pk was known.
            return CorruptData(
                f"{self._where}: a stored body is not valid JSON, and SQLite's JSON "
                f"functions refuse it; SELECT pk FROM {self._qtable} WHERE NOT "
                "json_valid(body) lists such records",
                path=self._file,
            )
        translated = _translate(e)
        if type(translated) is IntegrityError:
            failed = _unique_failed(str(e))
            if failed is not None:
                return IntegrityError(f"sqlite: {self._unique_refusal(*failed)}")
        return translated

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        if not self._memory and not self.read_only:
            if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
                # A new file: its page size is fixed by the first write (the WAL switch).
                conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            if mode != "wal":
                self._set_wal(conn)
        key = f"{self._table}.format"
        version = self._format_version(conn, key)
        if version is None:
            if self.read_only:
                raise StorageNotFound(
                    f"{self.settings.path} has no pymodels table {self._table!r} "
                    "(read_only is set)",
                    path=f"{self.settings.path}, table {self._table}",
                )
            # Only a new table takes the write lock: opening an existing one
            # never waits behind another connection's transaction.
            conn.execute("BEGIN IMMEDIATE")
            try:
                # A rowid table: index entries end in a small integer rowid, so a
                # query's index search and its row reads are cheaper than with a
                # WITHOUT ROWID table keyed by the 26-character pk (tables made
                # that way by earlier versions are read and written alike: no
                # statement names the rowid). See docs/sqlite.md, "Layout".
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._qtable} "
                    "(pk TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL)"
                )
                # Row order (docs/sqlite.md, "Row order"): the view exists while the
                # rowids ascend as the pks do; ordered reads go through it. Only for
                # an empty table (one another program made may hold rows in any order).
                if conn.execute(f"SELECT 1 FROM {self._qtable} LIMIT 1").fetchone() is None:
                    conn.execute(self._make_rowid_view)
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {META_TABLE} "
                    "(name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID"
                )
                # A new table has shadow columns (none yet: they come with the fields).
                conn.execute(
                    f"INSERT OR IGNORE INTO {META_TABLE} (name, value) VALUES (?, ?), (?, ?)",
                    (key, FORMAT_VERSION, self._columns_key, "[]"),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            version = self._format_version(conn, key)
        if version not in (FORMAT_VERSION, SHADOW_FORMAT, LEGACY_FORMAT):
            raise ConfigurationError(
                f"table {self._table!r} has format {version}; this pymodels reads "
                f"formats {LEGACY_FORMAT}, {SHADOW_FORMAT} and {FORMAT_VERSION}"
            )
        if version == FORMAT_VERSION:
            self._ordered = True
            self._rowid_order = self._view_exists(conn)
        if version != LEGACY_FORMAT:
            text = self._meta_columns(conn)
            if text is None:
                raise ConfigurationError(
                    f"table {self._table!r} has format {version} but no list of its "
                    f"shadow columns ({self._columns_key} in {META_TABLE})"
                )
            self._use_columns(text, conn)

    def _format_version(self, conn: sqlite3.Connection, key: str) -> str | None:
        """The table's format version, None when it was never set up."""
        try:
            return _meta_value(conn, key)
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return None
            raise

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL needs a moment alone with the file and does not
        # wait on the busy handler: retry while other processes open it too.
        deadline = time.monotonic() + self.settings.timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    # ------------------------------------------------------------ required hooks

    def _close(self) -> None:
        self._conns.close_all()
        if self._shared is not None:
            _close_quietly(self._shared)

    # ------------------------------------------------------------ optional overrides

    def _load_many(self, pks: list[str]) -> list[dict[str, Any] | None]:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(pks), CHUNK):
            chunk = pks[start : start + CHUNK]
            marks = ", ".join("?" * len(chunk))
            with self._db() as conn:
                rows = conn.execute(
                    f"SELECT pk, body FROM {self._qtable} WHERE pk IN ({marks})", chunk
                ).fetchall()
            found.update((pk, self._record(pk, body)) for pk, body in rows)
        return [found.get(pk) for pk in pks]

    def _store(self, pk: str, record: dict[str, Any], *, overwrite: bool) -> bool:
        if self._shadow.text is None:
            return super()._store(pk, record, overwrite=overwrite)
        body = dumps(record)
        written = self._store_shadowed(pk, body, record, overwrite)
        if written is not None:
            return written
        # The row order refused a new pk below the table's greatest. With the write
        # lock held, leave row order if that is still so, then write again: the
        # guard passes now (the pk is above every other, or the view is gone).
        with self._lock, self._atomic():
            self._leave_row_order_for(pk)
            written = self._store_shadowed(pk, body, record, overwrite)
        if written is None:
            raise PyModelsError(
                f"sqlite: the list of shadow columns of {self._table!r} is missing "
                f"from {META_TABLE}; nothing was written"
            )
        return written

    def _store_shadowed(
        self, pk: str, body: str, record: dict[str, Any], overwrite: bool
    ) -> bool | None:
        """One write of ``record`` (:meth:`_store`'s); None where the row order refused it."""
        while True:
            shadow = self._shadow_for(record)
            hints = hints_of(record, shadow.order)
            with self._db() as conn:
                if not overwrite:
                    # A new row: columns this storage does not know of yet keep their
                    # defaults, which are right for the fields the record lacks (it has
                    # none of them, or it would have added or learnt them just now).
                    written: int = conn.execute(shadow.insert, (pk, body, *hints)).rowcount
                    if written == 1 or not shadow.ordered or self._holds(conn, pk):
                        return written == 1
                    return None
                params = (pk, body, self._columns_key, shadow.text, *hints)
                if conn.execute(shadow.upsert, params).rowcount == 1:
                    return True
                # Nothing written. Either another connection added columns (learn them,
                # then write again) or, the list unchanged, the row order refused a new
                # pk. The view is not looked at again: the upsert and this read are two
                # statements, and another connection may leave row order between them
                # (the caller retries under the write lock, where the view stays put).
                text = self._meta_columns(conn)
                if text is not None and text != shadow.text:
                    self._sync_columns(conn)
                    continue
                if text is not None and shadow.ordered:
                    return None
                raise PyModelsError(
                    f"sqlite: the list of shadow columns of {self._table!r} is missing "
                    f"from {META_TABLE}; nothing was written"
                )

    # ------------------------------------------------------------ row order

    def _holds(self, conn: sqlite3.Connection, pk: str) -> bool:
        """Whether the table holds a record under ``pk``."""
        return conn.execute(self._contains_sql, (pk,)).fetchone() is not None

    def _view_exists(self, conn: sqlite3.Connection) -> bool:
        """Whether the table is in row order (its view exists), as ``conn`` sees it."""
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ?"
        return conn.execute(sql, (self._rowid_view,)).fetchone() is not None

    def _use_pk_order(self) -> None:
        """Read in pk order from now on: the table left row order (or may have)."""
        self._read_in_row_order(False)

    def _read_in_row_order(self, rowid: bool) -> None:
        """Read through the row-order view (``rowid``) or in pk order from now on."""
        self._rowid_order = rowid
        # Each view is checked, not the flag: a thread may have installed a view it
        # built before the flag changed (it then fails once more and lands here again).
        committed = self._committed
        if committed.dialect.rowid_order != rowid:
            self._committed = view_of(self._table, committed.shadow.text, self._ordered, rowid)
        pending = self._pending
        if pending is not None and pending[1].dialect.rowid_order != rowid:
            view = view_of(self._table, pending[1].shadow.text, self._ordered, rowid)
            self._pending = (pending[0], view)

    def _order_state(self, conn: sqlite3.Connection) -> tuple[str | None, bool]:
        """The table's greatest pk (None: empty) and whether it is in row order, as
        ``conn`` sees them; a table seen out of row order is read in pk order."""
        sql = (
            f"SELECT (SELECT max(pk) FROM {self._qtable}), EXISTS (SELECT 1 FROM sqlite_master "
            "WHERE type = 'view' AND name = ?)"
        )
        top, in_order = conn.execute(sql, (self._rowid_view,)).fetchone()
        if not in_order:
            self._use_pk_order()
        return top, bool(in_order)

    def _leave_row_order_for(self, pk: str) -> None:
        """Leave row order if a new ``pk`` cannot keep it (inside a transaction)."""
        with self._db() as conn:
            top, in_order = self._order_state(conn)
            if in_order and top is not None and pk < top and not self._holds(conn, pk):
                self._leave_row_order(conn)

    def _leave_row_order(self, conn: sqlite3.Connection) -> None:
        """Drop the row-order view and close each non-unique index with the pk again
        (inside a transaction, which a failure rolls back whole)."""
        conn.execute(f"DROP VIEW IF EXISTS {DIALECT.ident(self._rowid_view)}")
        self._use_pk_order()
        self._remake_indexes(conn)

    def _enter_row_order(self, conn: sqlite3.Connection) -> None:
        """Make the row-order view of an empty table and end each non-unique index
        in the rowid alone (inside a transaction, which a failure rolls back whole)."""
        conn.execute(self._make_rowid_view)
        self._read_in_row_order(True)
        self._remake_indexes(conn)

    def _remake_indexes(self, conn: sqlite3.Connection) -> None:
        """Make each non-unique index again as the current view's dialect writes it
        (closed with the pk, or not in row order), with the columns ``conn`` sees."""
        self._sync_columns(conn)
        dialect = self._dialect
        for spec in self._indexes():
            if not spec.unique:
                name = dialect.ident(dialect.index_name(self._table, spec))
                conn.execute(f"DROP INDEX IF EXISTS {name}")
                conn.execute(dialect.create_index(self._table, spec))
        self._forget_indexes()
        if self.in_transaction:
            self._forget_at_end = True

    def _in_row_order(self, conn: sqlite3.Connection, rows: list[Any]) -> list[Any]:
        """``rows`` (pk first) to insert with the next rowids, in pk order while the
        table is in row order; it leaves it where their pks are not all above its own."""
        top, in_order = self._order_state(conn)
        if not in_order:
            return rows
        pks = [row[0] for row in rows]
        if pks != sorted(pks):
            rows = sorted(rows, key=itemgetter(0))
        if top is not None and rows[0][0] <= top:
            self._leave_row_order(conn)
        return rows

    def _store_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        # Plain INSERT: the pks are fresh, and a clash (an IntegrityError) makes
        # the caller redo the batch with insert-if-absent, never overwrite.
        if self._shadow.text is None:
            rows = [(pk, dumps(record)) for pk, record in items]
            with self._db() as conn:
                conn.executemany(f"INSERT INTO {self._qtable} (pk, body) VALUES (?, ?)", rows)
            return
        batch = list(items)
        if not batch:
            return
        pks, records = zip(*batch, strict=True)
        known = self._shadow.fields
        if not all(map(known.issuperset, records)):
            settled = known | self._unshadowed
            unsettled = [r for r in records if not settled.issuperset(r)]
            if unsettled:
                self._add_fields_of(unsettled)
        # Within the batch's transaction (the write lock held): columns another
        # connection added are harmless (absent fields, as for _store's INSERT).
        shadow = self._shadow
        n = len(records)
        # hints computed field by field over the whole batch and the rows made
        # by zip: no Python step per record (records are dicts: stored form).
        hint, get = HINT.get, dict.get
        hints = [map(hint, map(type, map(get, records, repeat(f, n)))) for f in shadow.order]
        rows = list(zip(pks, dumps_each(records), *hints, strict=True))
        with self._db() as conn:
            if shadow.ordered:
                rows = self._in_row_order(conn, rows)
            conn.executemany(shadow.bulk, rows)

    def _clear(self) -> None:
        if not self._ordered:
            super()._clear()
            return
        # An empty table is in row order again (nothing is out of order in it).
        with self._lock, self._atomic():
            super()._clear()
            with self._db() as conn:
                if not self._view_exists(conn):
                    self._enter_row_order(conn)

    def _commit(self) -> None:
        committed = False
        try:
            super()._commit()
            committed = True
        finally:
            # Committed: the columns added in the transaction are every connection's.
            # Failed: none of them may be (this thread falls back to the committed
            # view, which never names a column its connection lacks).
            pending, self._pending = self._pending, None
            forget, self._forget_at_end = self._forget_at_end, False
            if committed and pending is not None and pending[0] == threading.get_ident():
                self._committed = pending[1]
            if forget or pending is not None:
                self._forget_indexes()

    def _rollback(self) -> None:
        self._pending = None
        if self._forget_at_end:
            self._forget_at_end = False
            self._forget_indexes()
        with self._db() as conn:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            # Columns added in the transaction are gone with it.
            if self._committed.shadow.text is not None:
                self._sync_columns(conn)

    # ------------------------------------------------------------ shadow columns

    def _meta_columns(self, conn: sqlite3.Connection) -> str | None:
        """The meta table's list of this table's shadow fields (JSON text), None if absent."""
        return _meta_value(conn, self._columns_key)

    def _use_columns(self, text: str, conn: sqlite3.Connection) -> None:
        """Query and write through the shadow columns ``text`` lists, as ``conn`` sees them.

        Read or made inside ``conn``'s open transaction, they are this thread's
        alone until it commits (another connection cannot see a column added in
        it); otherwise they are committed, every connection's.
        """
        view = view_of(self._table, text, self._ordered, self._rowid_order)
        if conn.in_transaction:
            self._pending = (threading.get_ident(), view)
        else:
            pending = self._pending
            if pending is not None and pending[0] == threading.get_ident():
                self._pending = None
            self._committed = view
        self._forget_indexes()

    def _sync_columns(self, conn: sqlite3.Connection) -> None:
        """Learn the columns other connections added (or a rollback took away)."""
        text = self._meta_columns(conn)
        if text is not None and text != self._shadow.text:
            self._use_columns(text, conn)

    def _sync_columns_now_and_then(self) -> None:
        """Before a query: learn new columns, at most every :data:`SHADOW_RECHECK` seconds.

        A query not knowing a column reads the expression instead: the same
        answer, only slower, so it need not look every time.
        """
        if self._shadow.text is None:
            return
        now = time.monotonic()
        if now - self._synced_at >= SHADOW_RECHECK:
            self._synced_at = now
            with self._db() as conn:
                self._sync_columns(conn)

    def _add_fields_of(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Give the fields of ``records`` that have none shadow columns, except those
        whose first value here is longer than :data:`SHADOW_VALUE_MAX` (see there)."""
        firsts: dict[str, Any] = {}
        for record in records:
            for name, value in record.items():
                firsts.setdefault(name, value)
        self._add_fields(firsts, values=firsts)

    def _add_fields(self, names: Iterable[str], values: Mapping[str, Any] | None = None) -> None:
        """Give top-level fields ``names`` shadow columns, up to :data:`SHADOW_MAX` fields.

        With ``values`` (a first value of each field), a field the table keeps
        without columns, or whose value is longer than :data:`SHADOW_VALUE_MAX`, gets
        none (the latter joins the table's list of such fields); without, as for
        an index's fields, every field gets them.

        One transaction (joining the caller's): for each field, two ``ALTER TABLE
        ADD COLUMN`` (instant in SQLite: existing rows read the defaults, rank 0 and
        NULL, which are an absent field's) and one UPDATE of the rows holding it,
        then the meta table's list, which every connection compares before trusting
        its own. A failure leaves no column behind (a savepoint).
        """
        if self.read_only or self._shadow.text is None or len(self._shadow.fields) >= SHADOW_MAX:
            return
        with self._lock, self._atomic(), self._db() as conn:
            self._sync_columns(conn)
            shadow = self._shadow
            fields: list[str] = list(json.loads(str(shadow.text)))
            new = [n for n in dict.fromkeys(names) if n not in shadow.fields and valid_path((n,))]
            if values is not None and new:
                new = self._without_long(conn, new, values)
            new = new[: SHADOW_MAX - len(fields)]
            if not new:
                return
            conn.execute("SAVEPOINT pm_shadow")
            try:
                for name in new:
                    fields.append(name)
                    rank, value = (self._dialect.ident(n) for n in shadow_names(len(fields), name))
                    path = (name,)
                    t = self._qtable
                    conn.execute(f"ALTER TABLE {t} ADD COLUMN {rank} DEFAULT 0")
                    conn.execute(f"ALTER TABLE {t} ADD COLUMN {value}")
                    # Rows written before (by earlier writes of the field in a full table,
                    # or by other programs) get the expressions' values now.
                    conn.execute(
                        f"UPDATE {t} SET {rank} = {DIALECT.rank(path)}, "
                        f"{value} = {DIALECT.value(path)} "
                        f"WHERE {DIALECT.json_type(path)} IS NOT NULL"
                    )
                text = json.dumps(fields)
                conn.execute(
                    f"UPDATE {META_TABLE} SET value = ? WHERE name = ?", (text, self._columns_key)
                )
                conn.execute("RELEASE pm_shadow")
            except BaseException:
                conn.execute("ROLLBACK TO pm_shadow")
                conn.execute("RELEASE pm_shadow")
                raise
            self._use_columns(text, conn)

    def _without_long(
        self, conn: sqlite3.Connection, names: list[str], values: Mapping[str, Any]
    ) -> list[str]:
        """``names`` less the fields kept without columns: those the table's list
        holds, and those whose value in ``values`` is long, which join the list
        (inside the caller's transaction, so the decision is the table's)."""
        text = _meta_value(conn, self._unshadowed_key)
        kept: list[str] = [] if text is None else list(json.loads(text))
        known = set(kept)
        long = [n for n in names if n not in known and _long(values.get(n))]
        if long:
            kept += long
            conn.execute(
                f"INSERT OR REPLACE INTO {META_TABLE} (name, value) VALUES (?, ?)",
                (self._unshadowed_key, json.dumps(kept)),
            )
        self._unshadowed = frozenset(kept)
        return [n for n in names if n not in self._unshadowed]

    def _shadow_for(self, record: dict[str, Any]) -> Shadow:
        """The shadow columns to write ``record`` with: its new fields given theirs first."""
        shadow = self._shadow
        if not shadow.fields.issuperset(record) and not (
            shadow.fields | self._unshadowed
        ).issuperset(record):
            self._add_fields_of([record])
        return self._shadow

    def _rebuild_columns(self) -> int:
        """Recompute every shadow column of every row from ``body``; return the rows.

        For programs that write ``body`` with plain SQL (tests of foreign data do):
        the library's own writes keep the columns right by themselves.
        """
        shadow = self._shadow
        if shadow.text is None or not shadow.fields:
            return 0
        sets = ", ".join(
            f"{r} = {DIALECT.rank((f,))}, {v} = {DIALECT.value((f,))}"
            for f, (r, v) in shadow.columns.items()
        )
        with self._atomic():
            return self._rowcount(Frag(f"UPDATE {self._qtable} SET {sets}"))

    def _compile_condition(self, condition: Condition) -> Compiled:
        self._sync_columns_now_and_then()
        return super()._compile_condition(condition)

    def _select_page(
        self, condition: Condition, order: tuple[OrderKey, ...], offset: int, limit: int | None
    ) -> list[Item] | None:
        # SQLStorage._select_page with the column check and the fetch written
        # out: first() and every short slice run this, and an indexed lookup
        # spends as much time in Python as in SQLite, a good part of it in
        # the calls through the layers (properties, _fetch_records, ...).
        if limit is None or limit > self._page_size:
            return None
        self._sync_columns_now_and_then()
        statement = self._view.compiler.select(condition, self._table, order, offset, limit)
        if statement is None:
            return None
        try:
            rows = self._fetchall(*statement)
        except _RowOrderGone:
            self._use_pk_order()
            return self._select_page(condition, order, offset, limit)
        return settled_page(loads_rows(rows, self._record), order)

    def _compare_and_store(
        self, pk: str, record: dict[str, Any], field: str, expected: Any
    ) -> bool:
        if expected is None or self._shadow.text is None:
            return super()._compare_and_store(pk, record, field, expected)
        leaf = self._compiler.version_guard(field, expected)
        if leaf is None:
            return super()._compare_and_store(pk, record, field, expected)
        body = dumps(record)
        while True:
            shadow = self._shadow_for(record)
            # One conditional statement (a compare-and-swap across processes) that
            # writes nothing unless this storage knows every column the table has.
            sql = (
                f"UPDATE {self._qtable} SET {shadow.set_all} WHERE pk = ?2 "
                f"AND (SELECT value FROM {META_TABLE} WHERE name = ?3) IS ?4 "
                f"AND ({_numbered(leaf.frag.sql, 5 + len(shadow.order))})"
            )
            hints = hints_of(record, shadow.order)
            params = (body, pk, self._columns_key, shadow.text, *hints, *leaf.frag.params)
            with self._db() as conn:
                if conn.execute(sql, params).rowcount == 1:
                    return True
                if self._meta_columns(conn) == shadow.text:
                    return False  # the version differs: a genuine conflict
                self._sync_columns(conn)

    def _update_many(self, pks: list[str], changes: list[Change]) -> int:
        compiled = self._dialect.update(changes)
        if compiled is None:
            return super()._update_many(pks, changes)
        body, guard = compiled
        with self._atomic():
            if self._shadow.text is not None:
                # The write lock is held: learn the columns others added, and give
                # fields this update creates theirs, before computing any.
                with self._db() as conn:
                    self._sync_columns(conn)
                made = {
                    c.path[0]: c.value if len(c.path) == 1 else None
                    for c in changes
                    if c.op != "unset"
                }
                if not (self._shadow.fields | self._unshadowed).issuperset(made):
                    self._add_fields_of([made])
            columns = self._shadow.columns
            touched = [f for f in dict.fromkeys(c.path[0] for c in changes) if f in columns]
            done: set[str] = set()
            for start in range(0, len(pks), CHUNK):
                chunk = pks[start : start + CHUNK]
                marks = ", ".join("?" * len(chunk))
                sql = (
                    f"UPDATE {self._qtable} SET body = {body.sql} "
                    f"WHERE pk IN ({marks}) AND ({guard.sql}) RETURNING pk"
                )
                if touched:
                    # The new body once (materialized), then the columns of the fields
                    # it changed computed from it, in the same statement.
                    sets = "".join(
                        f", {columns[f][0]} = {over(DIALECT.rank((f,)), 'n.b')}, "
                        f"{columns[f][1]} = {over(DIALECT.value((f,)), 'n.b')}"
                        for f in touched
                    )
                    sql = (
                        f"WITH n AS MATERIALIZED (SELECT pk AS k, {body.sql} AS b "
                        f"FROM {self._qtable} WHERE pk IN ({marks}) AND ({guard.sql})) "
                        f"UPDATE {self._qtable} SET body = n.b{sets} FROM n "
                        f"WHERE {self._qtable}.pk = n.k RETURNING pk"
                    )
                text, params = self._dialect.render(
                    Frag(sql, (*body.params, *chunk, *guard.params))
                )
                with self._db() as conn:
                    done.update(pk for (pk,) in conn.execute(text, params).fetchall())
            # What the guard kept out (a parent that is not a dict, an int that
            # would overflow, a missing record) takes the exact generic path.
            rest = [pk for pk in pks if pk not in done]
            return len(done) + (super()._update_many(rest, changes) if rest else 0)

    def _create_index(self, spec: IndexSpec) -> None:
        # The index's top-level fields get shadow columns first (their backfill is a
        # pass over the table, as building the index is): the index is then on
        # plain columns, which covers a count.
        fields = [k.path[0] for k in spec.keys if len(k.path) == 1 and not k.is_pk]
        if fields and not self._shadow.fields.issuperset(fields):
            self._add_fields(fields)
        # One write transaction: the check of the order, the index and its entry in
        # the meta table. Another connection leaving row order between the check and
        # the CREATE INDEX would leave an index ending in the rowid alone on a table
        # out of row order (right answers, but a sort on every ordered read).
        with self._lock, self._atomic():
            if self._rowid_order:
                # An index of a table in row order ends in the rowid alone: make sure
                # the table still is (one that left it closes its indexes with the pk).
                with self._db() as conn:
                    if not self._view_exists(conn):
                        self._use_pk_order()
            super()._create_index(spec)
        self._forget_indexes()
        if self.in_transaction:
            # Other threads may fill the caches before the index is committed.
            self._forget_at_end = True

    # ------------------------------------------------------------ counting from an index

    _index_cache: list[_SchemaIndex] | None = None
    #: An index was made in the open transaction: forget the caches when it ends.
    _forget_at_end = False

    def _may_cache(self) -> bool:
        """Whether what this thread reads of the schema may be cached for every thread.

        Not inside a transaction: an index or a column made in it is not yet
        another connection's to name.
        """
        with self._db() as conn:
            return not conn.in_transaction

    def _schema_indexes(self) -> list[_SchemaIndex]:
        """What counting needs to know of each index of the dialect's making.

        Read from the schema (so indexes made by other programs using pymodels count
        too), once per storage and again after ``create_index``.
        """
        found = self._index_cache
        if found is None:
            found = []
            rows = self._fetchall(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
                (self._table,),
            )
            for name, sql in rows:
                literals = _BODY_PATH.findall(sql or "")
                path = _path_of(literals[0]) if literals else None
                if path is None:
                    continue
                rank = self._dialect.rank(path)
                # Only an index whose first term is the dialect's own rank expression.
                if f"ON {self._qtable} (({rank})" not in str(sql):
                    continue
                untagged = list(dict.fromkeys(map(_untagged, literals)))
                second = untagged[1] if len(untagged) > 1 else ""
                path2 = _path_of(second) if second else None
                # The second key, when it is one: its rank expression right after the first key's.
                lead = f"({rank}), ({DIALECT.value(path)})"
                if path2 is None or not any(
                    f"{lead}{way}, ({self._dialect.rank(path2)})" in str(sql)
                    for way in ("", " DESC")
                ):
                    second = ""
                found.append(_SchemaIndex(str(name), rank, frozenset(untagged), path, second))
            if self._may_cache():
                self._index_cache = found
        return found

    def _count_where(self, where: Frag | None) -> int:
        if where is not None and PK_FROM in where.sql:
            return super()._count_where(where)  # the dialect writes the bound out
        if where is not None and self._shadow.fields:
            try:
                walked = self._count_by_column_prefix(where)
                if walked is not None:
                    return walked
            except PyModelsError:
                self._forget_indexes()  # dropped meanwhile: count as SQLite plans it
        statement = None if where is None else self._count_from_index(where)
        if statement is not None:
            try:
                if where is not None:
                    walked = self._count_by_prefix(where)
                    if walked is not None:
                        return walked
                return self._scalar(statement)
            except PyModelsError:
                self._forget_indexes()  # dropped meanwhile: count as before
        return super()._count_where(where)

    def _count_by_prefix(self, where: Frag) -> int | None:
        """A count of a condition on an index's second key only, range by range.

        The index is ordered by its first key, then the second: within one value of
        the first key, the entries a range on the second key selects are adjacent.
        So the count walks the distinct values of the first key (a seek each, in one
        read transaction, at most :data:`PREFIX_WALK_MAX` of them) and counts each
        one's range, reading only the matching entries instead of every entry of
        the index. None (count the whole index instead) when no index has the
        condition's one path second, or when its first key has more values than that.
        """
        used = {_untagged(lit) for lit in _BODY_PATH.findall(where.sql)}
        if len(used) != 1:
            return None
        index = next((i for i in self._schema_indexes() if i.second in used), None)
        if index is None:
            return None
        return self._walk_count(where, index.name, index.rank, DIALECT.value(index.lead))

    def _count_by_column_prefix(self, where: Frag) -> int | None:
        """:meth:`_count_by_prefix` over an index on shadow columns.

        An index on columns covers the count by itself, but it still reads every
        entry; walking the first key's values reads only the matching ones. For a
        condition on the shadow columns of one field only (no expression over
        ``body``), which is an index's second key and leads none.
        """
        if "(body, " in where.sql or not isinstance(self._dialect, ShadowDialect):
            return None
        columns = self._dialect.columns
        used = [f for f, (r, v) in columns.items() if r in where.sql or v in where.sql]
        if len(used) != 1:
            return None
        path = (used[0],)
        specs = self._column_index_specs()
        if any(spec.keys[0].path == path for spec in specs):
            return None  # SQLite searches the index it leads
        for spec in specs:
            lead = spec.keys[0].path
            if len(spec.keys) > 1 and spec.keys[1].path == path and lead[0] in columns:
                rank, value = columns[lead[0]]
                name = self._dialect.index_name(self._table, spec)
                return self._walk_count(where, name, rank, value)
        return None

    _column_specs: list[IndexSpec] | None = None

    def _forget_indexes(self) -> None:
        """Read the indexes again before the next count (made, dropped, new columns)."""
        self._index_cache = None
        self._column_specs = None

    def _column_index_specs(self) -> list[IndexSpec]:
        """The indexes whose first key is a field with shadow columns (read once, as
        :meth:`_schema_indexes`; again after ``create_index`` or new columns)."""
        found = self._column_specs
        if found is None:
            columns = self._shadow.columns
            found = [
                spec
                for spec in self._indexes()
                if len(spec.keys[0].path) == 1
                and not spec.keys[0].is_pk
                and spec.keys[0].path[0] in columns
            ]
            if self._may_cache():
                self._column_specs = found
        return found

    def _walk_count(self, where: Frag, index: str, rank: str, value: str) -> int | None:
        """Count ``where`` one value of the first key of ``index`` at a time (its
        ``rank`` and ``value`` terms); None past :data:`PREFIX_WALK_MAX` values."""
        d = self._dialect
        table = f"{self._qtable} INDEXED BY {d.ident(index)}"
        first = f"SELECT {rank}, {value} FROM {table} WHERE {rank} > -100 ORDER BY 1, 2 LIMIT 1"
        # ORDER BY the value alone where the rank is fixed: SQLite 3.40 sorts in a
        # temporary b-tree when an ORDER BY names an expression bound by "= ?".
        after_value = (
            f"SELECT {rank}, {value} FROM {table} "
            f"WHERE {rank} = ? AND {value} > ? ORDER BY 2 LIMIT 1"
        )
        after_rank = f"SELECT {rank}, {value} FROM {table} WHERE {rank} > ? ORDER BY 1, 2 LIMIT 1"
        count_sql = (
            f"SELECT count(*) FROM {table} WHERE {rank} = ? AND {value} IS ? AND ({where.sql})"
        )
        count, params = d.render(Frag(count_sql, where.params))
        with self._db() as conn:
            own = not conn.in_transaction
            if own:
                conn.execute("BEGIN")  # one snapshot for the walk and every count
            try:
                prefixes: list[tuple[Any, Any]] = []
                row = conn.execute(first).fetchone()
                while row is not None:
                    if len(prefixes) == PREFIX_WALK_MAX:
                        return None
                    prefixes.append(row)
                    r, v = row
                    # NULL (absent or JSON null) is rank 0's one value, and no other rank's.
                    row = None if v is None else conn.execute(after_value, (r, v)).fetchone()
                    if row is None:
                        row = conn.execute(after_rank, (r,)).fetchone()
                return sum(
                    int(conn.execute(count, (r, v, *params)).fetchone()[0]) for r, v in prefixes
                )
            finally:
                if own:
                    conn.execute("COMMIT")

    def _count_from_index(self, where: Frag) -> Frag | None:
        """A count that reads one index and never the table, where one holds every path.

        SQLite 3.40 does not treat an index on expressions as covering, so a
        condition on a path that is not an index's first key is a table scan
        calling ``json_extract`` on every row. But once a query walks an index,
        SQLite reads the indexed expressions from the index entries and seeks a
        row only when it needs a column the index lacks (a deferred seek). So a
        count over an index holding every path of the condition reads only that
        index: ``INDEXED BY`` it, with an always-true range on its first term
        (``rank > -100``: the rank is 0 to 10, or a tag's first character less
        48). The answer is the same statement's; only the access path differs.
        None when a path leads an index (SQLite then searches that index by
        itself) or when no index holds every path.
        """
        used = {_untagged(lit) for lit in _BODY_PATH.findall(where.sql)}
        if not used or where.sql.count("body") != len(_BODY_PATH.findall(where.sql)):
            return None  # no path, or body used some other way
        indexes = self._schema_indexes()
        leading = {_path_literal_of_rank(i.rank) for i in indexes}
        if used & leading:
            return None
        for name, rank, paths, _, _ in indexes:
            if used <= paths:
                sql = (
                    f"SELECT count(*) FROM {self._qtable} INDEXED BY {self._dialect.ident(name)} "
                    f"WHERE {rank} > -100 AND ({where.sql})"
                )
                return Frag(sql, where.params)
        return None

    # ------------------------------------------------------------ used by Query

    def _rows(
        self,
        where: Frag | None,
        order: tuple[OrderKey, ...] | None,
        offset: int,
        limit: int | None,
        columns: str = RECORD_COLUMNS,
    ) -> Generator[tuple[str, Any], None, None]:
        decode = columns == RECORD_COLUMNS
        d = self._dialect
        text, params = d.render(d.select(self._table, where, order, offset, limit, columns))
        guard = self._db()
        try:
            with guard as conn:
                cursor = conn.execute(text, params)
        except _RowOrderGone:
            self._use_pk_order()
            yield from self._rows(where, order, offset, limit, columns)
            return
        try:
            while True:
                with guard:
                    batch = cursor.fetchmany(FETCH_SIZE)
                if not batch:
                    return
                yield from loads_rows(batch, self._record) if decode else batch
        finally:
            # Left open past close() (an abandoned iterator collected later), the
            # connection is gone and so is the cursor: nothing to release, nothing to say.
            with contextlib.suppress(sqlite3.ProgrammingError):
                cursor.close()

    def _select(
        self,
        where: Frag | None,
        order: tuple[OrderKey, ...] | None,
        offset: int,
        limit: int | None,
    ) -> Iterator[tuple[str, dict[str, Any]]] | list[tuple[str, dict[str, Any]]]:
        if limit is not None and limit <= FETCH_SIZE:
            text, params = self._dialect.select_statement(self._table, where, order, offset, limit)
            try:
                return self._fetch_records(text, params)
            except _RowOrderGone:
                self._use_pk_order()
                return self._select(where, order, offset, limit)
        return self._rows(where, order, offset, limit)

    def _explain_select(
        self,
        where: Frag | None,
        order: tuple[OrderKey, ...] | None,
        offset: int = 0,
        limit: int | None = None,
    ) -> str:
        text, params = self._dialect.render(self._dialect.select(self._table, where, order))
        try:
            with self._db() as conn:
                plan = conn.execute("EXPLAIN QUERY PLAN " + text, params).fetchall()
        except _RowOrderGone:
            self._use_pk_order()
            return self._explain_select(where, order, offset, limit)
        depth: dict[int, int] = {0: 0}
        lines = []
        for node, parent, _, detail in plan:
            depth[node] = depth.get(parent, 0) + 1
            lines.append("  " * depth[node] + str(detail))
        head = f"{text}\n  parameters: {list(params)!r}\n  plan (EXPLAIN QUERY PLAN):\n"
        return head + "\n".join("  " + line for line in lines)

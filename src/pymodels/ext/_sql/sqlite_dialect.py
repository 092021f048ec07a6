"""SQLite's SQL for the shared compiler (SQLite 3.38+ with JSON1; tested on 3.40).

Expressions over ``body`` (JSON text) at a path ``P`` (``'$."a"."b"'``):

* ``rank(P)``: ``CASE json_type(body, P) ...`` giving the contract's kind rank;
  tagged objects take their rank from the first character of their ``"$"`` key.
* ``value(P)``: ``coalesce(json_extract(body, P."$"), json_extract(body, P))``:
  the sort key of a tagged value, else what ``json_extract`` returns (0/1 for
  booleans, the number, the text, the JSON text of a list or dict).

``ORDER BY rank, value`` is the contract's order except among lists and among
dicts (their JSON text does not sort element by element), which the shared
query re-sorts in Python. Every comparison carries ``rank = k``: SQLite
compares text above numbers and gives 1 for ``true``, so the kind guard is what
makes ``a > 5`` false for ``"6"`` and ``true``. An index on ``(rank, value)``
serves equality, ranges and order; the queries spell those expressions exactly.

Some predicates call functions this module registers on every connection
(deterministic, so SQLite may cache them; never used in indexes or schema, so
the file stays readable by any SQLite tool): ``pm_lower`` (``str.lower``),
``pm_regexp`` (``re.search``), ``pm_like`` (the ``like`` word test) and
``pm_canon`` (canonical JSON text, for list and dict equality where ``1`` and
``1.0`` are equal).
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from ...backend import INT_MAX, INT_MIN, Change, ValidationError, kind_of
from .compiler import FALSE, PARAM, Dialect, Frag, Leaf, independent, join, str_successor
from .encoding import RANK, canonical, canonical_from_json, dumps, loads, sort_key

__all__ = [
    "ROWID_COLUMN",
    "ROWID_VIEW",
    "SQLiteDialect",
    "ShadowDialect",
    "over",
    "register_functions",
    "shadow_names",
]

#: The suffix of the view a table in row order has (``"documents@rowid"``): the table's
#: columns and its rowid. It exists exactly while the rowids ascend as the pks do, so a
#: statement reading it fails, instead of answering in a wrong order, once they no longer
#: may (table names hold no ``@``).
ROWID_VIEW: Final = "@rowid"
#: The view's name for the rowid (shadow column names start with ``r`` or ``v`` and a slot).
ROWID_COLUMN: Final = '"pm:rowid"'

_TAGGED: Final = frozenset({"decimal", "bytes", "date", "datetime", "datetime_tz"})
_WORD: Final = re.compile(r"\w+")


# ------------------------------------------------------ registered functions


def _pm_lower(text: Any) -> Any:
    return text.lower() if isinstance(text, str) else None


@functools.lru_cache(maxsize=256)
def _regex(pattern: str, ignore_case: int) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE if ignore_case else 0)


def _pm_regexp(pattern: str, ignore_case: int, text: Any) -> int:
    if not isinstance(text, str):
        return 0
    return int(_regex(pattern, ignore_case).search(text) is not None)


@functools.lru_cache(maxsize=256)
def _words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def _pm_like(text: Any, value: str) -> int:
    if not isinstance(text, str):
        return 0
    wanted = _words(value)
    return int(wanted <= frozenset(_WORD.findall(text.lower())))


def _pm_canon(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return canonical_from_json(text)
    except (ValidationError, ValueError, RecursionError):
        # SQLite may call this before the rank term beside it in the same AND
        # (it promises no order), on a row whose value is a string: json_extract
        # then gives the string's own text, not JSON (or JSON nested too deep,
        # or looking tagged). The rank term rejects that row whatever this
        # returns, so no value is the answer, not an error.
        return None


def register_functions(conn: sqlite3.Connection) -> None:
    """Register the functions compiled queries call (once per connection)."""
    conn.create_function("pm_lower", 1, _pm_lower, deterministic=True)
    conn.create_function("pm_regexp", 3, _pm_regexp, deterministic=True)
    conn.create_function("pm_like", 2, _pm_like, deterministic=True)
    conn.create_function("pm_canon", 1, _pm_canon, deterministic=True)


# --------------------------------------------------------------- the dialect


def _json_path(path: Sequence[str]) -> str:
    # SQLite compares a quoted path label with the key's raw token in the JSON
    # text, escapes included: write each part as json.dumps writes the key
    # ("a\\b" for a\b, "\n" for a newline). Field names hold no '"'.
    return "$" + "".join(f'."{json.dumps(part, ensure_ascii=False)[1:-1]}"' for part in path)


def _bind(value: Any) -> Any:
    """The SQL parameter that compares with ``value(P)`` for a scalar of any kind."""
    t = type(value)
    if t is str or t is int or t is float:
        return value  # plain JSON scalars, the common case, without kind_of
    k = kind_of(value)
    if k == "bool":
        return int(value)
    if k in _TAGGED:
        return sort_key(value)
    return value


class SQLiteDialect(Dialect):
    """SQLite 3.38+ (JSON1 built in)."""

    name = "sqlite"
    # IMMEDIATE takes the write lock now (waiting on the busy timeout): a
    # deferred transaction that reads first could fail with "database is
    # locked" when it later tries to write, without waiting.
    begin = "BEGIN IMMEDIATE"
    dumps_body = staticmethod(dumps)
    loads_body = staticmethod(loads)

    def __init__(self, rowid_order: bool = False) -> None:
        super().__init__()
        #: Whether the table's rowids ascend as its pks do (docs/sqlite.md, "Row
        #: order"): then ordered SELECTs read its view :data:`ROWID_VIEW`, which
        #: names the rowid, and order ties by it, so that a scan in table order or
        #: an index's entries (each ending in the rowid) are already in pk order.
        self.rowid_order = rowid_order
        if rowid_order:
            self.tiebreak = ROWID_COLUMN
            self.index_tiebreak = None

    def ordered_source(self, table: str) -> str:
        return self.ident(table + ROWID_VIEW) if self.rowid_order else self.ident(table)

    def pk_from(self, table: str, op: str, ordered: bool) -> str:
        if not (self.rowid_order and ordered):
            return super().pk_from(table, op, ordered)
        # In row order the rowids ascend as the pks do, so the bound is the rowid of
        # the first pk from the anchor on: a seek in the pk index, then one in the
        # table, where "pk >= ?" under ORDER BY rowid reads every row before it. Written
        # here, when the statement is: a reader that finds row order gone writes the
        # statement again in pk order, and the bound with it.
        last = "" if op == ">=" else " DESC"
        first = f"SELECT rowid FROM {self.ident(table)} WHERE pk {op} {PARAM} ORDER BY pk{last}"
        return f"{self.tiebreak} {op} ({first} LIMIT 1)"

    def render(self, frag: Frag) -> tuple[str, tuple[Any, ...]]:
        return frag.sql.replace(PARAM, "?"), frag.params

    def limit(self, offset: int, limit: int | None) -> Frag:
        if not offset:
            return Frag("") if limit is None else Frag(f"LIMIT {PARAM}", (limit,))
        # SQLite has no OFFSET without LIMIT; -1 is "no limit".
        return Frag(f"LIMIT {PARAM} OFFSET {PARAM}", (-1 if limit is None else limit, offset))

    def limit_params(self, offset: int, limit: int | None) -> tuple[Any, ...]:
        if not offset:
            return () if limit is None else (limit,)
        return (-1 if limit is None else limit, offset)

    def update(self, changes: Sequence[Change]) -> tuple[Frag, Frag] | None:
        if not independent(changes):
            return None
        if any(_json_path((part,)) != f'$."{part}"' for c in changes for part in c.path):
            # A name JSON escapes (a backslash, a control character): json_set
            # finds existing keys by their escaped form but writes new keys by
            # escaping the label once more. The generic path is exact.
            return None
        body = Frag("body")
        guards: list[str] = []
        params: list[Any] = []
        for change in changes:
            path = change.path
            for i in range(1, len(path)):
                # json_set would write into (or silently skip) a non-dict parent.
                parent = path[:i]
                guards.append(
                    f"({self.json_type(parent)} IS NULL OR ({self.json_type(parent)} = 'object' "
                    f"AND {self.tag(parent)} IS NULL))"
                )
            p = self.path_literal(path)
            if change.op == "set":
                body = Frag(
                    f"json_set({body.sql}, {p}, json({PARAM}))", (*body.params, dumps(change.value))
                )
            elif change.op == "unset":
                body = Frag(f"json_remove({body.sql}, {p})", body.params)
            else:
                if type(change.value) is not int:
                    return None  # SQLite prints reals with 15 digits: not a round trip
                delta = change.value
                low, high = max(INT_MIN, INT_MIN - delta), min(INT_MAX, INT_MAX - delta)
                guards.append(
                    f"(coalesce({self.json_type(path)}, 'null') = 'null' OR "
                    f"({self.json_type(path)} = 'integer' "
                    f"AND {self.text(path)} BETWEEN {PARAM} AND {PARAM}))"
                )
                params.extend((low, high))
                body = Frag(
                    f"json_set({body.sql}, {p}, coalesce({self.text(path)}, 0) + {PARAM})",
                    (*body.params, delta),
                )
        guard = Frag(" AND ".join(guards) or "TRUE", tuple(params))
        return body, guard

    # --------------------------------------------------------- expressions

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - dialects live as long as the process
    def path_literal(self, path: Sequence[str]) -> str:
        return self.literal(_json_path(path))

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - dialects live as long as the process
    def json_type(self, path: tuple[str, ...]) -> str:
        return f"json_type(body, {self.path_literal(path)})"

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - dialects live as long as the process
    def text(self, path: tuple[str, ...]) -> str:
        """The value at ``path`` (a str when ``json_type`` is 'text')."""
        return f"json_extract(body, {self.path_literal(path)})"

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - dialects live as long as the process
    def tag(self, path: tuple[str, ...]) -> str:
        """The sort key of a tagged value at ``path``, else NULL."""
        return f"json_extract(body, {self.path_literal((*path, '$'))})"

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - dialects live as long as the process
    def rank(self, path: tuple[str, ...]) -> str:
        return (
            f"CASE {self.json_type(path)} WHEN 'text' THEN 4 WHEN 'integer' THEN 2 "
            "WHEN 'real' THEN 2 WHEN 'true' THEN 1 WHEN 'false' THEN 1 WHEN 'array' THEN 9 "
            f"WHEN 'object' THEN coalesce(unicode({self.tag(path)}) - 48, 10) ELSE 0 END"
        )

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - dialects live as long as the process
    def value(self, path: tuple[str, ...]) -> str:
        return f"coalesce({self.tag(path)}, {self.text(path)})"

    def order_terms(self, path: tuple[str, ...], descending: bool) -> list[str]:
        # NULL (absent) sorts first ascending and last descending, as in the contract.
        direction = " DESC" if descending else ""
        return [f"({self.rank(path)}){direction}", f"({self.value(path)}){direction}"]

    def _is_text(self, path: tuple[str, ...]) -> str:
        return f"{self.json_type(path)} = 'text'"

    def value_bound(self, path: tuple[str, ...], op: str, value: Any) -> Frag | None:
        rank, sort_value = self.order_terms(path, False)
        k = kind_of(value)
        if k in ("list", "dict"):
            # SQL does not order two lists or two dicts as the contract does: the kind only.
            return Frag(f"{rank} {op} {RANK[k]}")
        # A row value: SQLite seeks an index on (rank, value) to it.
        return Frag(f"({rank}, {sort_value}) {op} ({RANK[k]}, {PARAM})", (_bind(value),))

    # --------------------------------------------------------------- leaves

    def exists(self, path: tuple[str, ...], present: bool) -> Leaf:
        # A JSON null (written by another client) reads as absent.
        op = "<>" if present else "="
        return Leaf(Frag(f"coalesce({self.json_type(path)}, 'null') {op} 'null'"))

    compare_param = staticmethod(_bind)

    # The value test first: in a scan it fails for most rows, which then skip the
    # kind test (most rows hold the kind asked for, so that test rarely fails). The
    # planner matches index terms in either order.
    def compare(self, path: tuple[str, ...], op: str, value: Any) -> Leaf:
        rank = RANK[kind_of(value)]
        sql = f"{self.value(path)} {op} {PARAM} AND {self.rank(path)} = {rank}"
        return Leaf(Frag(sql, (_bind(value),)))

    def between(self, path: tuple[str, ...], low: Any, high: Any) -> Leaf:
        rank = RANK[kind_of(low)]
        sql = f"{self.value(path)} BETWEEN {PARAM} AND {PARAM} AND {self.rank(path)} = {rank}"
        return Leaf(Frag(sql, (_bind(low), _bind(high))))

    def container_equals(self, path: tuple[str, ...], value: Any) -> Leaf:
        rank = RANK[kind_of(value)]
        sql = f"{self.rank(path)} = {rank} AND pm_canon({self.text(path)}) = {PARAM}"
        return Leaf(Frag(sql, (canonical(value),)))

    def _element(self, value: Any) -> Frag:
        """Whether the json_each row ``e`` is an element equal to ``value``."""
        k = kind_of(value)
        if k == "bool":
            return Frag(f"e.type = '{'true' if value else 'false'}'")
        if k == "number":
            return Frag(f"e.type IN ('integer', 'real') AND e.atom = {PARAM}", (value,))
        if k == "str":
            return Frag(f"e.type = 'text' AND e.atom = {PARAM}", (value,))
        if k in _TAGGED:
            return Frag(
                f"e.type = 'object' AND json_extract(e.value, '$.\"$\"') = {PARAM}",
                (sort_key(value),),
            )
        json_type = "array" if k == "list" else "object"
        return Frag(f"e.type = '{json_type}' AND pm_canon(e.value) = {PARAM}", (canonical(value),))

    def list_has(self, path: tuple[str, ...], values: Sequence[Any]) -> Leaf:
        inner = join(" OR ", (self._element(v) for v in values))
        sql = (
            f"{self.json_type(path)} = 'array' AND EXISTS (SELECT 1 FROM "
            f"json_each(body, {self.path_literal(path)}) AS e WHERE {inner.sql})"
        )
        return Leaf(Frag(sql, inner.params))

    def str_contains(self, path: tuple[str, ...], value: str) -> Leaf:
        sql = f"{self._is_text(path)} AND instr({self.text(path)}, {PARAM}) > 0"
        return Leaf(Frag(sql, (value,)))

    def startswith(self, path: tuple[str, ...], prefix: str) -> Leaf:
        # A range on value(P), never LIKE (which ignores ASCII case): indexable
        # and exact, since text compares by code point (BINARY collation).
        sql = f"{self.rank(path)} = 4 AND {self.value(path)} >= {PARAM}"
        params: tuple[Any, ...] = (prefix,)
        upper = str_successor(prefix)
        if upper is not None:
            sql += f" AND {self.value(path)} < {PARAM}"
            params += (upper,)
        return Leaf(Frag(sql, params))

    def endswith(self, path: tuple[str, ...], suffix: str) -> Leaf:
        if not suffix:
            return Leaf(Frag(self._is_text(path)))
        # substr(x, -n) is the last n characters (all of x when shorter).
        sql = f"{self._is_text(path)} AND substr({self.text(path)}, {PARAM}) = {PARAM}"
        return Leaf(Frag(sql, (-len(suffix), suffix)))

    def case_insensitive(self, path: tuple[str, ...], op: str, value: str) -> Leaf:
        # pm_lower is Python's str.lower(), so this is the contract exactly.
        low = value.lower()
        folded = f"pm_lower({self.text(path)})"
        guard = self._is_text(path)
        if op == "iequals":
            return Leaf(Frag(f"{guard} AND {folded} = {PARAM}", (low,)))
        if op == "icontains":
            return Leaf(Frag(f"{guard} AND instr({folded}, {PARAM}) > 0", (low,)))
        if not low:
            return Leaf(Frag(guard))
        if op == "istartswith":
            sql = f"{guard} AND substr({folded}, 1, {PARAM}) = {PARAM}"
            return Leaf(Frag(sql, (len(low), low)))
        sql = f"{guard} AND substr({folded}, {PARAM}) = {PARAM}"
        return Leaf(Frag(sql, (-len(low), low)))

    def regex(self, path: tuple[str, ...], pattern: str, ignore_case: bool) -> Leaf:
        sql = f"{self._is_text(path)} AND pm_regexp({PARAM}, {PARAM}, {self.text(path)})"
        return Leaf(Frag(sql, (pattern, int(ignore_case))))

    def date_part(self, path: tuple[str, ...], part: str, value: int) -> Leaf:
        # Sort keys of dates and datetimes: rank digit, then YYYY-MM-DD... (UTC when aware).
        start, width, top = {"year": (2, 4, 9999), "month": (7, 2, 12), "day": (10, 2, 31)}[part]
        if not 1 <= value <= top:
            return Leaf(FALSE)
        tag = self.tag(path)
        sql = (
            f"substr({tag}, 1, 1) IN ('6', '7', '8') AND substr({tag}, {start}, {width}) = {PARAM}"
        )
        return Leaf(Frag(sql, (f"{value:0{width}d}",)))

    def like(self, path: tuple[str, ...], value: str) -> Leaf:
        sql = f"{self._is_text(path)} AND pm_like({self.text(path)}, {PARAM})"
        return Leaf(Frag(sql, (value,)))

    def is_str_or_list(self, path: tuple[str, ...]) -> Leaf:
        return Leaf(Frag(f"{self.json_type(path)} IN ('text', 'array')"))


# ------------------------------------------------------------ shadow columns


def shadow_names(slot: int, field: str) -> tuple[str, str]:
    """The column names holding ``rank`` and ``value`` of top-level ``field`` in ``slot``.

    Numbered, because SQLite matches column names without regard to ASCII case
    (fields ``Age`` and ``age`` must not share a column); the field follows for
    people reading the file with other tools. ``:`` keeps them apart from
    ``pk`` and ``body``.
    """
    return f"r{slot}:{field}", f"v{slot}:{field}"


class ShadowDialect(SQLiteDialect):
    """SQLite's SQL for a table whose top-level ``fields`` have shadow columns.

    Slot ``i`` (from 1) holds ``rank`` and ``value`` of ``fields[i - 1]``, written
    by the library with every write of ``body`` (docs/sqlite.md, "Shadow
    columns"). Where a path has columns, :meth:`rank` and :meth:`value` name them
    instead of computing them from ``body``, so conditions, order and indexes
    use real columns (an index on them covers a count). Every other expression
    (``json_type``, list tests, ...) still reads ``body``.
    """

    def __init__(self, fields: tuple[str, ...], rowid_order: bool = False) -> None:
        super().__init__(rowid_order)
        self.fields = fields
        self.columns: dict[str, tuple[str, str]] = {}
        for slot, field in enumerate(fields, 1):
            rank, value = shadow_names(slot, field)
            self.columns[field] = (self.ident(rank), self.ident(value))

    def _column(self, path: tuple[str, ...]) -> tuple[str, str] | None:
        """The (rank, value) shadow columns of ``path``, None where it has none."""
        return self.columns.get(path[0]) if len(path) == 1 else None

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - dialects live as long as the process
    def rank(self, path: tuple[str, ...]) -> str:
        found = self._column(path)
        return super().rank(path) if found is None else found[0]

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - dialects live as long as the process
    def value(self, path: tuple[str, ...]) -> str:
        found = self._column(path)
        return super().value(path) if found is None else found[1]

    def order_terms(self, path: tuple[str, ...], descending: bool) -> list[str]:
        found = self._column(path)
        if found is None:
            return super().order_terms(path, descending)
        # Bare column names: an index on them is a column index (covering).
        direction = " DESC" if descending else ""
        return [f"{found[0]}{direction}", f"{found[1]}{direction}"]


def over(expression: str, source: str) -> str:
    """``expression`` (one of :class:`SQLiteDialect`'s over ``body``) computed over ``source``.

    The dialect writes every JSON call as ``json_type(body, ...)`` or
    ``json_extract(body, ...)``; the shadow columns are these expressions over
    the body being written (a parameter, or a new body in an UPDATE).
    """
    # Only outside string literals: a field name inside a path literal may spell
    # "(body, " too. Splitting on quotes leaves the literals at odd places ('' inside
    # one splits it into two odd places around an empty even one).
    parts = expression.split("'")
    parts[::2] = [part.replace("(body, ", f"({source}, ") for part in parts[::2]]
    return "'".join(parts)

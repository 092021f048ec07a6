"""The shadow columns of a SQLite table: their names, the statements writing them.

Each top-level field of a table of format 2 or 3 has two columns beside the body,
its kind rank and its value, computed by SQLite from the body in the statement
that writes it (docs/sqlite.md, "Shadow columns"). A :class:`Shadow` holds one
set of such columns with every statement that writes a record through them, and
a :class:`View` pairs it with the dialect and compiler whose SQL names them.
Both are immutable and swapped whole when the columns change, so a thread never
pairs one set's statement with another's guard. :func:`hints_of` is what Python
passes each statement beside the body: a field's rank where its type tells it.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from .._sql.compiler import Compiler
from .._sql.encoding import RANK
from .._sql.sqlite_dialect import ROWID_VIEW, ShadowDialect, SQLiteDialect, over, shadow_names
from .._sql.storage import META_TABLE

__all__ = [
    "DIALECT",
    "HINT",
    "Shadow",
    "View",
    "hints_of",
    "view_of",
]

# One dialect for every storage: its caches of per-path SQL are shared.
DIALECT = SQLiteDialect()
_COMPILER = Compiler(DIALECT)
#: A dialect and compiler per set of shadow fields (their caches hold SQL naming those
#: columns), shared by every storage whose table has that set; () is the plain one.
_SHADOWED: dict[tuple[tuple[str, ...], bool], tuple[SQLiteDialect, Compiler]] = {}
_SHADOWED_MAX = 64


def _dialect_for(
    fields: tuple[str, ...], rowid_order: bool = False
) -> tuple[SQLiteDialect, Compiler]:
    """The dialect and compiler of a table whose shadow fields are ``fields``, in row
    order or not (see :class:`SQLiteDialect`)."""
    if not fields and not rowid_order:
        return DIALECT, _COMPILER
    key = (fields, rowid_order)
    found = _SHADOWED.get(key)
    if found is None:
        if len(_SHADOWED) >= _SHADOWED_MAX:
            _SHADOWED.clear()
        dialect = ShadowDialect(fields, rowid_order)
        found = _SHADOWED[key] = (dialect, Compiler(dialect))
    return found


class Shadow(NamedTuple):
    """A table's shadow columns as one storage knows them, with the statements writing them.

    One immutable object, swapped whole when the columns change, so a thread
    never pairs one column set's statement with another's guard.
    """

    #: The meta table's text listing the fields (the guard compares it); None: a
    #: table of the legacy format, which has no shadow columns.
    text: str | None
    fields: frozenset[str]
    #: The fields in slot order: the order of the hints each statement takes.
    order: tuple[str, ...]
    #: Quoted column names by field: (rank, value).
    columns: dict[str, tuple[str, str]]
    #: INSERT of (?1 pk, ?2 body, ?3... the record's hints), the columns computed
    #: from ?2 (a clash raises).
    bulk: str
    #: The same, ``ON CONFLICT (pk) DO NOTHING``.
    insert: str
    #: The same as an upsert, guarded: it writes nothing unless the meta text is ?4
    #: (name ?3), since an overwrite must reset every column the table has. The
    #: hints are ?5...
    upsert: str
    #: ``body = ?1, <column> = <expression over ?1>, ...`` for an UPDATE, the hints
    #: ?5... (?2 to ?4 are the caller's).
    set_all: str
    #: Whether ``insert`` and ``upsert`` keep the table's row order: they write a new
    #: pk only above every pk the table holds, or once the table has left row order
    #: (its view is gone); a lower one writes nothing (see Storage._store). ``bulk``
    #: is checked by its caller instead (Storage._in_row_order).
    ordered: bool


class View(NamedTuple):
    """The shadow columns one connection can see, and the SQL written through them."""

    shadow: Shadow
    dialect: SQLiteDialect
    compiler: Compiler


def view_of(table: str, text: str | None, ordered: bool = False, rowid: bool = False) -> View:
    """The view of ``table`` whose shadow columns ``text`` lists (None: the legacy format),
    written keeping its row order or not (``ordered``: its format's), read in row order
    or not (``rowid``: whether it still was when last looked at)."""
    dialect, compiler = _dialect_for(() if text is None else tuple(json.loads(text)), rowid)
    return View(_shadow_of(table, text, ordered), dialect, compiler)


def _order_guard(table: str) -> str:
    """True when a row with pk ``?1`` may be inserted with the next rowid: ``?1`` is above
    every pk, or the table has left row order (its view is gone)."""
    qtable = DIALECT.ident(table)
    view = DIALECT.literal(table + ROWID_VIEW)
    return (
        f"(?1 > coalesce((SELECT max(pk) FROM {qtable}), '') OR NOT EXISTS "
        f"(SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = {view}))"
    )


def _shadow_of(table: str, text: str | None, ordered: bool = False) -> Shadow:
    """The statements writing ``table`` with the shadow columns ``text`` lists."""
    qtable = DIALECT.ident(table)
    fields: tuple[str, ...] = () if text is None else tuple(json.loads(text))
    columns: dict[str, tuple[str, str]] = {}
    names: list[str] = []
    for slot, field in enumerate(fields, 1):
        rank, value = (DIALECT.ident(n) for n in shadow_names(slot, field))
        columns[field] = (rank, value)
        names += [rank, value]
    cols = "".join(f", {n}" for n in names)
    over2 = "".join(f", {r}, {v}" for r, v in _shadow_exprs(fields, "?2", 3))
    bulk = f"INSERT INTO {qtable} (pk, body{cols}) VALUES (?1, ?2{over2})"
    guard = f"(SELECT value FROM {META_TABLE} WHERE name = ?3) IS ?4"
    over2_hinted5 = "".join(f", {r}, {v}" for r, v in _shadow_exprs(fields, "?2", 5))
    if ordered:
        # A pk the table holds is overwritten in place (its rowid stays); a new one
        # must keep the order.
        guard += f" AND (EXISTS (SELECT 1 FROM {qtable} WHERE pk = ?1) OR {_order_guard(table)})"
    # The SELECT's WHERE also keeps SQLite from reading ON CONFLICT as a join clause.
    upsert = (
        f"INSERT INTO {qtable} (pk, body{cols}) SELECT ?1, ?2{over2_hinted5} WHERE {guard} "
        "ON CONFLICT (pk) DO UPDATE SET body = excluded.body"
        + "".join(f", {n} = excluded.{n}" for n in names)
    )
    set_all = "body = ?1" + "".join(
        f", {rn} = {r}, {vn} = {v}"
        for (rn, vn), (r, v) in zip(columns.values(), _shadow_exprs(fields, "?1", 5), strict=True)
    )
    if ordered:
        insert = (
            f"INSERT INTO {qtable} (pk, body{cols}) SELECT ?1, ?2{over2} "
            f"WHERE {_order_guard(table)} ON CONFLICT (pk) DO NOTHING"
        )
    else:
        insert = f"{bulk} ON CONFLICT (pk) DO NOTHING"
    return Shadow(text, frozenset(fields), fields, columns, bulk, insert, upsert, set_all, ordered)


def _shadow_exprs(fields: tuple[str, ...], source: str, first: int) -> list[tuple[str, str]]:
    """The rank and value of each field over the body ``source``, hints ``?first`` on.

    Each field's hint (:func:`hints_of`) is its rank when the record's value is of a
    type ``dumps`` writes as plain JSON, else NULL. With a hint, the rank needs no
    JSON call and the value is ``json_extract`` alone (the tag lookup of a value
    that is not a tagged object is NULL, and rank 0 is an absent field or a JSON
    null, whose value is NULL): one JSON call where the expressions make three (or
    four, for a dict). Without one (a tagged value) the dialect's expressions
    compute both. Either way the columns get what the expressions give.
    """
    out = []
    for n, field in enumerate(fields, first):
        path = (field,)
        rank = over(DIALECT.rank(path), source)
        value = over(DIALECT.value(path), source)
        text = over(DIALECT.text(path), source)
        out.append(
            (
                f"coalesce(?{n}, {rank})",
                f"CASE WHEN ?{n} IS NULL THEN {value} WHEN ?{n} THEN {text} END",
            )
        )
    return out


#: The rank of a top-level value of these exact types, known before SQLite parses
#: the body: ``dumps`` writes them as plain JSON (text, a number, true or false, an
#: array, null, or an object none of whose keys is the tag ``"$"``, since field
#: names never start with ``$``), ranked by the dialect's expression from
#: ``json_type`` alone. Tagged kinds (Decimal, bytes, dates) get no hint: SQL
#: computes theirs from the tag.
HINT: dict[type, int] = {
    str: RANK["str"],
    int: RANK["number"],
    float: RANK["number"],
    bool: RANK["bool"],
    list: RANK["list"],
    dict: RANK["dict"],
    type(None): 0,
}


def hints_of(record: dict[str, Any], order: tuple[str, ...]) -> tuple[int | None, ...]:
    """The hint of each field of ``order`` for ``record`` (an absent field's is 0)."""
    return tuple(map(HINT.get, map(type, map(record.get, order))))

"""Condition trees to SQL, shared by the SQLite and PostgreSQL backends.

:class:`Compiler` walks a condition tree (:mod:`pymodels.conditions`) and asks a
:class:`Dialect` for the SQL of each lookup. A dialect answers with a
:class:`Leaf`: a SQL fragment plus whether it is *exact* (true for exactly the
records the lookup matches) or a *superset* (Python re-checks the lookup on
every row it returns), or None when the engine cannot help at all.

Boolean structure is where exactness is easiest to lose, so it lives here once:

* ``And``: the SQL of every child that has some; the residual is the And of the
  children that are not exact.
* ``Or``: exact only if every child is; if some child is only a superset the
  whole Or is re-checked; if some child has no SQL at all the Or has none.
* ``Not``: pushed down only when its child is exact, as ``(child) IS NOT TRUE``
  so that a NULL inside (an absent field) counts as false, never as unknown.
  The negation of a superset is a subset, which can never be pushed.

Values never enter SQL text: fragments carry bound parameters, written as the
:data:`PARAM` marker and numbered for the driver when the statement is rendered.
Field names are not values but identifiers of JSON paths; they are validated
and quoted as SQL string literals (index expressions must repeat them exactly,
and DDL takes no parameters).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from ...backend import (
    MISSING,
    And,
    Change,
    Compiled,
    Condition,
    IndexSpec,
    Lookup,
    Not,
    Or,
    OrderKey,
    ValidationError,
    check_field_name,
    get_path,
    kind_of,
)

__all__ = [
    "PARAM",
    "PK_FROM",
    "Chain",
    "Compiler",
    "Dialect",
    "Frag",
    "Leaf",
    "independent",
    "str_successor",
    "valid_path",
]

#: Where a bound parameter goes in fragment text (NUL never appears in SQL we write:
#: field names and table names cannot hold it).
PARAM: Final = "\x00"
#: In a WHERE, ``PK_FROM + ">="`` (or ``"<="``) stands for "the pk order from the
#: bound pk on": :meth:`Dialect.select` writes it in the terms of the relation it reads.
PK_FROM: Final = "\x01"

#: Condition shapes remembered per compiler, statements per dialect (each cache
#: starts over when full).
SHAPE_CACHE_SIZE: Final = 2048
#: ``in`` lists longer than this are compiled afresh each time, never cached.
SHAPED_IN_MAX: Final = 64
STATEMENT_CACHE_SIZE: Final = 2048


class Frag(NamedTuple):
    """A piece of SQL with its bound parameters, in order."""

    sql: str
    params: tuple[Any, ...] = ()

    def __str__(self) -> str:
        return self.sql


TRUE: Final = Frag("TRUE")
FALSE: Final = Frag("FALSE")


class Chain(NamedTuple):
    """WHERE clauses read one after another as one result: in an order, every row
    of a part comes after every row of the parts before it (see ``after()``)."""

    parts: tuple[Frag | None, ...]


class Leaf(NamedTuple):
    """A lookup's SQL: ``exact`` when it selects exactly the matching records."""

    frag: Frag
    exact: bool = True


def join(sep: str, frags: Iterable[Frag]) -> Frag:
    """Fragments joined by ``sep`` (each parenthesised), parameters in order."""
    parts = list(frags)
    return Frag(sep.join(f"({f.sql})" for f in parts), tuple(p for f in parts for p in f.params))


def and_leaves(leaves: Sequence[Leaf | None]) -> Leaf | None:
    """All of the leaves (None: no SQL, so a superset that is everything)."""
    present = [leaf for leaf in leaves if leaf is not None]
    if not present:
        return None
    exact = len(present) == len(leaves) and all(leaf.exact for leaf in present)
    if len(present) == 1:
        return Leaf(present[0].frag, exact)
    return Leaf(join(" AND ", (leaf.frag for leaf in present)), exact)


def or_leaves(leaves: Sequence[Leaf | None]) -> Leaf | None:
    """Any of the leaves: without SQL for one of them there is none for the whole."""
    if not leaves:
        return Leaf(FALSE)
    if any(leaf is None for leaf in leaves):
        return None
    present = [leaf for leaf in leaves if leaf is not None]
    exact = all(leaf.exact for leaf in present)
    if len(present) == 1:
        return present[0]
    return Leaf(join(" OR ", (leaf.frag for leaf in present)), exact)


def str_successor(prefix: str) -> str | None:
    """The least str above every str that starts with ``prefix`` (None: there is none).

    ``prefix <= s < str_successor(prefix)`` is ``s.startswith(prefix)`` under
    code point order, so a prefix test becomes an indexable range.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code == 0xD800:
            code = 0xE000  # surrogates are not valid Unicode text
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


def independent(changes: Sequence[Change]) -> bool:
    """Whether no change's path is another's, or a prefix of another's.

    Then applying them one after the other in SQL, each guarded against the
    original record, is what applying them in order in Python gives.
    """
    paths = sorted(c.path for c in changes)
    return all(b[: len(a)] != a for a, b in itertools.pairwise(paths))


def valid_path(path: Sequence[str]) -> bool:
    """Whether every part can be a stored field name.

    A part that cannot (``$r``, ``a.b``, ``"``...) names a field no record has,
    so the lookup reads an absent value; it must never reach a JSON path, where
    it could be syntax or reach into a tagged value.
    """
    try:
        for part in path:
            check_field_name(part)
    except ValidationError:
        return False
    return bool(path)


class Dialect:
    """One engine's SQL for the pieces the compiler assembles.

    Expressions are over the table's ``body`` column at a JSON path. Every
    predicate a dialect returns must be true, false or NULL (NULL meaning
    false); the compiler adds ``IS NOT TRUE`` where it negates.
    """

    #: The engine's name, for messages.
    name: str = "sql"
    #: How a record body is written as a statement parameter.
    body_param: str = PARAM
    #: The statement that starts a transaction.
    begin: str = "BEGIN"
    #: Whether ``SELECT ... FOR UPDATE`` locks a row until the transaction ends.
    row_locks: bool = False
    #: The ORDER BY term of the pk: the last key of every order (it orders ties).
    tiebreak: str = "pk"
    #: The term closing a non-unique index (None: none, as where the engine's own
    #: row id, which every index entry ends in, already sorts as the pk does).
    index_tiebreak: str | None = "pk"

    def ordered_source(self, table: str) -> str:
        """The relation an ordered SELECT reads (the table itself, by default)."""
        return self.ident(table)

    def pk_from(self, table: str, op: str, ordered: bool) -> str:
        """What ``PK_FROM + op`` stands for, in a SELECT that reads
        :meth:`ordered_source` (``ordered``) or the table itself."""
        return f"pk {op} {PARAM}"

    def _where(self, table: str, where: Frag, ordered: bool) -> str:
        """``where``'s SQL with its ``PK_FROM`` bounds written out."""
        sql = where.sql
        if PK_FROM in sql:
            for op in (">=", "<="):
                sql = sql.replace(PK_FROM + op, self.pk_from(table, op, ordered))
        return sql

    @staticmethod
    def dumps_body(value: Any, /) -> Any:
        """A record as the driver is given it for the ``body`` column."""
        raise NotImplementedError

    @staticmethod
    def loads_body(body: Any, /) -> Any:
        """A record from the ``body`` column as the driver returns it."""
        raise NotImplementedError

    def __init__(self) -> None:
        # select_statement's rendered texts (a dialect lives as long as the process).
        self._statements: dict[tuple[Any, ...], str] = {}

    # ------------------------------------------------------------ literals

    @staticmethod
    def literal(text: str) -> str:
        """A SQL string literal (standard quoting: quotes doubled)."""
        return "'" + text.replace("'", "''") + "'"

    @staticmethod
    def ident(name: str) -> str:
        """A quoted SQL identifier."""
        return '"' + name.replace('"', '""') + '"'

    def render(self, frag: Frag) -> tuple[str, tuple[Any, ...]]:
        """The driver's SQL text and parameters for a fragment."""
        raise NotImplementedError

    # --------------------------------------------------------- expressions

    def rank(self, path: tuple[str, ...]) -> str:
        """The kind rank of the value at ``path`` (0 when absent), as SQL."""
        raise NotImplementedError

    def order_terms(self, path: tuple[str, ...], descending: bool) -> list[str]:
        """ORDER BY terms (with their direction) sorting values at ``path`` as the contract does.

        Kind rank first, then the value within its kind. Exact except between
        two lists or two dicts, which tie or misorder: the query re-sorts those
        in Python. Indexes list the same terms, so ordered scans can use them.
        """
        raise NotImplementedError

    def unique_terms(self, path: tuple[str, ...]) -> list[str]:
        """Extra index terms a unique index needs to tell values at ``path`` apart."""
        return []

    # --------------------------------------------------------------- leaves

    def exists(self, path: tuple[str, ...], present: bool) -> Leaf:
        raise NotImplementedError

    def compare(self, path: tuple[str, ...], op: str, value: Any) -> Leaf | None:
        """``value_at_path <op> value`` for a scalar value, same kind only (op: = < <= > >=)."""
        raise NotImplementedError

    def between(self, path: tuple[str, ...], low: Any, high: Any) -> Leaf | None:
        raise NotImplementedError

    def container_equals(self, path: tuple[str, ...], value: Any) -> Leaf | None:
        """Deep strict equality with a list or dict value."""
        raise NotImplementedError

    def list_has(self, path: tuple[str, ...], values: Sequence[Any]) -> Leaf | None:
        """The value at ``path`` is a list with an element equal to one of ``values``."""
        raise NotImplementedError

    def str_contains(self, path: tuple[str, ...], value: str) -> Leaf | None:
        raise NotImplementedError

    def startswith(self, path: tuple[str, ...], prefix: str) -> Leaf | None:
        raise NotImplementedError

    def endswith(self, path: tuple[str, ...], suffix: str) -> Leaf | None:
        raise NotImplementedError

    def case_insensitive(self, path: tuple[str, ...], op: str, value: str) -> Leaf | None:
        """iequals, icontains, istartswith, iendswith (``str.lower()`` on both sides)."""
        raise NotImplementedError

    def regex(self, path: tuple[str, ...], pattern: str, ignore_case: bool) -> Leaf | None:
        raise NotImplementedError

    def date_part(self, path: tuple[str, ...], part: str, value: int) -> Leaf | None:
        raise NotImplementedError

    def like(self, path: tuple[str, ...], value: str) -> Leaf | None:
        raise NotImplementedError

    def is_str_or_list(self, path: tuple[str, ...]) -> Leaf:
        raise NotImplementedError

    def lookup_params(self, lookup: Lookup) -> tuple[Any, ...]:
        """The parameters the SQL of a shaped lookup (exists, equals, ``in``, a
        comparison or between, over scalars) binds, in order.

        The compiler caches the SQL text of such lookups by path, op and kinds
        (:func:`shape_of`) and calls this for the parameters of later ones; it
        checks the first time that they are the parameters the dialect wrote,
        and does not cache a shape where they are not.
        """
        op, value = lookup.op, lookup.value
        if op == "exists":
            return ()
        if op in ("in", "between"):
            return tuple(self.compare_param(v) for v in value)
        return (self.compare_param(value),)

    def compare_param(self, value: Any) -> Any:
        """The parameter :meth:`compare` binds for a scalar ``value``."""
        raise NotImplementedError

    # ----------------------------------------------------------- statements

    def limit(self, offset: int, limit: int | None) -> Frag:
        """The LIMIT/OFFSET clause (empty when there is neither)."""
        raise NotImplementedError

    def limit_params(self, offset: int, limit: int | None) -> tuple[Any, ...]:
        """The parameters of :meth:`limit` (dialects answer without building the clause)."""
        return self.limit(offset, limit).params

    def select(
        self,
        table: str,
        where: Frag | None,
        order: Sequence[OrderKey] | None,
        offset: int = 0,
        limit: int | None = None,
        columns: str = "pk, body",
    ) -> Frag:
        """``SELECT pk, body`` (or ``columns``) of the rows ``where`` selects, ordered, sliced."""
        source = self.ordered_source(table) if order else self.ident(table)
        sql = f"SELECT {columns} FROM {source}"
        params: tuple[Any, ...] = ()
        if where is not None:
            sql += f" WHERE {self._where(table, where, bool(order))}"
            params += where.params
        if order:
            sql += f" ORDER BY {self.order_by(order)}"
        tail = self.limit(offset, limit)
        if tail.sql:
            sql += " " + tail.sql
        return Frag(sql, params + tail.params)

    def select_statement(
        self,
        table: str,
        where: Frag | None,
        order: Sequence[OrderKey] | None,
        offset: int = 0,
        limit: int | None = None,
        columns: str = "pk, body",
    ) -> tuple[str, tuple[Any, ...]]:
        """:meth:`select` rendered for the driver, the text cached.

        The text depends on the WHERE text (the same object for a cached
        condition shape), the order, and whether there is an offset and a
        limit, never on their values, which are parameters.
        """
        sql = None if where is None else where.sql
        key = (table, sql, order, bool(offset), limit is None, columns)
        tail = self.limit(offset, limit).params
        params = tail if where is None else where.params + tail
        try:
            return self._statements[key], params
        except KeyError:
            text, all_params = self.render(self.select(table, where, order, offset, limit, columns))
            assert all_params == params, "LIMIT/OFFSET parameters come last"
            if len(self._statements) >= STATEMENT_CACHE_SIZE:
                self._statements.clear()
            self._statements[key] = text
            return text, params

    def count(self, table: str, where: Frag | None) -> Frag:
        sql = f"SELECT count(*) FROM {self.ident(table)}"
        if where is None:
            return Frag(sql)
        return Frag(sql + f" WHERE {self._where(table, where, False)}", where.params)

    def delete(self, table: str, where: Frag | None) -> Frag:
        sql = f"DELETE FROM {self.ident(table)}"
        if where is None:
            return Frag(sql)
        return Frag(sql + f" WHERE {self._where(table, where, False)}", where.params)

    def index_name(self, table: str, spec: IndexSpec) -> str:
        """A stable name for an index: the table's, then a digest of what it indexes."""
        digest = hashlib.sha1(repr((spec.keys, spec.unique, spec.kind)).encode()).hexdigest()
        return f"pm_{table}_{digest[:12]}"

    def index_terms(self, spec: IndexSpec) -> list[str]:
        """The indexed expressions: each key's order terms, then the dialect's
        :attr:`index_tiebreak` (the pk: it orders ties).

        A unique index has no pk (that would make every row unique) but the
        dialect's :meth:`unique_terms`.
        """
        terms: list[str] = []
        for key in spec.keys:
            terms.extend(self.order_terms(key.path, key.descending))
        if spec.unique:
            for key in spec.keys:
                terms.extend(self.unique_terms(key.path))
        elif self.index_tiebreak is not None:
            terms.append(self.index_tiebreak)
        return terms

    def create_index(self, table: str, spec: IndexSpec) -> str:
        """DDL creating the index for ``spec`` if it does not exist (no parameters)."""
        unique = "UNIQUE " if spec.unique else ""
        return (
            f"CREATE {unique}INDEX IF NOT EXISTS {self.ident(self.index_name(table, spec))} "
            f"ON {self.ident(table)} ({', '.join(self.index_terms(spec))})"
        )

    def update(self, changes: Sequence[Change]) -> tuple[Frag, Frag] | None:
        """``(new body expression, guard)`` applying ``changes`` in SQL, or None.

        Exact only where the guard holds (parents are absent or plain dicts,
        an increment meets an int that cannot overflow); rows it excludes are
        updated by the caller's read-modify-write. None when the changes
        cannot run in SQL at all (overlapping paths, float increments).
        """
        return None

    # --------------------------------------------------------------- order

    def at_or_after(self, key: OrderKey, pk: str, record: Mapping[str, Any]) -> Frag | Chain | None:
        """A condition every record at or after ``(pk, record)`` meets, in an order
        whose first key is ``key`` (for ``after()``); None where there is none.

        Written on that key's ORDER BY terms, so that an index on them seeks to
        the anchor. A superset: ties on ``key`` pass, and Python drops what
        does not come after the anchor.
        """
        op = "<=" if key.descending else ">="
        if key.is_pk:
            return Frag(PK_FROM + op, (pk,))
        value = get_path(record, key.path) if valid_path(key.path) else MISSING
        if value is MISSING:
            return None  # absent sorts first: the anchor is at the start
        return self.value_bound(key.path, op, value)

    def value_bound(self, path: tuple[str, ...], op: str, value: Any) -> Frag | Chain | None:
        """:meth:`at_or_after` for an anchor holding ``value`` at ``path``: the ORDER
        BY terms of ``path`` ``op`` (``>=``, or ``<=`` descending) the value's, or a
        :class:`Chain` where no one condition an index serves says it."""
        return None

    def order_by(self, order: Sequence[OrderKey]) -> str:
        """The ORDER BY list for a full order (its last key is the pk)."""
        terms: list[str] = []
        for key in order:
            if key.is_pk:
                terms.append(f"{self.tiebreak} DESC" if key.descending else self.tiebreak)
            elif valid_path(key.path):
                terms.extend(self.order_terms(key.path, key.descending))
            # An invalid path is absent in every record: it cannot change the order.
        return ", ".join(terms)


_CMP: Final = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


#: Ops whose SQL text depends only on the path, the op and the kind of the value
#: (a scalar): their statements are cached by that shape, see :meth:`Compiler.compile`.
_SHAPED_OPS: Final = frozenset({"equals", "gt", "gte", "lt", "lte", "between", "in", "exists"})
_CONTAINERS: Final = ("list", "dict")
#: Shaped ops whose one parameter is Dialect.compare_param of the value.
_SCALAR_OPS: Final = frozenset({"equals", "gt", "gte", "lt", "lte"})


#: Shape cache entries: never compiled, and exact with no WHERE (every row).
_UNSEEN: Final[Any] = object()
_EVERY_ROW: Final = "\x00every row"


def shape_of(cond: Condition, lookups: list[Lookup]) -> Any:
    """The condition without its values, appending its lookups in SQL parameter order.

    None when some lookup's SQL may depend on more than its path, op and the
    kinds of its values (other ops, lists and dicts), so no shape is cached.
    """
    if type(cond) is Lookup:
        op, value = cond.op, cond.value
        if op not in _SHAPED_OPS:
            return None
        if op == "exists":
            kinds: Any = value
        elif op in ("in", "between"):
            if len(value) > SHAPED_IN_MAX:
                return None  # each length is a shape of its own: long lists would flood the cache
            kinds = tuple(kind_of(v) for v in value)
            if any(k in _CONTAINERS for k in kinds):
                return None
        else:
            kinds = kind_of(value)
            if kinds in _CONTAINERS:
                return None
        lookups.append(cond)
        return (cond.path, op, kinds)
    if type(cond) is Not:
        child = shape_of(cond.child, lookups)
        return None if child is None else ("not", child)
    if type(cond) is And or type(cond) is Or:
        shapes = []
        for child in cond.children:
            shape = shape_of(child, lookups)
            if shape is None:
                return None
            shapes.append(shape)
        return (type(cond).__name__, tuple(shapes))
    return None


class Compiler:
    """Compiles condition trees with one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        # shape -> SQL text with parameter markers (_EVERY_ROW: no WHERE at all),
        # or None: that shape is not exact in SQL or its parameters are not what
        # lookup_params derives.
        self._shapes: dict[Any, str | None] = {}
        # (shape, table, order, has offset, no limit) -> rendered SELECT text.
        self._selects: dict[tuple[Any, ...], str] = {}

    def compile(self, condition: Condition) -> Compiled:
        """The engine's form of ``condition`` (a :class:`Frag` or None) and the residual.

        Programs run the same queries with other values: a condition whose
        shape (:func:`shape_of`) was compiled before reuses that SQL text and
        only derives the new parameters (:meth:`Dialect.lookup_params`).
        """
        lookups: list[Lookup] = []
        shape = shape_of(condition, lookups)
        if shape is None:
            return self._compile(condition)
        sql = self._shapes.get(shape, _UNSEEN)
        if sql is _EVERY_ROW:
            return Compiled(None, None, "every row")
        if type(sql) is str:
            return Compiled(Frag(sql, self._params(lookups)), None, sql)
        compiled = self._compile(condition)
        if sql is _UNSEEN:
            self._remember(shape, compiled, lookups)
        return compiled

    def select(
        self,
        condition: Condition,
        table: str,
        order: tuple[OrderKey, ...],
        offset: int,
        limit: int | None,
    ) -> tuple[str, tuple[Any, ...]] | None:
        """The rendered SELECT of ``condition`` when its shape is cached as exact, else None.

        The whole statement is cached by shape, table, order and slice form,
        so a query that ran before with other values costs one lookup here.
        """
        if type(condition) is Lookup and condition.op in _SCALAR_OPS:
            # The commonest query, one comparison with a scalar: its shape and
            # parameter without the general walk (same shape, same cache entry).
            value = condition.value
            kind = kind_of(value)
            if kind not in _CONTAINERS:
                key = (
                    (condition.path, condition.op, kind),
                    table,
                    order,
                    bool(offset),
                    limit is None,
                )
                text = self._selects.get(key)
                if text is not None:
                    param = self.dialect.compare_param(value)
                    return text, (param, *self.dialect.limit_params(offset, limit))
        lookups: list[Lookup] = []
        shape = shape_of(condition, lookups)
        if shape is None:
            return None
        key = (shape, table, order, bool(offset), limit is None)
        text = self._selects.get(key)
        if text is None:
            if self._shapes.get(shape, _UNSEEN) is None:
                return None
            compiled = self.compile(condition)
            if compiled.residual is not None or self._shapes.get(shape) is None:
                return None
            text, _ = self.dialect.select_statement(table, compiled.native, order, offset, limit)
            if len(self._selects) >= STATEMENT_CACHE_SIZE:
                self._selects.clear()
            self._selects[key] = text
        return text, self._params(lookups) + self.dialect.limit_params(offset, limit)

    def _params(self, lookups: list[Lookup]) -> tuple[Any, ...]:
        if len(lookups) == 1:
            lk = lookups[0]
            if lk.op in _CMP or lk.op == "equals":
                return (self.dialect.compare_param(lk.value),)  # the common case, directly
            return self.dialect.lookup_params(lk)
        params = self.dialect.lookup_params
        return tuple(p for lk in lookups for p in params(lk))

    def _remember(self, shape: Any, compiled: Compiled, lookups: list[Lookup]) -> None:
        frag = compiled.native
        entry: str | None = None
        if compiled.residual is None and all(valid_path(lk.path) for lk in lookups):
            if frag is None:
                entry = _EVERY_ROW
            elif _same_params(self._params(lookups), frag.params):
                entry = frag.sql
        if len(self._shapes) >= SHAPE_CACHE_SIZE:
            self._shapes.clear()
        self._shapes[shape] = entry

    def _compile(self, condition: Condition) -> Compiled:
        frag, residual = self._node(condition)
        description = frag.sql if frag is not None else "every row"
        return Compiled(frag, residual, description)

    # A node compiles to (SQL or None for "every row", residual or None for exact).
    def _node(self, cond: Condition) -> tuple[Frag | None, Condition | None]:
        if isinstance(cond, Lookup):
            leaf = self.lookup(cond)
            if leaf is None:
                return None, cond
            return leaf.frag, None if leaf.exact else cond
        if isinstance(cond, And):
            frags: list[Frag] = []
            residuals: list[Condition] = []
            for child in cond.children:
                f, r = self._node(child)
                if f is not None:
                    frags.append(f)
                if r is not None:
                    residuals.append(r)
            frag = None if not frags else frags[0] if len(frags) == 1 else join(" AND ", frags)
            return frag, And.of(*residuals) if residuals else None
        if isinstance(cond, Or):
            if not cond.children:
                return FALSE, None
            parts = [self._node(child) for child in cond.children]
            if any(f is None and r is None for f, r in parts):
                return None, None  # one child holds for every row: so does the Or
            if any(f is None for f, _ in parts):
                return None, cond
            frag = join(" OR ", (f for f, _ in parts if f is not None))
            exact = all(r is None for _, r in parts)
            return frag, None if exact else cond
        if isinstance(cond, Not):
            f, r = self._node(cond.child)
            if r is not None:
                return None, cond
            if f is None:
                return FALSE, None
            # IS NOT TRUE, not NOT: NOT NULL is NULL, which would drop the row.
            return Frag(f"({f.sql}) IS NOT TRUE", f.params), None
        raise TypeError(f"not a condition: {cond!r}")

    def version_guard(self, field: str, expected: Any) -> Leaf | None:
        """An exact test that the stored ``field`` still holds ``expected``.

        ``expected`` is MISSING for "the field is absent". None when the SQL
        could not be exact (the caller then takes the locked generic path).
        """
        if expected is MISSING:
            cond = Lookup((field,), "exists", False)
        else:
            cond = Lookup((field,), "equals", expected)
        leaf = self.lookup(cond)
        return leaf if leaf is not None and leaf.exact else None

    def lookup(self, lk: Lookup) -> Leaf | None:
        """The SQL of one lookup (the op table of docs/queries.md)."""
        d = self.dialect
        path, op, value = lk.path, lk.op, lk.value
        if not valid_path(path):
            # No record has this field: only exists=False holds.
            return Leaf(TRUE if (op == "exists" and value is False) else FALSE)
        if op == "exists":
            return d.exists(path, value)
        if op == "equals":
            return self.equals(path, value)
        if op == "in":
            return or_leaves([self.equals(path, v) for v in value])
        if op in _CMP:
            return d.compare(path, _CMP[op], value)
        if op == "between":
            return d.between(path, value[0], value[1])
        if op == "contains":
            return self.contains_any(path, [value])
        if op == "contains_any":
            return self.contains_any(path, list(value))
        if op == "contains_all":
            if not value:
                return d.is_str_or_list(path)
            return and_leaves([self.contains_any(path, [v]) for v in value])
        if op == "startswith":
            return d.startswith(path, value)
        if op == "endswith":
            return d.endswith(path, value)
        if op in ("iequals", "icontains", "istartswith", "iendswith"):
            return d.case_insensitive(path, op, value)
        if op in ("matches", "imatches"):
            return d.regex(path, value, op == "imatches")
        if op in ("year", "month", "day"):
            return d.date_part(path, op, value)
        if op == "like":
            return d.like(path, value)
        return None

    def equals(self, path: tuple[str, ...], value: Any) -> Leaf | None:
        if kind_of(value) in ("list", "dict"):
            return self.dialect.container_equals(path, value)
        return self.dialect.compare(path, "=", value)

    def contains_any(self, path: tuple[str, ...], values: list[Any]) -> Leaf | None:
        """A str field containing one of the str values, or a list holding one of the values."""
        if not values:
            return Leaf(FALSE)
        leaves = [self.dialect.str_contains(path, v) for v in values if type(v) is str]
        leaves.append(self.dialect.list_has(path, values))
        return or_leaves(leaves)


def _same_params(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Equal parameters of equal types (1, 1.0 and True are different parameters)."""
    if len(a) != len(b):
        return False
    return all(type(x) is type(y) and x == y for x, y in zip(a, b, strict=True))

"""PostgreSQL's SQL for the shared compiler (PostgreSQL 12+, jsonb; tested on 15).

Expressions over ``body`` (jsonb) at a path, written ``J`` (``body->'a'->'b'``):

* ``key(J)``: text ``COLLATE "C"`` (code point order on any cluster; a
  linguistic collation would sort ``"B"`` and ``"a"`` differently) that starts
  with the kind's rank digit: ``'1true'``/``'1false'`` for booleans, ``'2'``
  for every number, ``'4' || s`` for a str, the sort key of a tagged value
  (which starts with its rank already), ``'9'`` for lists and ``':'`` (after
  ``'9'``) for dicts; NULL when absent.
* ``num(J)``: the number as ``numeric`` (exact, like jsonb's own numbers), 0
  for every other kind.

``ORDER BY key NULLS FIRST, num`` (``DESC NULLS LAST`` descending) is the
contract's order; lists and dicts tie and are re-sorted in Python. A kind
guard is a range of ``key`` (``key >= '4' || $1 AND key < '5'``), so the
same two index columns serve equality, ranges, prefixes and order. Both
expressions are NULL-safe (a CASE on ``jsonb_typeof``, never a cast that can
fail), so an expression index over them never makes a record of another kind
fail to insert. Text and numeric index columns compare cheaply: an earlier
design with a jsonb column cost twice as much per indexed insert.

What PostgreSQL cannot decide exactly runs as a superset re-checked in Python:
``lower()`` folds ASCII only under ``COLLATE "C"`` (and differs from Python's
``str.lower()`` under any locale), and its regular expressions are not
Python's. The case-insensitive ops and ``like`` are still narrowed for
all-ASCII strings, where ``lower(x COLLATE "C")`` is ``str.lower()``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any, Final

from ...backend import INT_MAX, INT_MIN, Change, IndexSpec, kind_of
from .compiler import (
    FALSE,
    PARAM,
    Chain,
    Dialect,
    Frag,
    Leaf,
    independent,
    join,
    str_successor,
)
from .encoding import RANK, decimal_paths, dumps_pg, dumps_pg_match, sort_key

__all__ = ["PostgresDialect"]

_WORD: Final = re.compile(r"\w+")


class PostgresDialect(Dialect):
    """PostgreSQL 12+ with jsonb."""

    name = "postgresql"
    body_param = PARAM + "::jsonb"
    row_locks = True
    dumps_body = staticmethod(dumps_pg)

    @staticmethod
    def loads_body(body: Any) -> Any:
        # The driver decodes jsonb itself (set_json_loads on each connection).
        return body

    def render(self, frag: Frag) -> tuple[str, tuple[Any, ...]]:
        parts = frag.sql.split(PARAM)
        out = [parts[0]]
        for i, part in enumerate(parts[1:], 1):
            out.append(f"${i}")
            out.append(part)
        return "".join(out), frag.params

    def limit(self, offset: int, limit: int | None) -> Frag:
        clauses: list[str] = []
        params: list[int] = []
        if limit is not None:
            clauses.append(f"LIMIT {PARAM}::bigint")
            params.append(limit)
        if offset:
            clauses.append(f"OFFSET {PARAM}::bigint")
            params.append(offset)
        return Frag(" ".join(clauses), tuple(params))

    def create_index(self, table: str, spec: IndexSpec) -> str:
        if spec.kind != "gin":
            return super().create_index(table, spec)
        # Containment (list "contains" of scalars) on one path: jsonb_path_ops.
        columns = ", ".join(f"({self.j(key.path)}) jsonb_path_ops" for key in spec.keys)
        return (
            f"CREATE INDEX IF NOT EXISTS {self.ident(self.index_name(table, spec))} "
            f"ON {self.ident(table)} USING gin ({columns})"
        )

    def update(self, changes: Sequence[Change]) -> tuple[Frag, Frag] | None:
        if not independent(changes):
            return None
        guards: list[str] = []
        params: list[Any] = []
        # jsonb_set creates only the last key of a path: create missing parent
        # dicts first (from the original record, so the expression stays
        # linear), then set the leaves.
        body = "body"
        created: set[tuple[str, ...]] = set()
        for change in changes:
            for i in range(1, len(change.path)):
                parent = change.path[:i]
                j = self.j(parent)
                guards.append(
                    f"(jsonb_typeof({j}) IS NULL OR (jsonb_typeof({j}) = 'object' "
                    f"AND NOT ({j} ? '$')))"
                )
                if change.op != "unset" and parent not in created:
                    created.add(parent)
                    body = (
                        f"jsonb_set({body}, {self._array(parent)}, "
                        f"coalesce({j}, '{{}}'::jsonb), true)"
                    )
        frag = Frag(body)
        for change in changes:
            path = self._array(change.path)
            if change.op == "set":
                frag = Frag(
                    f"jsonb_set({frag.sql}, {path}, {PARAM}::jsonb, true)",
                    (*frag.params, dumps_pg(change.value)),
                )
            elif change.op == "unset":
                frag = Frag(f"({frag.sql} #- {path})", frag.params)
            else:
                if type(change.value) is not int:
                    return None  # numeric addition is decimal, Python's float addition is not
                delta = change.value
                j, tx = self.j(change.path), self.tx(change.path)
                is_int = f"jsonb_typeof({j}) = 'number' AND {tx} ~ '^-?[0-9]+$'"
                guards.append(
                    f"(CASE WHEN {is_int} THEN ({j})::numeric BETWEEN {PARAM}::numeric "
                    f"AND {PARAM}::numeric ELSE coalesce(jsonb_typeof({j}), 'null') = 'null' END)"
                )
                params.extend((max(INT_MIN, INT_MIN - delta), min(INT_MAX, INT_MAX - delta)))
                frag = Frag(
                    f"jsonb_set({frag.sql}, {path}, to_jsonb((CASE WHEN jsonb_typeof({j}) = "
                    f"'number' THEN ({j})::numeric ELSE 0 END) + {PARAM}::numeric), true)",
                    (*frag.params, delta),
                )
        return frag, Frag(" AND ".join(guards) or "TRUE", tuple(params))

    def _array(self, path: Sequence[str]) -> str:
        return "ARRAY[" + ", ".join(self.literal(p) for p in path) + "]::text[]"

    # --------------------------------------------------------- expressions

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - dialects live as long as the process
    def j(self, path: Sequence[str]) -> str:
        """The jsonb value at ``path`` (NULL when absent), parenthesised."""
        return "(body" + "".join(f"->{self.literal(p)}" for p in path) + ")"

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - dialects live as long as the process
    def tx(self, path: Sequence[str]) -> str:
        """The text at ``path`` (``->>``: a str's characters, unquoted), parenthesised."""
        inner = "body" + "".join(f"->{self.literal(p)}" for p in path[:-1])
        return f"({inner}->>{self.literal(path[-1])})"

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - dialects live as long as the process
    def typeof(self, path: Sequence[str]) -> str:
        return f"jsonb_typeof({self.j(path)})"

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - dialects live as long as the process
    def key(self, path: tuple[str, ...]) -> str:
        """Rank digit then the value's text or sort key, ``COLLATE "C"``; NULL if absent."""
        j, tx = self.j(path), self.tx(path)
        return (
            f"(CASE jsonb_typeof({j}) WHEN 'string' THEN '4' || {tx} WHEN 'number' THEN '2' "
            f"WHEN 'boolean' THEN '1' || {tx} WHEN 'array' THEN '9' "
            f"WHEN 'object' THEN coalesce({j}->>'$', ':') END) COLLATE \"C\""
        )

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - dialects live as long as the process
    def num(self, path: tuple[str, ...]) -> str:
        """The number as numeric, 0 for any other kind (so equality can pin it)."""
        j = self.j(path)
        return f"(CASE jsonb_typeof({j}) WHEN 'number' THEN ({j})::numeric ELSE 0 END)"

    def unique_terms(self, path: tuple[str, ...]) -> list[str]:
        # key and num tie for all lists (and all dicts): jsonb equality tells
        # them apart (deep, numbers numerically; NULL, so never equal, when absent).
        j = self.j(path)
        return [
            f"(CASE jsonb_typeof({j}) WHEN 'array' THEN {j} "
            f"WHEN 'object' THEN (CASE WHEN {j} ? '$' THEN 'null'::jsonb ELSE {j} END) "
            "WHEN 'string' THEN 'null'::jsonb WHEN 'number' THEN 'null'::jsonb "
            "WHEN 'boolean' THEN 'null'::jsonb END)"
        ]

    def order_terms(self, path: tuple[str, ...], descending: bool) -> list[str]:
        # Absent (NULL key) first ascending, last descending; PostgreSQL's
        # default puts NULLs the other way round.
        if descending:
            return [f"{self.key(path)} DESC NULLS LAST", f"{self.num(path)} DESC"]
        return [f"{self.key(path)} NULLS FIRST", self.num(path)]

    def value_bound(self, path: tuple[str, ...], op: str, value: Any) -> Frag | Chain | None:
        k, sort_key_, num = kind_of(value), self.key(path), self.num(path)
        if k in ("list", "dict"):
            # Two lists or two dicts are not ordered in SQL as the contract does: the kind only.
            bound = Frag(f"{sort_key_} {op} '{'9' if k == 'list' else ':'}'")
        elif k == "number":
            # A row value on the ORDER BY terms: an index on them seeks to the anchor.
            bound = Frag(f"({sort_key_}, {num}) {op} ('2', {PARAM}::numeric)", (repr(value),))
        else:
            bound = Frag(f"({sort_key_}, {num}) {op} ({PARAM}::text, 0)", (self._key_of(value),))
        if op == ">=":
            return bound
        # Descending, an absent value (a NULL key) sorts last, after any anchor, and no
        # row value admits it. "bound OR key IS NULL" is served by bitmap scans and a
        # sort of everything after the anchor; read one part after the other, each
        # part is a walk of the index from where it starts.
        return Chain((bound, Frag(f"{sort_key_} IS NULL")))

    def _is_string(self, path: tuple[str, ...]) -> str:
        return f"{self.typeof(path)} = 'string'"

    # --------------------------------------------------------------- leaves

    def exists(self, path: tuple[str, ...], present: bool) -> Leaf:
        # key is NULL exactly when the field is absent (or a JSON null, which reads as absent).
        return Leaf(Frag(f"{self.key(path)} IS {'NOT ' if present else ''}NULL"))

    def _key_of(self, value: Any) -> str:
        """What ``key(J)`` is for a str, bool or tagged value."""
        k = kind_of(value)
        if k == "str":
            return "4" + str(value)
        if k == "bool":
            return "1true" if value else "1false"
        return sort_key(value)

    def compare_param(self, value: Any) -> Any:
        return repr(value) if kind_of(value) == "number" else self._key_of(value)

    def compare(self, path: tuple[str, ...], op: str, value: Any) -> Leaf:
        key, num = self.key(path), self.num(path)
        k = kind_of(value)
        if k == "number":
            # numeric from the value's repr: exact, as jsonb's numbers are.
            sql = f"{key} = '2' AND {num} {op} {PARAM}::numeric"
            return Leaf(Frag(sql, (repr(value),)))
        rank = str(RANK[k])
        if op == "=":
            # num = 0 pins the second index column, so a compound index on this
            # field and then another still delivers rows in the other's order.
            return Leaf(Frag(f"{key} = {PARAM}::text AND {num} = 0", (self._key_of(value),)))
        # Stay within the kind: its keys run from the rank digit to the next one.
        bound = f"{key} < '{int(rank) + 1}'" if op in (">", ">=") else f"{key} >= '{rank}'"
        return Leaf(Frag(f"{key} {op} {PARAM}::text AND {bound}", (self._key_of(value),)))

    def between(self, path: tuple[str, ...], low: Any, high: Any) -> Leaf:
        key, num = self.key(path), self.num(path)
        if kind_of(low) == "number":
            sql = f"{key} = '2' AND {num} BETWEEN {PARAM}::numeric AND {PARAM}::numeric"
            return Leaf(Frag(sql, (repr(low), repr(high))))
        # Both bounds start with the kind's rank digit, so whatever lies between does too.
        sql = f"{key} BETWEEN {PARAM}::text AND {PARAM}::text"
        return Leaf(Frag(sql, (self._key_of(low), self._key_of(high))))

    def _strip_equal(self, expr: str, value: Any) -> Frag:
        """``expr`` (jsonb) strictly equals ``value``, a list or dict.

        jsonb ``=`` is deep, ignores key order and compares numbers as numeric,
        which is the contract's equality once the exact text of Decimals
        (``"$r"``) is removed where ``value`` holds Decimals. ``#-`` raises on a
        path through a scalar, or through an array by a key, so the stored
        value's shape along those paths is checked first (``#>`` never raises,
        and CASE evaluates its branch only when the check holds); a value of
        another shape is unequal anyway.
        """
        strip = decimal_paths(value)
        if not strip:
            return Frag(f"{expr} = {PARAM}::jsonb", (dumps_pg_match(value),))
        shapes: dict[tuple[str, ...], str] = {}
        for path in strip:
            target: Any = value
            position = tuple(path[:-1])  # where the Decimal is (its "$r" is the last part)
            for depth in range(len(position) + 1):
                shapes[position[:depth]] = "array" if type(target) is list else "object"
                if depth < len(position):
                    part = position[depth]
                    target = target[int(part)] if type(target) is list else target[part]
        checks: list[Frag] = []
        for prefix, kind in shapes.items():
            if prefix:
                checks.append(
                    Frag(f"jsonb_typeof({expr} #> {PARAM}::text[]) = '{kind}'", (list(prefix),))
                )
            else:
                checks.append(Frag(f"jsonb_typeof({expr}) = '{kind}'"))
        guard = join(" AND ", checks)
        stripped = expr + "".join(f" #- {PARAM}::text[]" for _ in strip)
        return Frag(
            f"(CASE WHEN {guard.sql} THEN {stripped} END) = {PARAM}::jsonb",
            (*guard.params, *strip, dumps_pg_match(value)),
        )

    def container_equals(self, path: tuple[str, ...], value: Any) -> Leaf:
        return Leaf(self._strip_equal(self.j(path), value))

    def list_has(self, path: tuple[str, ...], values: Sequence[Any]) -> Leaf:
        j = self.j(path)
        parts: list[Frag] = []
        # Containment of a one-element array is element equality for scalars
        # (a GIN jsonb_path_ops index on the path serves it); not for lists or
        # dicts, where containment is looser than equality.
        scalars = [v for v in values if kind_of(v) not in ("list", "dict")]
        parts.extend(Frag(f"{j} @> {PARAM}::jsonb", (dumps_pg_match([v]),)) for v in scalars)
        containers = [v for v in values if kind_of(v) in ("list", "dict")]
        if containers:
            inner = join(" OR ", (self._strip_equal("e.v", v) for v in containers))
            parts.append(
                Frag(
                    "EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN "
                    f"jsonb_typeof({j}) = 'array' THEN {j} END) AS e(v) WHERE {inner.sql})",
                    inner.params,
                )
            )
        return Leaf(parts[0] if len(parts) == 1 else join(" OR ", parts))

    def str_contains(self, path: tuple[str, ...], value: str) -> Leaf:
        # The kind guard as a range of key: with a plain index on the path it
        # is an index scan (empty when the field holds lists), so a GIN index
        # can serve the list branch of "contains" beside it (BitmapOr).
        key = self.key(path)
        sql = f"{key} >= '4' AND {key} < '5' AND strpos({self.tx(path)}, {PARAM}::text) > 0"
        return Leaf(Frag(sql, (value,)))

    def startswith(self, path: tuple[str, ...], prefix: str) -> Leaf:
        # A range of key under COLLATE "C" (byte order of UTF-8 = code point
        # order): exact and indexable, never LIKE.
        key = self.key(path)
        upper = str_successor(prefix)
        sql = f"{key} >= {PARAM}::text AND {key} < {PARAM}::text"
        return Leaf(Frag(sql, ("4" + prefix, "5" if upper is None else "4" + upper)))

    def endswith(self, path: tuple[str, ...], suffix: str) -> Leaf:
        if not suffix:
            return Leaf(Frag(self._is_string(path)))
        sql = f"{self._is_string(path)} AND right({self.tx(path)}, {PARAM}::int) = {PARAM}::text"
        return Leaf(Frag(sql, (len(suffix), suffix)))

    def _ascii_or(self, path: tuple[str, ...], test: Frag) -> Leaf:
        """A superset: ``test`` on all-ASCII strings, every other string passes.

        For ASCII text ``lower(x COLLATE "C")`` is exactly ``str.lower()``;
        beyond ASCII (``"K"`` Kelvin sign lowers to ``"k"`` in Python, not in
        PostgreSQL) Python decides.
        """
        tx = self.tx(path)
        sql = (
            f"{self._is_string(path)} AND (octet_length({tx}) <> char_length({tx}) OR ({test.sql}))"
        )
        return Leaf(Frag(sql, test.params), exact=False)

    def _folded(self, path: tuple[str, ...]) -> str:
        return f'lower({self.tx(path)} COLLATE "C")'

    def case_insensitive(self, path: tuple[str, ...], op: str, value: str) -> Leaf:
        low = value.lower()
        folded = self._folded(path)
        if op == "iequals":
            test = Frag(f"{folded} = {PARAM}::text", (low,))
        elif op == "icontains":
            test = Frag(f"strpos({folded}, {PARAM}::text) > 0", (low,))
        elif op == "istartswith":
            test = Frag(f"starts_with({folded}, {PARAM}::text)", (low,))
        else:
            test = Frag(f"right({folded}, {PARAM}::int) = {PARAM}::text", (len(low), low))
        return self._ascii_or(path, test)

    def regex(self, path: tuple[str, ...], pattern: str, ignore_case: bool) -> Leaf:
        # PostgreSQL's regular expressions are not Python's (\d, \b, \Z,
        # classes, case folding differ): only the kind runs here.
        return Leaf(Frag(self._is_string(path)), exact=False)

    def date_part(self, path: tuple[str, ...], part: str, value: int) -> Leaf:
        # Sort keys of dates and datetimes: rank digit, then YYYY-MM-DD... (UTC when aware).
        start, width, top = {"year": (2, 4, 9999), "month": (7, 2, 12), "day": (10, 2, 31)}[part]
        if not 1 <= value <= top:
            return Leaf(FALSE)
        tag = f"({self.j(path)}->>'$')"
        sql = (
            f"left({tag}, 1) IN ('6', '7', '8') AND substr({tag}, {start}, {width}) = {PARAM}::text"
        )
        return Leaf(Frag(sql, (f"{value:0{width}d}",)))

    def like(self, path: tuple[str, ...], value: str) -> Leaf:
        # Every word of the value is a substring of the lowered field: a
        # superset of "is one of its words", exact enough to use for ASCII.
        words = sorted(set(_WORD.findall(value.lower())))
        if not words:
            return Leaf(Frag(self._is_string(path)))
        folded = self._folded(path)
        test = join(" AND ", (Frag(f"strpos({folded}, {PARAM}::text) > 0", (w,)) for w in words))
        return self._ascii_or(path, test)

    def is_str_or_list(self, path: tuple[str, ...]) -> Leaf:
        return Leaf(Frag(f"{self.typeof(path)} IN ('string', 'array')"))

"""Hypothesis strategies for the conformance suite: values, records, conditions, queries.

Conditions and queries come out as the plain-data specs of ``pymodels.testing.oracle``
(``CondSpec`` tuples and ``QuerySpec`` dicts), so the oracle evaluates them directly and
``to_query`` turns them into library queries through the public API of docs/queries.md only.

Query values are derived from the records they will run against (``query_for``,
``query_cases``), so that conditions often hit: a random str almost never ``startswith``
another random str.

Numbers: the contract (docs/queries.md) leaves int/float comparisons beyond 2**53 in
magnitude unspecified.
Strategies meant for queries therefore default to ``big_floats=False`` (floats stay below
2**53 in magnitude while ints still reach ±2**63, which keeps every int/float comparison
exact on any engine); round-trip tests can use ``big_floats=True``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from decimal import Decimal
from functools import cache, reduce
from typing import TYPE_CHECKING, Any

from hypothesis import settings
from hypothesis import strategies as st

if TYPE_CHECKING:
    from pymodels.conditions import Condition

__all__ = [
    "FIELD_NAMES",
    "OPS",
    "UPDATE_OPS",
    "conditions",
    "examples",
    "field_names",
    "primary_keys",
    "queries",
    "query_cases",
    "query_for",
    "record_sets",
    "records",
    "scalars",
    "scalars_of_kind",
    "texts",
    "to_q",
    "to_query",
    "update_cases",
    "values",
]

CondSpec = tuple[Any, ...]
QuerySpec = dict[str, Any]
Records = Collection[Mapping[str, Any]]

OPS: tuple[str, ...] = (
    "equals",
    "exists",
    "gt",
    "gte",
    "lt",
    "lte",
    "between",
    "in",
    "contains",
    "contains_all",
    "contains_any",
    "startswith",
    "endswith",
    "iequals",
    "icontains",
    "istartswith",
    "iendswith",
    "matches",
    "imatches",
    "year",
    "month",
    "day",
    "like",
)
"""The op table of docs/queries.md, kept here separately from the oracle's on purpose."""

# A small pool so that generated queries hit generated records. It covers a plain name,
# non-ASCII names, a space, a comma, quote/percent/star/caret (SQL, LIKE and glob syntax),
# and names that are op names ("in", "day": reaching them as a last path part needs
# "__equals"). No name is one edit away from an op name (such a last part after "__" is
# an InvalidQuery typo), nor "pk" (which order_by reads as the primary key).
FIELD_NAMES: tuple[str, ...] = (
    "name",
    "age",
    "tags",
    "a",
    "b",
    "ñame",
    "名前",
    "x y",
    "a,b",
    "it's 100%",
    "a*b^c",
    "in",
    "day",
)

# Characters that break naive escaping in SQL, LIKE, GLOB, regex, JSON paths and Mongo
# queries, plus case-changing non-ASCII letters for the i-ops ("ß", "İ" change length when
# case-mapped) and whitespace for \w word splitting.
_SPECIAL = "$%_*.^'\", \\[](){}+?|-#;:/\t\naAbBzZ09ñÑéÉßİΣς名"
_ANY_CHAR = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
_MIN_AWARE = dt.datetime(2, 1, 1)
_MAX_AWARE = dt.datetime(9998, 12, 31, 23, 59, 59, 999999)
_ORDERED_KINDS = ("number", "decimal", "str", "bytes", "date", "naive", "aware")


# Strategy builders are cached: strategies are immutable, and the query strategies rebuild
# value strategies for every drawn condition.


def examples(n: int) -> int:
    """``n`` examples for a test that fixes its own count, raised with the loaded profile.

    A test that sets ``max_examples`` itself (it is slow per example) keeps ``n``
    under profiles up to 2,000 examples (the usual default and a ``ci`` one); a
    profile asking for more (a soak run of 20,000) multiplies ``n`` by the same
    factor, so the soak reaches these tests too. Read when the test is defined:
    load the profile first (in ``conftest.py``).
    """
    loaded = settings.default
    asked = 0 if loaded is None else loaded.max_examples
    return n * max(1, asked // 2000)


@cache
def field_names() -> st.SearchStrategy[str]:
    """Field names from a small fixed pool (see ``FIELD_NAMES``)."""
    return st.sampled_from(FIELD_NAMES)


@cache
def primary_keys() -> st.SearchStrategy[str]:
    """Non-empty str pks, non-ASCII included, so that pk order is by code point."""
    return st.text(st.sampled_from("abcAB09-_ ~ñ名") | _ANY_CHAR, min_size=1, max_size=6)


@cache
def texts(max_size: int = 8) -> st.SearchStrategy[str]:
    """Valid Unicode str without NUL or surrogates, rich in metacharacters."""
    return st.text(st.sampled_from(_SPECIAL) | _ANY_CHAR, max_size=max_size)


def _integers() -> st.SearchStrategy[int]:
    edges = [0, 1, -1, 2**31, -(2**31) - 1, 2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63)]
    return st.sampled_from(edges) | st.integers(-10, 10) | st.integers(-(2**63), 2**63 - 1)


def _floats(big_floats: bool) -> st.SearchStrategy[float]:
    edges = [0.0, -0.0, 0.5, -1.5, 5e-324, 0.1]
    bound = None if big_floats else float(2**53 - 1)
    if big_floats:
        edges += [1e16, -1e16, 1.7976931348623157e308, 2.0**63]
    return (
        st.sampled_from(edges)
        | st.integers(-10, 10).map(float)  # equal to ints: one number kind
        | st.floats(
            min_value=None if bound is None else -bound,
            max_value=bound,
            allow_nan=False,
            allow_infinity=False,
        )
    )


def _decimals() -> st.SearchStrategy[Decimal]:
    # Built from a string: exact whatever the decimal context's precision (28 by default).
    built = st.builds(
        lambda coefficient, exponent: Decimal(f"{coefficient}E{exponent}"),
        st.integers(-(10**34) + 1, 10**34 - 1) | st.integers(-300, 300),
        st.integers(-30, 30),
    )
    edges = ["2.50", "2.5", "0", "-0", "0.00", "1E+5", "-1.000", "9" * 34, "0.1"]
    return st.sampled_from([Decimal(text) for text in edges]) | built


def _timezones() -> st.SearchStrategy[dt.tzinfo]:
    offsets = st.integers(-(24 * 60) + 1, 24 * 60 - 1)  # strictly within ±24h, in minutes
    return st.just(dt.UTC) | offsets.map(lambda m: dt.timezone(dt.timedelta(minutes=m)))


@cache
def scalars_of_kind(kind: str, *, big_floats: bool = True) -> st.SearchStrategy[Any]:
    """Scalar values of one kind of the oracle's type rank ("bool", "number", ... "aware")."""
    strategies: dict[str, Callable[[], st.SearchStrategy[Any]]] = {
        "bool": st.booleans,
        "number": lambda: _integers() | _floats(big_floats),
        "decimal": _decimals,
        "str": texts,
        "bytes": lambda: (
            st.sampled_from([b"", b"\x00", b"\xff", b"a\x00\xff"]) | st.binary(max_size=8)
        ),
        "date": st.dates,
        # fold is cleared: no engine stores it, and == ignores it anyway.
        "naive": lambda: st.datetimes().map(lambda d: d.replace(fold=0)),
        # Years 2..9998: converting any offset to UTC stays within datetime's range.
        "aware": lambda: st.datetimes(_MIN_AWARE, _MAX_AWARE, timezones=_timezones()).map(
            lambda d: d.replace(fold=0)
        ),
    }
    return strategies[kind]()


@cache
def scalars(*, big_floats: bool = True) -> st.SearchStrategy[Any]:
    """Any scalar of the value domain (docs/guide.md, "Values")."""
    kinds = ("bool", "number", "decimal", "str", "bytes", "date", "naive", "aware")
    return st.one_of([scalars_of_kind(k, big_floats=big_floats) for k in kinds])


@cache
def values(max_depth: int = 2, *, big_floats: bool = True) -> st.SearchStrategy[Any]:
    """Any value of the domain, lists and dicts nested at most ``max_depth`` deep."""
    if max_depth <= 0:
        return scalars(big_floats=big_floats)
    inner = values(max_depth - 1, big_floats=big_floats)
    return st.one_of(
        scalars(big_floats=big_floats),
        st.lists(inner, max_size=3),
        st.dictionaries(field_names(), inner, max_size=3),
    )


@cache
def records(max_depth: int = 2, *, big_floats: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """Records: field name -> value, fields often absent, often nested dicts (depth-2 paths)."""
    nested = st.dictionaries(
        field_names(), values(max_depth - 1, big_floats=big_floats), max_size=3
    )
    # Beside any value, the shapes most ops look for (str, list of str) get their own
    # branches, so that about half the fields can satisfy a str or contains op.
    tags = st.lists(texts() | st.integers(-3, 3), max_size=4)
    field = st.one_of(values(max_depth, big_floats=big_floats), nested, texts(), tags)
    return st.dictionaries(field_names(), field, max_size=6)


def record_sets(
    max_size: int = 8, *, big_floats: bool = True
) -> st.SearchStrategy[dict[str, dict[str, Any]]]:
    """A storage's content: pk -> record."""
    return st.dictionaries(primary_keys(), records(big_floats=big_floats), max_size=max_size)


# --- conditions ------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    """The value's kind, as the oracle names them (duplicated here to stay independent)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dt.datetime):
        return "naive" if value.utcoffset() is None else "aware"
    names = {Decimal: "decimal", str: "str", bytes: "bytes", dt.date: "date"}
    names |= {list: "list", dict: "dict"}
    return names[type(value)]


def _paths(rows: Records) -> list[tuple[str, ...]]:
    """Every path of depth 1 or 2 present in ``rows``, in a stable order."""
    found: dict[tuple[str, ...], None] = {}
    for row in rows:
        for key, value in row.items():
            found[(key,)] = None
            if isinstance(value, dict):
                found.update(((key, sub), None) for sub in value)
    return list(found)


def _at(row: Mapping[str, Any], path: Sequence[str]) -> list[Any]:
    """[the value at path] or [] if absent."""
    value: Any = row
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return []
        value = value[part]
    return [] if value is None else [value]


def _key(path: Sequence[str], op: str, spell_equals: bool) -> str:
    """The lookup key of ``op`` on ``path``; "__equals" when a last part is named like an op."""
    if op == "equals" and (spell_equals or path[-1] in OPS):
        return "__".join([*path, "equals"])
    if op == "equals":
        return "__".join(path)
    return "__".join([*path, op])


def _mostly(
    likely: st.SearchStrategy[Any], fallback: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """About 3 in 4 from ``likely``, else from ``fallback``; shrinks towards ``likely``.

    Not ``st.one_of(likely, likely, likely, fallback)``: hypothesis seeks novel examples,
    so a small ``likely`` (a few seen values) would lose to a large ``fallback`` anyway.
    """
    return st.integers(0, 3).flatmap(lambda i: fallback if i == 3 else likely)


def _pick(seen: Sequence[Any], fallback: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly one of the things seen in the records, else a fresh one."""
    return _mostly(st.sampled_from(seen), fallback) if seen else fallback


def _useful(op: str, value: Any) -> bool:
    """Whether a field holding ``value`` can satisfy ``op`` at all."""
    k = _kind(value)
    if op in ("gt", "gte", "lt", "lte", "between"):
        return k in _ORDERED_KINDS
    if op in ("contains", "contains_all", "contains_any"):
        return k in ("str", "list")
    if op in ("year", "month", "day"):
        return k in ("date", "naive", "aware")
    if op in ("equals", "exists", "in"):
        return True
    return k == "str"  # the str ops


def _cut(text: str, where: str) -> st.SearchStrategy[str]:
    """A prefix, suffix or substring of ``text``."""
    ends = st.tuples(st.integers(0, len(text)), st.integers(0, len(text))).map(sorted)
    if where == "prefix":
        return st.integers(0, len(text)).map(lambda i: text[:i])
    if where == "suffix":
        return st.integers(0, len(text)).map(lambda i: text[i:])
    return ends.map(lambda ij: text[ij[0] : ij[1]])


def _recase(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """The same strs with their case changed, for the i-ops."""
    case_changes: list[Callable[[str], str]] = [str.upper, str.lower, str.swapcase, str.title]
    changes = st.sampled_from([*case_changes, lambda s: s])
    return st.tuples(strategy, changes).map(lambda pair: pair[1](pair[0]))


def _like_value(text: str) -> st.SearchStrategy[str]:
    """Some of ``text``'s words, joined by separators a full-text engine might parse."""
    words = re.findall(r"\w+", text)
    if not words:
        return st.just(text)
    chosen = st.lists(st.sampled_from(words), max_size=3)
    separator = st.sampled_from([" ", ", ", "  ", "%", " * ", " OR ", "-"])
    return st.tuples(chosen, separator).map(lambda pair: pair[1].join(pair[0]))


_REGEX_POOL = [r"^a", r"b$", r".", r"\d", r"[%_]", r"a|b", r"^$", r"\w+\s", r"^.{3}$", r"ß|ss"]


def _neighbours(value: Any, big_floats: bool) -> list[Any]:
    """Domain values of the same kind just below and above ``value`` (where easy to make),
    so that gt/lt hit records other than the one the value came from."""
    k = _kind(value)
    if k == "number" and isinstance(value, int):
        return [x for x in (value - 1, value + 1) if -(2**63) <= x <= 2**63 - 1]
    if k == "number":
        limit = 1e308 if big_floats else 2.0**53 - 1  # keep to the caller's float range
        return [x for x in (value - 1, value + 1) if abs(x) <= limit]
    if k in ("str", "bytes"):
        return [value[:-1], value + ("a" if k == "str" else b"\x00")]
    return []


def _value_for(op: str, seen: Sequence[Any], big_floats: bool) -> st.SearchStrategy[Any]:
    """Values of the right kind for ``op``, often derived from the values ``seen``."""
    strs = [v for v in seen if isinstance(v, str)]
    ordered = [v for v in seen if _kind(v) in _ORDERED_KINDS]
    ordered += [x for v in ordered for x in _neighbours(v, big_floats)]
    any_value = values(1, big_floats=big_floats)

    def from_strs(where: str) -> st.SearchStrategy[str]:
        cuts = st.sampled_from(strs).flatmap(lambda s: _cut(s, where)) if strs else None
        return texts() if cuts is None else _mostly(cuts, texts())

    if op == "equals":
        return _pick(seen, any_value)
    if op == "exists":
        return st.booleans()
    if op in ("gt", "gte", "lt", "lte"):
        kinds = st.sampled_from(_ORDERED_KINDS)
        return _pick(ordered, kinds.flatmap(lambda k: scalars_of_kind(k, big_floats=big_floats)))
    if op == "between":
        kinds = st.sampled_from(_ORDERED_KINDS)
        low = _pick(ordered, kinds.flatmap(lambda k: scalars_of_kind(k, big_floats=big_floats)))

        def pair(x: Any) -> st.SearchStrategy[tuple[Any, Any]]:
            same = [v for v in ordered if _kind(v) == _kind(x)]
            high = _pick(same, scalars_of_kind(_kind(x), big_floats=big_floats))
            # Mostly low <= high; sometimes reversed, which must match nothing.
            return st.tuples(high, st.booleans()).map(
                lambda hb: (min(x, hb[0]), max(x, hb[0])) if hb[1] else (x, hb[0])
            )

        return low.flatmap(pair)
    if op == "in":
        return st.lists(_pick(seen, any_value), max_size=4)
    if op in ("contains", "contains_all", "contains_any"):

        def items(container: Any) -> st.SearchStrategy[Any]:
            """Mostly substrings or elements of one container seen, so contains_all hits."""
            if isinstance(container, str):
                return _mostly(_cut(container, "substring"), any_value)
            return _pick(container, any_value) if isinstance(container, list) else any_value

        containers = [v for v in seen if isinstance(v, str | list)]
        source = _pick(containers, st.just(None))
        if op == "contains":
            return source.flatmap(items)
        return source.flatmap(lambda c: st.lists(items(c), max_size=3))
    if op in ("startswith", "istartswith"):
        found = from_strs("prefix")
    elif op in ("endswith", "iendswith"):
        found = from_strs("suffix")
    elif op == "iequals":
        found = _pick(strs, texts())
    elif op == "icontains":
        found = from_strs("substring")
    elif op in ("matches", "imatches"):
        # Recase before escaping: changing the case of a pattern can change its meaning
        # (\d -> \D), while the literal text may change freely.
        recase: Callable[[st.SearchStrategy[str]], st.SearchStrategy[str]] = (
            _recase if op == "imatches" else (lambda s: s)
        )
        escaped = recase(from_strs("substring")).map(re.escape)
        anchored = recase(from_strs("prefix")).map(lambda s: "^" + re.escape(s))
        return escaped | anchored | st.sampled_from(_REGEX_POOL)
    elif op in ("year", "month", "day"):
        dates = [v for v in seen if _kind(v) in ("date", "naive", "aware")]
        utc = [d.astimezone(dt.UTC) if _kind(d) == "aware" else d for d in dates]
        parts = [getattr(d, op) for d in utc]
        return _pick(parts, st.integers(0, 32) if op != "year" else st.integers(1, 9999))
    elif op == "like":
        found = _pick(strs, texts()).flatmap(_like_value)
    else:
        raise ValueError(f"unknown op {op!r}")
    return _recase(found) if op.startswith("i") or op == "like" else found


@st.composite
def _lookups(draw: st.DrawFn, rows: Records, ops: Sequence[str], big_floats: bool) -> CondSpec:
    op = draw(st.sampled_from(ops))
    random_path = st.lists(field_names(), min_size=1, max_size=2).map(tuple)
    present = _paths(rows)
    # Prefer paths holding a value the op can match (a str for startswith, ...).
    useful = [p for p in present if any(_useful(op, v) for row in rows for v in _at(row, p))]
    path = draw(_pick(useful, _pick(present, random_path)))
    seen = [value for row in rows for value in _at(row, path)]
    value = draw(_value_for(op, seen, big_floats))
    return ("lookup", _key(path, op, draw(st.booleans())), value)


def conditions(
    rows: Records = (),
    max_depth: int = 2,
    *,
    ops: Sequence[str] = OPS,
    big_floats: bool = False,
) -> st.SearchStrategy[CondSpec]:
    """CondSpecs over the whole op table, nested with and/or/not up to ``max_depth``.

    Paths and values are drawn mostly from ``rows`` (the records the condition will run
    against), so conditions often hold; ``ops`` narrows the op table. ``and``/``or`` lists
    are never empty (the library has no spelling for an empty disjunction).
    """
    leaf = _lookups(rows, ops, big_floats)
    if max_depth <= 0:
        return leaf
    sub = conditions(rows, max_depth - 1, ops=ops, big_floats=big_floats)
    negated = st.tuples(st.just("not"), sub)
    combined = st.tuples(st.sampled_from(["and", "or"]), st.lists(sub, min_size=1, max_size=3))
    # Half plain lookups, weighted by hand for the reason given in _mostly.
    return st.integers(0, 3).flatmap(lambda i: (leaf, leaf, negated, combined)[i])


def _order_keys(rows: Records) -> st.SearchStrategy[str]:
    random_path = st.lists(field_names(), min_size=1, max_size=2).map(tuple)
    path = _pick(_paths(rows), random_path).map("__".join) | st.just("pk")
    return st.tuples(st.sampled_from(["", "-"]), path).map("".join)


@st.composite
def queries(draw: st.DrawFn, rows: Records = (), *, big_floats: bool = False) -> QuerySpec:
    """QuerySpecs: where / where_not conditions, order_by (mixed directions, "pk", nested
    paths) and slices, every part optional. See ``conditions`` for ``rows``."""
    spec: QuerySpec = {}
    if draw(st.booleans()):
        spec["where"] = draw(st.lists(conditions(rows, big_floats=big_floats), max_size=3))
    if draw(st.booleans()):
        spec["where_not"] = draw(st.lists(conditions(rows, big_floats=big_floats), max_size=2))
    if draw(st.booleans()):
        spec["order_by"] = draw(st.lists(_order_keys(rows), min_size=1, max_size=3))
    if draw(st.booleans()):
        spec["offset"] = draw(st.integers(0, 5))
    if draw(st.booleans()):
        spec["limit"] = draw(st.none() | st.integers(0, 5))
    return spec


def query_for(rows: Records, *, big_floats: bool = False) -> st.SearchStrategy[QuerySpec]:
    """QuerySpecs aimed at ``rows``; use with ``st.data()`` after drawing the records."""
    return queries(rows, big_floats=big_floats)


@st.composite
def query_cases(
    draw: st.DrawFn, max_records: int = 8, *, big_floats: bool = False
) -> tuple[dict[str, dict[str, Any]], QuerySpec]:
    """(pk -> record, QuerySpec): records first, then a query derived from them."""
    data = draw(record_sets(max_records, big_floats=big_floats))
    return data, draw(query_for(list(data.values()), big_floats=big_floats))


# --- partial changes (update) --------------------------------------------------------------

#: The ops of ``update()`` (docs/queries.md, "Bulk changes"): a last part named like one
#: is reached by spelling ``__set``.
UPDATE_OPS = ("set", "unset", "inc")

# Increments at the edges: int64's bounds, the largest double, a negative zero.
_AMOUNT_EDGES = [1, -1, 0.5, -0.0, 2**63 - 1, -(2**63), 1.7976931348623157e308, -1e308]


@st.composite
def _change(draw: st.DrawFn, rows: Records) -> tuple[str, Any]:
    """One keyword change, ``(key, value)``, aimed at the paths of ``rows``."""
    fresh = st.lists(field_names(), min_size=1, max_size=3).map(tuple)
    path = draw(_pick(_paths(rows), fresh))
    if draw(st.integers(0, 4)) == 0:
        path = (*path, draw(field_names()))  # below a field: its value may not be a dict
    op = draw(st.sampled_from(UPDATE_OPS))
    if op == "unset":
        return "__".join([*path, "unset"]), True
    if op == "inc":
        # Mostly numbers, often the field's own (doubling it is how a sum overflows);
        # now and then a kind that inc refuses.
        held = [v for row in rows for v in _at(row, path) if _kind(v) == "number"]
        numbers = _pick(held, st.sampled_from(_AMOUNT_EDGES) | scalars_of_kind("number"))
        return "__".join([*path, "inc"]), draw(_mostly(numbers, scalars()))
    absent = st.none() | st.dictionaries(field_names(), st.none() | scalars(), max_size=2)
    value = draw(_mostly(values(2), absent))
    spelled = path[-1] in UPDATE_OPS or draw(st.booleans())
    return "__".join([*path, "set"] if spelled else path), value


@st.composite
def update_cases(
    draw: st.DrawFn, max_records: int = 6
) -> tuple[dict[str, dict[str, Any]], QuerySpec, dict[str, Any]]:
    """(pk -> record, QuerySpec, changes): records, a query derived from them, and the
    keyword changes of ``update()`` (applied in their order) aimed at their fields.

    Records holding floats beyond 2**53 (where an increment can overflow) come with the
    empty query: comparing them with ints is left unspecified (see the module's notes).
    """
    every_record: st.SearchStrategy[tuple[dict[str, dict[str, Any]], QuerySpec]] = record_sets(
        max_records, big_floats=True
    ).map(lambda d: (d, {}))
    data, spec = draw(query_cases(max_records) | every_record)
    rows = list(data.values())
    changes = dict(draw(st.lists(_change(rows), min_size=1, max_size=3)))
    return data, spec, changes


# --- specs to library queries (public API of docs/queries.md only) -------------------------


def to_q(cond: CondSpec) -> Condition:
    """The ``pymodels.Q`` for a CondSpec, combined with ``&``, ``|`` and ``~``."""
    from pymodels import Q  # late: this module must import without the core

    tag = cond[0]
    if tag == "lookup":
        return Q(**{cond[1]: cond[2]})
    if tag == "not":
        return ~to_q(cond[1])
    if tag in ("and", "or") and cond[1]:
        parts = [to_q(sub) for sub in cond[1]]
        return reduce(lambda a, b: (a & b) if tag == "and" else (a | b), parts)
    raise ValueError(f"no Q for CondSpec {cond!r}")


def to_query(base_query: Any, spec: Mapping[str, Any]) -> Any:
    """Apply a QuerySpec to a library query with ``where``, ``where_not``, ``order_by`` and
    slicing, returning the new query (queries are immutable)."""
    q = base_query
    for cond in spec.get("where", ()):
        # Plain lookups go in as keyword arguments, the rest as Q: both spellings get used.
        q = q.where(**{cond[1]: cond[2]}) if cond[0] == "lookup" else q.where(to_q(cond))
    for cond in spec.get("where_not", ()):
        q = q.where_not(to_q(cond))
    if spec.get("order_by"):
        q = q.order_by(*spec["order_by"])
    offset, limit = spec.get("offset", 0), spec.get("limit")
    if limit is not None:
        q = q[offset : offset + limit]
    elif offset:
        q = q[offset:]
    return q

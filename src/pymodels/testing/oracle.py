"""The conformance suite's oracle: a naive evaluator of the query semantics of docs/queries.md.

This module is the suite's second opinion. It shares no code with the library (it imports
nothing from ``pymodels``; stdlib only) and favours being obviously right over being fast:
every query is a filter over all records followed by one sort.

Conditions and queries are plain data, so that tests can build, print and shrink them
without the library:

* ``CondSpec``: ``("lookup", key, value)`` where ``key`` is a lookup string such as
  ``"a__b__gte"`` or ``"name"``; ``("and", [CondSpec, ...])``; ``("or", [CondSpec, ...])``;
  ``("not", CondSpec)``. An empty ``and`` is true and an empty ``or`` false.
* ``QuerySpec``: ``{"where": [CondSpec, ...], "where_not": [CondSpec, ...],
  "order_by": ["-a", "b__c", "pk"], "offset": int, "limit": int | None}``, every key
  optional. ``where`` entries are ANDed; each ``where_not`` entry is negated, then ANDed.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from functools import cmp_to_key
from typing import Any, Final, TypeAlias

CondSpec: TypeAlias = tuple[Any, ...]
QuerySpec: TypeAlias = Mapping[str, Any]

__all__ = [
    "ABSENT",
    "OPS",
    "CondSpec",
    "QuerySpec",
    "check_condition",
    "check_query",
    "compare",
    "count",
    "in_domain",
    "kind",
    "matches",
    "parse_key",
    "resolve",
    "run",
    "sort_key",
    "strict_equal",
    "valid_field_name",
    "values",
]


class _Absent:
    """The value of a path that leads nowhere; it sorts before every stored value."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()

# The type rank of docs/queries.md, "Ordering", lowest first. The names double as the kinds of the
# strictness rules: two values are comparable at all only if their kinds are equal.
_RANK: Final = (
    "absent",
    "bool",
    "number",
    "decimal",
    "str",
    "bytes",
    "date",
    "naive",
    "aware",
    "list",
    "dict",
)
# Kinds that gt/gte/lt/lte/between accept: bool, list and dict have a sort order but no
# comparison op, per the op table.
_ORDERED: Final = frozenset({"number", "decimal", "str", "bytes", "date", "naive", "aware"})
_DATES: Final = frozenset({"date", "naive", "aware"})


def kind(value: Any) -> str:
    """The kind of a domain value (a name from the type rank); TypeError outside the domain."""
    if value is ABSENT:
        return "absent"
    # bool before int: bool is an int subclass in Python but never a number here.
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, Decimal):
        return "decimal"
    if isinstance(value, str):
        return "str"
    if isinstance(value, bytes):
        return "bytes"
    # datetime before date: datetime is a date subclass in Python but not here.
    if isinstance(value, dt.datetime):
        return "naive" if value.utcoffset() is None else "aware"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "dict"
    raise TypeError(f"not a value of the domain (docs/guide.md, Values): {value!r}")


def valid_field_name(name: object) -> bool:
    """Whether ``name`` may be a field name at any depth (docs/guide.md, "Values")."""
    return (
        isinstance(name, str)
        and name != ""
        and not any(bad in name for bad in (".", "__", "\x00", '"'))
        and not name.startswith(("$", "_"))
    )


def in_domain(value: Any) -> bool:
    """Whether ``value`` is a storable value (docs/guide.md, "Values"), checked recursively."""
    try:
        k = kind(value)
    except TypeError:
        return False
    if k == "absent":
        return False
    if k == "str":
        try:
            value.encode("utf-8")  # fails on lone surrogates: not valid Unicode
        except UnicodeEncodeError:
            return False
        return "\x00" not in value
    if k == "number":
        if isinstance(value, int):
            return bool(-(2**63) <= value <= 2**63 - 1)
        return math.isfinite(value)
    if k == "decimal":
        return bool(value.is_finite()) and len(value.as_tuple().digits) <= 34
    if k == "aware":
        # Aware datetimes are stored in UTC, so the conversion must not overflow.
        try:
            value.astimezone(dt.UTC)
        except OverflowError:
            return False
        return True
    if k == "list":
        return all(in_domain(item) for item in value)
    if k == "dict":
        return all(valid_field_name(key) and in_domain(item) for key, item in value.items())
    return True


def strict_equal(a: Any, b: Any) -> bool:
    """Deep strict equality: same kind at every depth, dict key order ignored, list order kept.

    ``1 == 1.0`` (one number kind) and ``Decimal("2.5") == Decimal("2.50")`` (numeric), but
    ``True != 1``, ``[True] != [1]``, ``date != datetime`` and naive != aware.
    """
    ka, kb = kind(a), kind(b)
    if ka != kb:
        return False
    if ka == "list":
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=False))
    if ka == "dict":
        return a.keys() == b.keys() and all(strict_equal(a[key], b[key]) for key in a)
    return bool(a == b)


def _sign(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


def compare(a: Any, b: Any) -> int:
    """Three-way comparison (-1, 0, 1) in the total order of docs/queries.md, "Ordering".

    Different kinds compare by type rank (``ABSENT`` lowest); within a kind, Python's order,
    with lists element by element and dicts as their sorted ``[key, value]`` pairs.
    """
    ka, kb = kind(a), kind(b)
    if ka != kb:
        return _sign(_RANK.index(ka), _RANK.index(kb))
    if ka == "absent":
        return 0
    if ka == "list":
        for x, y in zip(a, b, strict=False):
            c = compare(x, y)
            if c:
                return c
        return _sign(len(a), len(b))
    if ka == "dict":
        # Keys are str, so sorted() is fine; the pairs then compare by this same order.
        return compare(
            [[key, item] for key, item in sorted(a.items())],
            [[key, item] for key, item in sorted(b.items())],
        )
    # Aware datetimes compare as instants in Python already.
    return _sign(a, b)


sort_key: Final = cmp_to_key(compare)
"""Key function for ``sorted`` in the ascending total order."""


def resolve(record: Mapping[str, Any], path: Sequence[str]) -> Any:
    """The value at ``path`` (dict keys only, never list indices), or ``ABSENT``."""
    value: Any = record
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return ABSENT
        value = value[part]
    # A stored null reads as absent (docs/guide.md, "Values").
    return ABSENT if value is None else value


# --- the op table of docs/queries.md -------------------------------------------------------------


def _contains(field: Any, item: Any) -> bool:
    if isinstance(field, str):
        return isinstance(item, str) and item in field
    if isinstance(field, list):
        return any(strict_equal(element, item) for element in field)
    return False


def _comparable(field: Any, value: Any) -> bool:
    return kind(field) == kind(value) and kind(value) in _ORDERED


def _between(field: Any, bounds: Sequence[Any]) -> bool:
    low, high = bounds
    return _comparable(field, low) and _comparable(field, high) and low <= field <= high


def _date_part(field: Any, attr: str, value: int) -> bool:
    k = kind(field)
    if k not in _DATES:
        return False
    if k == "aware":
        field = field.astimezone(dt.UTC)
    return bool(getattr(field, attr) == value)


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _on_str(test: Callable[[str, str], bool]) -> Callable[[Any, Any], bool]:
    """An op that holds only on str fields (the value is a str, checked beforehand)."""
    return lambda field, value: isinstance(field, str) and test(field, value)


# Each entry decides a present field against a value already checked by _check_value.
# "exists" is absent here: it is the one op that looks at absence (see _matches).
_EVAL: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "equals": strict_equal,
    "gt": lambda f, v: _comparable(f, v) and f > v,
    "gte": lambda f, v: _comparable(f, v) and f >= v,
    "lt": lambda f, v: _comparable(f, v) and f < v,
    "lte": lambda f, v: _comparable(f, v) and f <= v,
    "between": _between,
    "in": lambda f, v: any(strict_equal(f, item) for item in v),
    "contains": _contains,
    # all([]) is True and any([]) False; the kind check keeps non-str/list fields out.
    "contains_all": lambda f, v: kind(f) in ("str", "list") and all(_contains(f, x) for x in v),
    "contains_any": lambda f, v: any(_contains(f, x) for x in v),
    "startswith": _on_str(lambda f, v: f.startswith(v)),
    "endswith": _on_str(lambda f, v: f.endswith(v)),
    "iequals": _on_str(lambda f, v: f.lower() == v.lower()),
    "icontains": _on_str(lambda f, v: v.lower() in f.lower()),
    "istartswith": _on_str(lambda f, v: f.lower().startswith(v.lower())),
    "iendswith": _on_str(lambda f, v: f.lower().endswith(v.lower())),
    "matches": _on_str(lambda f, v: re.search(v, f) is not None),
    "imatches": _on_str(lambda f, v: re.search(v, f, re.IGNORECASE) is not None),
    "year": lambda f, v: _date_part(f, "year", v),
    "month": lambda f, v: _date_part(f, "month", v),
    "day": lambda f, v: _date_part(f, "day", v),
    # Every word of the value is a word of the field (vacuously true for a wordless value).
    "like": _on_str(lambda f, v: _words(v) <= _words(f)),
}

OPS: Final = frozenset({"exists", *_EVAL})
"""Every lookup op name of docs/queries.md."""

_STR_OPS: Final = frozenset(
    {"startswith", "endswith", "iequals", "icontains", "istartswith", "iendswith", "like"}
)


def parse_key(key: str) -> tuple[list[str], str]:
    """Split a lookup key into (path, op): a last part named like an op is the op.

    ``"a__b__gte"`` -> ``(["a", "b"], "gte")``; ``"day"`` -> ``(["day"], "equals")``;
    ``"a__day__equals"`` -> ``(["a", "day"], "equals")``.
    """
    parts = key.split("__")
    if len(parts) >= 2 and parts[-1] in OPS:
        return parts[:-1], parts[-1]
    return parts, "equals"


def _check_value(op: str, value: Any) -> None:
    """Raise ValueError when ``value`` is of the wrong kind for ``op`` (InvalidQuery's cases)."""

    def fail(why: str) -> None:
        raise ValueError(f"{op}: {why}, got {value!r}")

    if op in ("equals", "contains"):
        if not in_domain(value):
            fail("value outside the domain")
    elif op == "exists":
        if not isinstance(value, bool):
            fail("needs a bool")
    elif op in ("gt", "gte", "lt", "lte"):
        if not in_domain(value) or kind(value) not in _ORDERED:
            fail("needs a number, Decimal, str, bytes, date or datetime")
    elif op == "between":
        if not (
            isinstance(value, list | tuple)
            and len(value) == 2
            and all(in_domain(end) and kind(end) in _ORDERED for end in value)
            and kind(value[0]) == kind(value[1])
        ):
            fail("needs (low, high) of one orderable kind")
    elif op in ("in", "contains_all", "contains_any"):
        if not (isinstance(value, list | tuple) and all(in_domain(item) for item in value)):
            fail("needs a list of values")
    elif op in _STR_OPS:
        if not isinstance(value, str):
            fail("needs a str")
    elif op in ("matches", "imatches"):
        if not isinstance(value, str):
            fail("needs a regex str")
        try:
            re.compile(value)
        except re.error:
            fail("regex does not compile")
    elif op in ("year", "month", "day"):
        if isinstance(value, bool) or not isinstance(value, int):
            fail("needs an int")
    else:
        fail("unknown op")


def check_condition(cond: CondSpec) -> None:
    """Raise ValueError if ``cond`` is malformed or gives an op a value of the wrong kind."""
    tag = cond[0]
    if tag == "lookup" and len(cond) == 3 and isinstance(cond[1], str):
        path, op = parse_key(cond[1])
        if not all(valid_field_name(part) for part in path):
            raise ValueError(f"invalid path in lookup key {cond[1]!r}")
        _check_value(op, cond[2])
    elif tag in ("and", "or") and len(cond) == 2 and isinstance(cond[1], list | tuple):
        for sub in cond[1]:
            check_condition(sub)
    elif tag == "not" and len(cond) == 2:
        check_condition(cond[1])
    else:
        raise ValueError(f"malformed CondSpec: {cond!r}")


def _matches(record: Mapping[str, Any], cond: CondSpec) -> bool:
    tag = cond[0]
    if tag == "and":
        return all(_matches(record, sub) for sub in cond[1])
    if tag == "or":
        return any(_matches(record, sub) for sub in cond[1])
    if tag == "not":
        # Two-valued logic: negation is the exact opposite, absent fields included.
        return not _matches(record, cond[1])
    path, op = parse_key(cond[1])
    field = resolve(record, path)
    if op == "exists":
        return (field is not ABSENT) is cond[2]
    if field is ABSENT:
        return False  # every condition but exists=False is false on an absent field
    return _EVAL[op](field, cond[2])


def matches(record: Mapping[str, Any], cond: CondSpec) -> bool:
    """Whether ``record`` satisfies the condition ``cond`` (see the module docstring)."""
    check_condition(cond)
    return _matches(record, cond)


def _order_key(key: str) -> tuple[list[str] | None, bool]:
    """``"-a__b"`` -> (["a", "b"], True); ``"pk"`` -> (None, False): None means the pk."""
    descending = key.startswith("-")
    name = key[1:] if descending else key
    return (None if name == "pk" else name.split("__")), descending


def check_query(query: QuerySpec) -> None:
    """Raise ValueError if ``query`` is not a well-formed QuerySpec."""
    unknown = set(query) - {"where", "where_not", "order_by", "offset", "limit"}
    if unknown:
        raise ValueError(f"unknown QuerySpec keys: {sorted(unknown)}")
    for cond in [*query.get("where", ()), *query.get("where_not", ())]:
        check_condition(cond)
    for key in query.get("order_by", ()):
        path, _ = _order_key(key)
        if path is not None and not all(valid_field_name(part) for part in path):
            raise ValueError(f"invalid order_by key {key!r}")
    offset, limit = query.get("offset", 0), query.get("limit")
    if not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")


def run(records: Mapping[str, Mapping[str, Any]], query: QuerySpec) -> list[str]:
    """The pks of ``records`` (pk -> record) that match ``query``, in order, then sliced.

    Order: each ``order_by`` key with its own direction (``"-"`` descends; ``"pk"`` is the
    primary key), then the pk ascending; a descending key is the exact reverse of the
    ascending one, so absent values come first ascending and last descending.
    """
    check_query(query)
    where, where_not = query.get("where", ()), query.get("where_not", ())
    hits = [
        pk
        for pk, record in records.items()
        if all(_matches(record, c) for c in where)
        and not any(_matches(record, c) for c in where_not)
    ]
    keys = [_order_key(key) for key in query.get("order_by", ())]

    def order(p: str, q: str) -> int:
        for path, descending in keys:
            a = p if path is None else resolve(records[p], path)
            b = q if path is None else resolve(records[q], path)
            c = compare(a, b)
            if c:
                return -c if descending else c
        return compare(p, q)

    hits.sort(key=cmp_to_key(order))
    offset, limit = query.get("offset", 0), query.get("limit")
    return hits[offset : None if limit is None else offset + limit]


def count(records: Mapping[str, Mapping[str, Any]], query: QuerySpec) -> int:
    """How many records ``run`` returns (the slice honoured)."""
    return len(run(records, query))


def values(records: Mapping[str, Mapping[str, Any]], query: QuerySpec, path: str) -> list[Any]:
    """Distinct whole values at ``path`` (``"a__b"``) among the records ``run`` returns.

    In the query's order, skipping records without the path, deduplicated by
    ``strict_equal`` with the first occurrence kept; lists are not flattened.
    """
    found: list[Any] = []
    for pk in run(records, query):
        value = resolve(records[pk], path.split("__"))
        if value is not ABSENT and not any(strict_equal(value, seen) for seen in found):
            found.append(value)
    return found

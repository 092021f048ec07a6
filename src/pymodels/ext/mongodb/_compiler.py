"""Condition trees to one MongoDB filter document.

Each lookup compiles to a filter that is either *exact* (it selects exactly
the records the contract's lookup matches) or a *superset* that Python
re-checks, or to nothing at all. Where MongoDB's semantics differ from the
contract's, the filter carries guards:

* MongoDB matches array elements for a scalar condition (``{"f": 5}`` matches
  ``[5]``): a scalar condition comes with ``"f.0": {"$exists": false}`` on a
  key of its own. That is exact: a non-empty array has an element 0, an empty
  one matches no scalar condition, and the one other value holding ``f.0``, a
  dict with a key ``"0"``, never satisfies a scalar condition either. Dotted
  paths guard every prefix with ``"$not": {"$type": "array"}`` (a prefix is
  a dict, which may have a key ``"0"``), since the contract's paths never pass
  through lists.
* The condition on the field itself stays plain (a value, ``$gt``...): a
  query planner may then serve it from an index. SecantusDB's planner uses an
  index only for a top-level key whose condition carries no ``$type`` or
  ``$not`` and only when no top-level ``$and``/``$or``/``$nor`` is present, so
  the guards are other keys of one flat document, never operators beside the
  condition.
* MongoDB compares across BSON types only within a bracket: ``$gt: "a"``
  matches strings only, ``$gte: <date>`` dates only. So str and date
  conditions are exact without a ``$type``.
* MongoDB compares int, double and Decimal128 as one kind: a number condition
  also matches a Decimal128 of the same value (and SecantusDB matches
  ``Decimal128("9.99")`` with ``9.99``), a Decimal condition numbers. Saying
  ``$type`` next to the condition would make it exact but unindexable, so
  number and Decimal conditions are an indexed superset and Python re-checks
  the few records they bring along.
* Embedded documents compare by key order in MongoDB and by content in the
  contract: a dict or list equality is a prefilter, re-checked exactly.
* Python's regular expressions are not PCRE: ``matches``/``imatches``, the
  case-insensitive ops and ``like`` run as a type prefilter and are decided
  in Python; user text only ever reaches the server as an escaped literal.

Boolean structure: ``And`` keeps the filters of its children (the residual is
the And of the inexact ones); ``Or`` is pushed only when every child has a
filter, exact only when every child is; ``Not`` is pushed only over an exact
child, as ``$nor`` (whose complement is exact: two-valued logic).

The operators this module emits are :data:`OPERATORS`, nothing else (no
``$where``, ``$function``, ``$expr`` or JavaScript); ``tests/test_mongodb.py``
checks that over generated queries.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from ...backend import (
    And,
    Compiled,
    Condition,
    Lookup,
    Not,
    Or,
    ValidationError,
    check_field_name,
    kind_of,
)
from ._encoding import AWARE, DATE, DECIMAL, NAIVE, TAG, decimal128, encode_value, split_datetime

__all__ = [
    "FALSE",
    "OPERATORS",
    "Leaf",
    "compile_condition",
    "dotted",
    "exact_equals",
    "valid_path",
]

#: Every query operator the compiler may emit.
OPERATORS: Final = frozenset(
    {
        "$and",
        "$or",
        "$nor",
        "$not",
        "$eq",
        "$ne",
        "$gt",
        "$gte",
        "$lt",
        "$lte",
        "$in",
        "$exists",
        "$type",
        "$regex",
        "$elemMatch",
        "$size",
    }
)

NUMBER_TYPES: Final = ["int", "long", "double"]
NOT_ARRAY: Final = {"$type": "array"}
#: A filter no document satisfies.
FALSE: Final[dict[str, Any]] = {"_id": {"$in": []}}
UTC: Final = datetime.UTC


class Leaf(NamedTuple):
    """A lookup's filter; ``exact`` when it selects exactly the matching records."""

    filter: dict[str, Any]
    exact: bool = True


def valid_path(path: Sequence[str]) -> bool:
    """Whether every part can be a stored field name (else no record has the path)."""
    try:
        for part in path:
            check_field_name(part)
    except ValidationError:
        return False
    return bool(path)


def dotted(path: Sequence[str]) -> str:
    return ".".join(path)


def _on(
    path: tuple[str, ...], cond: dict[str, Any], *, scalar: bool = True, dicts: bool = False
) -> dict[str, Any]:
    """``cond`` on the field at ``path``, with the guards the contract's paths need.

    ``scalar``: the field must not be a list. ``dicts``: ``cond`` may match a
    dict, which may hold a key ``"0"``, so the list guard goes beside the
    condition instead of on ``<path>.0``.
    """
    name = dotted(path)
    out: dict[str, Any] = {}
    for i in range(1, len(path)):
        out[dotted(path[:i])] = {"$not": NOT_ARRAY}
    if scalar and dicts:
        out[name] = {**cond, "$not": NOT_ARRAY}
        return out
    # A plain {"$eq": v} is written as v (what a planner matches best); a dict
    # v stays under "$eq" so that it can never be read as operators.
    out[name] = cond["$eq"] if cond.keys() == {"$eq"} and type(cond["$eq"]) is not dict else cond
    if scalar:
        out[f"{name}.0"] = {"$exists": False}
    return out


def _and(filters: list[dict[str, Any]]) -> dict[str, Any]:
    """The conjunction, as one flat document where the keys allow (top-level keys AND)."""
    filters = [f for f in filters if f]
    if not filters:
        return {}
    merged: dict[str, Any] = {}
    rest: list[dict[str, Any]] = []
    for f in filters:
        if all(k not in merged or merged[k] == v for k, v in f.items()):
            merged.update(f)
        else:
            rest.append(f)  # a key already holding another condition
    return merged if not rest else {"$and": [merged, *rest]}


def _or(filters: list[dict[str, Any]]) -> dict[str, Any]:
    if not filters:
        return FALSE
    return filters[0] if len(filters) == 1 else {"$or": filters}


def _tagged(path: tuple[str, ...], tag: str, rest: dict[str, Any]) -> dict[str, Any]:
    """A condition on the parts of a tagged value at ``path`` (``_t``, ``_us``)."""
    name = dotted(path)
    out: dict[str, Any] = {}
    for i in range(1, len(path) + 1):
        out[dotted(path[:i])] = {"$not": NOT_ARRAY}
    out[f"{name}.{TAG}"] = tag
    for key, cond in rest.items():
        out[f"{name}.{key}"] = cond
    return out


_FLIP: Final = {"$gt": "$gt", "$gte": "$gt", "$lt": "$lt", "$lte": "$lt"}


def _split_compare(
    path: tuple[str, ...], tag: str, op: str, t: datetime.datetime, us: int
) -> dict[str, Any]:
    """``(_t, _us) op (t, us)`` lexicographically, on tagged values of ``tag``."""
    strict = _FLIP[op]
    return _or(
        [
            _tagged(path, tag, {"_t": {strict: t}}),
            _tagged(path, tag, {"_t": t, "_us": {op: us}}),
        ]
    )


def _plain_date_op(op: str, us: int) -> str:
    """The op comparing a whole-millisecond BSON date with ``floor`` for ``(floor, us)``."""
    if us == 0:
        return op
    return {"$gt": "$gt", "$gte": "$gt", "$lt": "$lte", "$lte": "$lte"}[op]


def _equals(path: tuple[str, ...], value: Any) -> Leaf:
    k = kind_of(value)
    if k == "number":
        # Decimal128s of the same value come along: Python drops them.
        return Leaf(_on(path, {"$eq": value}), False)
    if k in ("str", "bool", "bytes", "date", "datetime", "datetime_tz"):
        return Leaf(_on(path, {"$eq": encode_value(value)}))
    if k == "decimal":
        return _decimal(path, "$eq", value)
    if k == "list":
        if _bson_equality_is_superset(value):
            return Leaf(_on(path, {"$eq": encode_value(value)}, scalar=False), False)
        return Leaf(_on(path, {"$size": len(value)}, scalar=False), False)
    # A dict: MongoDB compares key order too. Its type and each scalar key
    # narrow the records down; Python decides.
    parts = [_on(path, {"$type": "object"}, dicts=True)]
    for key, sub in value.items():
        if kind_of(sub) not in ("list", "dict"):
            leaf = _equals((*path, key), sub)
            if leaf.exact:
                parts.append(leaf.filter)
    return Leaf(_and(parts), False)


def exact_equals(path: tuple[str, ...], value: Any) -> dict[str, Any] | None:
    """An exact filter for ``path == value`` (None: there is none), indexed or not.

    For a write that names its record by ``_id`` (compare-and-swap): the
    ``_id`` picks the record, so a ``$type`` beside the condition costs nothing.
    """
    leaf = _equals(path, value)
    if leaf.exact:
        return leaf.filter
    k = kind_of(value)
    if k == "number":
        return _on(path, {"$eq": value, "$type": NUMBER_TYPES})
    if k == "decimal" and decimal128(value) is not None and not _may_equal_tagged(value):
        return _on(path, {"$eq": decimal128(value), "$type": "decimal"})
    return None


def _bson_equality_is_superset(value: Any) -> bool:
    """Whether BSON equality holds for every value the contract finds equal to ``value``.

    False when a dict (compared by key order in BSON) or a Decimal with a
    tagged twin sits inside.
    """
    k = kind_of(value)
    if k == "dict":
        return False
    if k == "list":
        return all(_bson_equality_is_superset(v) for v in value)
    if k == "decimal":
        return decimal128(value) is not None and not _may_equal_tagged(value)
    return True


def _may_equal_tagged(value: Any) -> bool:
    # Tagged Decimals have an exponent above 6111: zero, or at least 1E+6112.
    return bool(value.is_zero() or value.adjusted() >= 6112)


def _decimal(path: tuple[str, ...], op: str, value: Any) -> Leaf:
    d = decimal128(value)
    tagged = _tagged(path, DECIMAL, {})
    if d is None:
        return Leaf(tagged, False)
    native = _on(path, {op: d})
    if op == "$eq" and not _may_equal_tagged(value):
        return Leaf(native, False)  # numbers of the same value come along
    # Tagged Decimals cannot be compared in the engine: they come along and
    # Python decides.
    return Leaf(_or([native, tagged]), False)


def _compare(path: tuple[str, ...], op: str, value: Any) -> Leaf:
    k = kind_of(value)
    if k == "number":
        return Leaf(_on(path, {op: value}), False)  # Decimal128s in range come along
    if k == "str":
        return Leaf(_on(path, {op: value}))  # strings only: BSON's type bracket
    if k == "decimal":
        return _decimal(path, op, value)
    if k == "bytes":
        # BSON orders binary data by length first: Python decides.
        return Leaf(_on(path, {"$type": "binData"}), False)
    if k == "date":
        t = datetime.datetime(value.year, value.month, value.day, tzinfo=UTC)
        return Leaf(_tagged(path, DATE, {"_t": {op: t}}))
    floor, us = split_datetime(value)
    if k == "datetime":
        return Leaf(_split_compare(path, NAIVE, op, floor.replace(tzinfo=UTC), us))
    plain = _on(path, {_plain_date_op(op, us): floor})  # dates only: the bracket
    return Leaf(_or([plain, _split_compare(path, AWARE, op, floor, us)]))


def _year(path: tuple[str, ...], year: int) -> Leaf:
    if not 1 <= year <= 9999:
        return Leaf(FALSE)
    start = datetime.datetime(year, 1, 1, tzinfo=UTC)
    span: dict[str, Any] = {"$gte": start}
    if year < 9999:
        span["$lt"] = datetime.datetime(year + 1, 1, 1, tzinfo=UTC)
    return Leaf(
        _or(
            [
                _tagged(path, DATE, {"_t": span}),
                _tagged(path, NAIVE, {"_t": span}),
                _tagged(path, AWARE, {"_t": span}),
                _on(path, span),
            ]
        )
    )


def _any_date(path: tuple[str, ...]) -> dict[str, Any]:
    return _or(
        [
            *(_tagged(path, tag, {}) for tag in (DATE, NAIVE, AWARE)),
            _on(path, {"$type": "date"}),
        ]
    )


def _list_has(path: tuple[str, ...], value: Any) -> Leaf:
    k = kind_of(value)
    if k in ("list", "dict") or (k == "decimal" and not _bson_equality_is_superset(value)):
        return Leaf(_on(path, {"$type": "array"}, scalar=False), False)
    element: dict[str, Any] = {"$eq": encode_value(value), "$not": NOT_ARRAY}
    if k == "number":
        element["$type"] = NUMBER_TYPES
    elif k == "decimal":
        element["$type"] = "decimal"
    return Leaf(_on(path, {"$elemMatch": element}, scalar=False))


def _contains_any(path: tuple[str, ...], values: Sequence[Any]) -> Leaf:
    leaves = [Leaf(_on(path, {"$regex": re.escape(v)})) for v in values if type(v) is str]
    leaves += [_list_has(path, v) for v in values]
    return _or_leaves(leaves)


def _or_leaves(leaves: list[Leaf]) -> Leaf:
    return Leaf(_or([leaf.filter for leaf in leaves]), all(leaf.exact for leaf in leaves))


def _and_leaves(leaves: list[Leaf]) -> Leaf:
    return Leaf(_and([leaf.filter for leaf in leaves]), all(leaf.exact for leaf in leaves))


def _str_successor(prefix: str) -> str | None:
    """The least str above every str starting with ``prefix`` (code point order)."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code == 0xD800:
            code = 0xE000  # surrogates are not valid text
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


def _string_superset(path: tuple[str, ...]) -> Leaf:
    return Leaf(_on(path, {"$type": "string"}), False)


def lookup_filter(lk: Lookup) -> Leaf:
    """The filter of one lookup (the op table of docs/queries.md)."""
    path, op, value = lk.path, lk.op, lk.value
    if not valid_path(path):
        # No record has this field: only exists=False holds.
        return Leaf({} if (op == "exists" and value is False) else FALSE)
    if op == "exists":
        present = _on(path, {"$exists": True, "$ne": None}, scalar=False)
        return Leaf(present if value else {"$nor": [present]})
    if op == "equals":
        return _equals(path, value)
    if op == "in":
        return _or_leaves([_equals(path, v) for v in value])
    if op in ("gt", "gte", "lt", "lte"):
        return _compare(path, "$" + op, value)
    if op == "between":
        return _and_leaves([_compare(path, "$gte", value[0]), _compare(path, "$lte", value[1])])
    if op == "contains":
        return _contains_any(path, [value])
    if op == "contains_any":
        return _contains_any(path, list(value))
    if op == "contains_all":
        if not value:
            return Leaf(_on(path, {"$type": ["string", "array"]}, scalar=False))
        return _and_leaves([_contains_any(path, [v]) for v in value])
    if op == "startswith":
        cond: dict[str, Any] = {"$gte": value}  # strings only: BSON's type bracket
        successor = _str_successor(value)
        if successor is not None:
            cond["$lt"] = successor
        return Leaf(_on(path, cond))
    if op == "endswith":
        # PCRE's and Python's "$" both also match before a final newline: a superset.
        return Leaf(_on(path, {"$regex": re.escape(value) + "$"}), False)
    if op == "year":
        return _year(path, value)
    if op in ("month", "day"):
        return Leaf(_any_date(path), False)
    # iequals, icontains, istartswith, iendswith, matches, imatches, like:
    # MongoDB's case folding and regular expressions are not Python's.
    return _string_superset(path)


def compile_condition(condition: Condition) -> Compiled:
    """The filter (None: every record) and the residual Python must check."""
    flt, residual = _node(condition)
    return Compiled(flt or None, residual, repr(flt or {}))


def _node(cond: Condition) -> tuple[dict[str, Any], Condition | None]:
    if isinstance(cond, Lookup):
        leaf = lookup_filter(cond)
        return leaf.filter, None if leaf.exact else cond
    if isinstance(cond, And):
        filters: list[dict[str, Any]] = []
        residuals: list[Condition] = []
        for child in cond.children:
            f, r = _node(child)
            filters.append(f)
            if r is not None:
                residuals.append(r)
        return _and(filters), And.of(*residuals) if residuals else None
    if isinstance(cond, Or):
        if not cond.children:
            return FALSE, None
        parts = [_node(child) for child in cond.children]
        if any(not f for f, _ in parts):
            # One child has no filter (every record, or Python alone): so has the Or.
            exact = any(not f and r is None for f, r in parts)
            return {}, None if exact else cond
        exact = all(r is None for _, r in parts)
        return _or([f for f, _ in parts]), None if exact else cond
    if isinstance(cond, Not):
        f, r = _node(cond.child)
        if r is not None:
            return {}, cond
        if not f:
            return FALSE, None
        return {"$nor": [f]}, None
    raise TypeError(f"not a condition: {cond!r}")

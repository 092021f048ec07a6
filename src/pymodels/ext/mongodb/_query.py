"""The MongoDB query: one filter document, sorted in the engine where BSON sorts as the contract.

BSON orders values of different types by its own type ranks (numbers before
strings before documents before arrays before binary before booleans before
dates), arrays by their least or greatest element, embedded documents by key
order and binary data by length first. The contract orders kinds differently
and lists element by element. So a sort key runs in the engine only when the
matching records hold, at that key, values of one kind BSON sorts as the
contract does: booleans, numbers (int and float), Decimal128 Decimals, str, or
aware datetimes on whole milliseconds (BSON dates); absent values sort first
ascending and last descending in both. The pk (``_id``) sorts in the engine
while every ``_id`` is a str.

Which kinds the records hold is learned from the first batch the engine
returns: when that batch is the whole result the decision is made on it
alone; otherwise one ``find_one`` probe asks the server whether the engine's
order can differ from the contract's. When it can, the query sorts in Python:
the sort keys of every match, then the records of the slice.

With one top-level sort key (then the pk) and a batch whose values there are
all of one kind C (or absent), the probe asks only for a matching record
holding a value of a *danger* type for C (:data:`DANGER`): a BSON type that
BSON and the contract place on different sides of C, or that BSON interleaves
with C (arrays sort by an element, Decimal128 among numbers, a tagged value
among embedded documents). Without one, every other type sits on the same side
of C in both orders, absent values first ascending and last descending in
both, and C sorts alike: so a page holding only C and absent values is the
contract's page at any offset. That probe is one flat filter (the query's
keys plus a ``$type`` on the sort key), which a planner serves from the
query's index. Other orders ask for any other kind at any key or a list on
any key's path: one flat probe per key (a ``$type`` listing every other
type, arrays included) and per prefix of a dotted key.

A small page (``offset + limit`` up to the storage's SMALL_PAGE) needs no
probe: one aggregation (:func:`page_pipeline`) matches once and returns both
the page in BSON's order and the set of BSON types each sort key holds
across *every* match, so the decision above is made on that set
(:func:`mixed_types`) in the same read of the matches. The server sorts that
page by the order's keys without the final pk and returns a few records more;
those tied with the page's last record on the keys (:func:`tie_key`) are
sorted by pk in Python. Reads from the first match send the filter without
its list guards (:func:`loosen`) and check them on the records read
(:func:`holds_guards`).
"""

from __future__ import annotations

import datetime
import decimal
from typing import Any, Final

from ...backend import MISSING, BaseQuery, Compiled, Item, OrderKey, get_path
from ._compiler import NUMBER_TYPES, dotted, valid_path
from ._encoding import decimal128

__all__ = [
    "DANGER",
    "FIRST_BATCH",
    "SORT_TYPES",
    "Query",
    "classes_of",
    "holds_guards",
    "kinds_seen",
    "loosen",
    "mixed_types",
    "other_types",
    "page_pipeline",
    "sort_spec",
    "stages",
    "tie_key",
]

#: Records fetched before deciding whether the engine's order can be kept.
FIRST_BATCH = 1000

#: The BSON types of each kind the engine sorts as the contract does.
SORT_TYPES: dict[str, Any] = {
    "bool": "bool",
    "number": NUMBER_TYPES,
    "decimal": "decimal",
    "str": "string",
    "aware": "date",
}


#: BSON types outside the value domain: never taken for safe.
_FOREIGN = ["timestamp", "regex", "minKey", "maxKey", "javascript"]
_NUMBERS = ["int", "long", "double"]

#: Per engine-sortable kind C, the BSON types a record may hold at the sort key
#: only when Python sorts: ordered against C differently by BSON and by the
#: contract (absent < bool < number < Decimal < str < bytes < date < naive <
#: aware < list < dict; BSON: null < numbers and Decimal128 < string < object
#: < array < binData < objectId < bool < date), or interleaved with C by BSON
#: (arrays by an element, Decimal128 with numbers, tagged values with dicts).
DANGER: dict[str, list[str]] = {
    "number": ["bool", "decimal", "array", *_FOREIGN],
    "decimal": ["bool", *_NUMBERS, "array", "object", *_FOREIGN],
    # ObjectIds read as str; tagged Decimals are objects.
    "str": ["bool", "array", "object", "objectId", *_FOREIGN],
    "bool": [*_NUMBERS, "decimal", "string", "object", "array", "binData", "objectId", *_FOREIGN],
    # Off-millisecond aware datetimes and dicts are objects.
    "aware": ["object", "array", *_FOREIGN],
}


#: Every BSON type a stored value may have (null aside, which reads as absent).
_ALL_TYPES = [
    *_NUMBERS,
    "decimal",
    "string",
    "object",
    "array",
    "binData",
    "objectId",
    "bool",
    "date",
    *_FOREIGN,
]


def other_types(kind: str) -> list[str]:
    """The BSON types of every value not of ``kind`` (arrays included)."""
    own = SORT_TYPES[kind]
    own = own if isinstance(own, list) else [own]
    return [t for t in _ALL_TYPES if t not in own]


def page_pipeline(
    flt: dict[str, Any], spec: list[tuple[str, int]], count: int, keys: list[OrderKey]
) -> list[dict[str, Any]]:
    """One aggregation: the first ``count`` matches in BSON's order and the types at the keys.

    ``$facet`` runs both branches over the one ``$match`` output, so the
    matches are read once (a ``find`` then a probe read them twice). The
    ``kinds`` branch groups every match by the BSON type names (the ``$type``
    expression: "missing" when absent, "array" for any array) at each key's
    dotted path (:func:`kinds_seen` reads them); paths come from validated
    field names, never from values. One top-level key groups by the bare
    ``$type`` (no document per match to build and hash).
    """
    kinds: Any
    if len(keys) == 1 and len(keys[0].path) == 1:
        kinds = {"$type": "$" + keys[0].path[0]}
    else:
        kinds = {}
        for i, key in enumerate(keys):
            kinds[f"k{i}"] = {"$type": "$" + dotted(key.path)}
            # Each prefix of a dotted key too: a list on the way is found there
            # (SecantusDB answers "missing", not "array", for `$a.b` over a list).
            for j in range(1, len(key.path)):
                kinds[f"k{i}p{j}"] = {"$type": "$" + dotted(key.path[:j])}
    return [
        {"$match": flt},
        {
            "$facet": {
                "page": [{"$sort": dict(spec)}, {"$limit": count}],
                "kinds": [{"$group": {"_id": kinds}}],
            }
        },
    ]


def kinds_seen(
    keys: list[OrderKey], groups: list[dict[str, Any]]
) -> tuple[list[set[str]], list[set[str]]]:
    """``(seen, on_way)`` for :func:`mixed_types` from the ``kinds`` branch of the page."""
    seen: list[set[str]] = [set() for _ in keys]
    on_way: list[set[str]] = [set() for _ in keys]
    if len(keys) == 1 and len(keys[0].path) == 1:
        seen[0].update(str(group["_id"]) for group in groups)
        return seen, on_way
    for group in groups:
        for i, key in enumerate(keys):
            seen[i].add(str(group["_id"].get(f"k{i}", "missing")))
            for j in range(1, len(key.path)):
                on_way[i].add(str(group["_id"].get(f"k{i}p{j}", "missing")))
    return seen, on_way


_GUARD: Final = {"$exists": False}


def loosen(flt: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, ...]]]:
    """``flt`` without its top-level list guards (``"f.0": {"$exists": false}``), and their paths.

    Each top-level key of a filter is a conjunct, so the loose filter selects a
    superset; :func:`holds_guards` decides the dropped conjuncts on a fetched
    document. A guard checked by the server costs about what the condition
    beside it does for each match (SecantusDB resolves the path in Python),
    one checked here a dict lookup on the few records a page keeps.
    """
    guards = [k for k, v in flt.items() if k.endswith(".0") and v == _GUARD]
    if not guards:
        return flt, []
    loose = {k: v for k, v in flt.items() if k not in guards}
    return loose, [tuple(k[:-2].split(".")) for k in guards]


def holds_guards(doc: dict[str, Any], guards: list[tuple[str, ...]]) -> bool:
    """Whether the BSON document ``doc`` (as pymongo decodes it) has no ``<path>.0`` per guard.

    ``f.0`` exists where ``f`` is a non-empty array or an embedded document
    with a key ``"0"``. A list before the last part (which the filter's own
    prefix guards exclude anyway) answers False: the server then decides.
    """
    for path in guards:
        value: Any = doc
        for part in path:
            t = type(value)
            if t is dict:
                value = value.get(part, MISSING)
            elif t is list:
                return False
            else:
                value = MISSING
                break
        t = type(value)
        if (t is list and value) or (t is dict and "0" in value):
            return False
    return True


def mixed_types(
    keys: list[OrderKey], classes: list[str], seen: list[set[str]], on_way: list[set[str]]
) -> bool:
    """Whether BSON may order the matches otherwise than the contract (as the probes decide).

    ``seen[i]`` is the set of ``$type`` names at key i over every match,
    ``on_way[i]`` the same at the proper prefixes of its path; ``classes[i]``
    the one kind the page held there. It answers as the probes of the module
    docstring would over the same matches:

    - One top-level key: a probe ``{key: {$type: DANGER[C]}}`` finds a match
      iff the key holds a danger type or an array holding one; "array" is in
      every DANGER list, and an array's ``$type`` name is "array", so that is
      iff ``seen`` meets DANGER[C]. Absent ("missing") and null are in no list
      in either form.
    - Otherwise the probes ask, per key, for another type at the dotted path
      (arrays included) or an array at a prefix. The prefix probes find a
      match iff some ``on_way`` holds "array". Without a list at any prefix
      the path runs through embedded documents only, where the ``$type`` of
      ``$a.b`` is the value's own type ("array" for a list), or "missing"
      where a prefix is absent or a scalar, which no probe matches either.
      So the probes find a match iff ``on_way`` holds "array" or ``seen``
      meets the other types (which include "array").
    """
    if len(keys) == 1 and len(keys[0].path) == 1:
        return bool(seen[0] & set(DANGER[classes[0]]))
    if any("array" in names for names in on_way):
        return True
    return any(s & set(other_types(c)) for s, c in zip(seen, classes, strict=True))


_NAN = object()


def tie_key(record: dict[str, Any], keys: list[OrderKey]) -> tuple[Any, ...]:
    """The values at the sort keys, equal where BSON's sort ties two records of one kind.

    Python's ``==`` on values of one engine-sortable kind is BSON's tie
    (``1 == 1.0``, ``Decimal("1.0") == Decimal("1")``), except NaN (never
    in the contract's domain, maybe in another program's records), which
    BSON ties with NaN.
    """
    out: list[Any] = []
    for key in keys:
        value = get_path(record, key.path)
        t = type(value)
        if (t is float and value != value) or (t is decimal.Decimal and value.is_nan()):
            value = _NAN
        out.append(value)
    return tuple(out)


def _sort_class(value: Any) -> str | None:
    """The kind of ``value`` if BSON sorts it as the contract does, else None."""
    t = type(value)
    if t is bool:
        return "bool"
    if t is int or t is float:
        return "number"
    if t is str:
        return "str"
    if t is decimal.Decimal:
        return "decimal" if decimal128(value) is not None else None
    if t is datetime.datetime and value.tzinfo is not None and value.microsecond % 1000 == 0:
        return "aware"
    return None


def sort_spec(order: tuple[OrderKey, ...]) -> list[tuple[str, int]]:
    """pymongo's sort list for a full order (paths no record can hold are left out)."""
    spec: list[tuple[str, int]] = []
    seen: set[str] = set()
    for key in order:
        if key.is_pk:
            name = "_id"
        elif valid_path(key.path):
            name = dotted(key.path)
        else:
            continue  # absent in every record: it cannot change the order
        if name not in seen:  # a repeated key cannot change the order either
            seen.add(name)
            spec.append((name, -1 if key.descending else 1))
    return spec


class Query(BaseQuery[Any]):
    """A query compiled to a MongoDB filter document (the storage's hooks run it)."""

    def _engine_order(self, order: tuple[OrderKey, ...], native: Any) -> bool:
        # Always: the storage's _select falls back to Python where BSON's order differs.
        return True

    def _engine_count(self, native: Any) -> int:
        return self.storage._count_where(native)

    def _engine_explain(
        self, compiled: Compiled, order: tuple[OrderKey, ...] | None, offset: int, limit: int | None
    ) -> str:
        return self.storage._explain_select(compiled.native, order, offset, limit)


def classes_of(rows: list[Item], keys: list[OrderKey]) -> list[str | None] | None:
    """Per key, the one engine-sortable kind the rows hold there (None: none seen).

    None when some row holds a kind the engine does not sort as the contract
    does, two kinds meet at one key, or a list lies on a key's path.
    """
    out: list[str | None] = []
    for key in keys:
        seen: str | None = None
        path = key.path
        for _, record in rows:
            value = record.get(path[0], MISSING) if len(path) == 1 else _value_at(record, path)
            if value is MISSING:
                continue
            if value is _BLOCKED:
                return None
            kind = _sort_class(value)
            if kind is None or (seen is not None and kind != seen):
                return None
            seen = kind
        out.append(seen)
    return out


_BLOCKED = object()


def _value_at(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    current: Any = record
    for part in path[:-1]:
        current = current.get(part, MISSING) if type(current) is dict else MISSING
        if type(current) is list:
            return _BLOCKED  # BSON would sort by the list's elements' values
        if current is MISSING:
            return MISSING
    return get_path(current, path[-1:]) if type(current) is dict else MISSING


def stages(plan: Any) -> str:
    stages: list[str] = []
    while isinstance(plan, dict) and plan:
        stage = str(plan.get("stage", "?"))
        if "indexName" in plan:
            stage += f"({plan['indexName']})"
        stages.append(stage)
        plan = plan.get("inputStage")
    return " <- ".join(stages) or "?"

"""Condition trees as values: parsing, validation at build time, hashing, negation."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymodels import InvalidQuery, Q
from pymodels.conditions import ALL, And, Condition, Lookup, Not, Or, parse_key, record_test
from pymodels.features import OPS
from pymodels.testing import strategies as pst


def test_parsing_paths_and_ops() -> None:
    assert parse_key("a", 1) == Lookup(("a",), "equals", 1)
    assert parse_key("a__b__gte", 1) == Lookup(("a", "b"), "gte", 1)
    assert parse_key("a__gt__equals", 1) == Lookup(("a", "gt"), "equals", 1)
    assert parse_key("gt", 1) == Lookup(("gt",), "equals", 1)  # a plain name is a field
    assert parse_key("address__city", "x").path == ("address", "city")


@pytest.mark.parametrize("key", ["a__gtee", "a__startwith", "a__contain", "a__id", "a__iin"])
def test_one_edit_from_an_op_is_a_typo(key: str) -> None:
    with pytest.raises(InvalidQuery, match="did you mean"):
        parse_key(key, "x")


def test_ops_far_from_any_op_are_nested_keys() -> None:
    assert parse_key("a__city", 1).path == ("a", "city")
    assert parse_key("id", 1).path == ("id",)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("a__gt", None),
        ("a__gt", True),
        ("a__gt", [1]),
        ("a__gt", {"x": 1}),
        ("a__between", (1,)),
        ("a__between", (1, "b")),
        ("a__between", (dt.date(2020, 1, 1), dt.datetime(2020, 1, 1))),
        ("a__in", "abc"),
        ("a__contains_all", 1),
        ("a__exists", "yes"),
        ("a__year", 2020.0),
        ("a__year", True),
        ("a__like", 1),
        ("a__matches", "[unclosed"),
        ("a__imatches", "(?P<"),
        ("a", float("nan")),
        ("a", "nul\x00"),
        ("a__", 1),
        ("__a", 1),
    ],
)
def test_bad_lookups_fail_when_built(key: str, value: object) -> None:
    with pytest.raises(InvalidQuery) as info:
        Q(**{key: value})
    assert isinstance(info.value, ValueError)


def test_error_names_path_and_op() -> None:
    with pytest.raises(InvalidQuery, match="age__gt"):
        Q(age__gt=[1])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("a", None, "lookup a__equals: None is not a value; to match absent fields use exists"),
        ("a__contains", None, "lookup a__contains: None is not a value"),
        ("a__in", [1, None], "lookup a__in: None is not a value"),
        ("a__gt", None, "lookup a__gt: None is not a value"),
        ("a__exists", None, "lookup a__exists takes True or False, not None"),
        ("a__startswith", None, "lookup a__startswith takes a str, not None"),
        ("a", object(), "lookup a__equals: value: object is not a storable value"),
    ],
)
def test_errors_say_what_the_op_takes(key: str, value: object, message: str) -> None:
    with pytest.raises(InvalidQuery) as info:
        Q(**{key: value})
    assert str(info.value).startswith(message)


def test_every_op_checks_its_value() -> None:
    for op in OPS:
        with pytest.raises(InvalidQuery, match=f"a__{op}"):
            Lookup(("a",), op, object())
    with pytest.raises(InvalidQuery, match="unknown op 'near'"):
        Lookup(("a",), "near", 1)


def test_a_regex_lookup_gives_its_compiled_pattern() -> None:
    assert Lookup(("a",), "matches", "x+").regex.pattern == "x+"
    assert Lookup(("a",), "imatches", "x").regex.flags & re.IGNORECASE
    assert not Lookup(("a",), "matches", "x").regex.flags & re.IGNORECASE


def test_conditions_are_hashable_values() -> None:
    a = Q(x=[1, {"k": Decimal("1.0")}]) | ~Q(y__in=[1, 2])
    b = Q(x=[1, {"k": Decimal("1.0")}]) | ~Q(y__in=[1, 2])
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert Q(x=1) != Q(x=True) and Q(x=[1]) != Q(x=[True])
    assert Q(x=1) == Q(x=1.0)  # one kind: numbers
    with pytest.raises(AttributeError):
        Q(x=1).op = "gt"  # type: ignore[attr-defined]


def test_boolean_algebra() -> None:
    c = Q(a=1)
    assert ~~c == c and isinstance(~c, Not)
    assert isinstance(c & Q(b=2), And) and isinstance(c | Q(b=2), Or)
    assert (c & Q(b=2)) & Q(d=3) == And((c, Q(b=2), Q(d=3)))  # flattened
    assert c & c == c
    assert Q() == ALL and ALL.matches({})
    assert Q(a=1, b=2) == Q(a=1) & Q(b=2)


def test_two_valued_logic() -> None:
    assert not Q(age__gt=5).matches({})
    assert (~Q(age__gt=5)).matches({})
    assert Q(age__exists=False).matches({})
    assert not (~Q(age__exists=False)).matches({})


def test_aware_values_are_normalised_to_utc() -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    noon = dt.datetime(2020, 1, 1, 12, tzinfo=plus2)
    lookup = parse_key("t", noon)
    assert lookup.value.utcoffset() == dt.timedelta(0)
    assert lookup.matches({"t": noon.astimezone(dt.UTC)})


@pytest.mark.parametrize(
    ("key", "spelling"),
    [
        ("country__ne", "where_not(country=...)"),
        ("country__neq", "where_not(country=...)"),
        ("a__b__nin", "where_not(a__b__in=[...])"),  # not "did you mean 'in'"
        ("a__notin", "where_not(a__in=[...])"),
        ("a__not_in", "where_not(a__in=[...])"),
        ("a__eq", "a=..."),
        ("a__exact", "a=..."),
        ("a__iexact", "a__iequals=..."),
        ("a__isnull", "a__exists=False"),
        ("a__regex", "a__matches=..."),
        ("a__iregex", "a__imatches=..."),
        ("a__range", "a__between=(low, high)"),
        ("a__has_key", "a__KEY__exists=True"),
    ],
)
def test_django_and_mongodb_op_names_get_the_pymodels_spelling(key: str, spelling: str) -> None:
    with pytest.raises(InvalidQuery, match=re.escape(spelling)) as info:
        parse_key(key, "x")
    assert f"{key}__equals" in str(info.value)  # the way to a key named so
    *path, name = key.split("__")
    assert parse_key(f"{key}__equals", "x") == Lookup((*path, name), "equals", "x")
    assert name not in OPS


def test_a_saved_document_stands_for_its_pk() -> None:
    from pymodels import Document, get_storage

    class Author(Document):
        name: str

    saved = Author(name="A")
    with get_storage("memory://") as storage:
        storage.save(saved, primary_key="a1")
    unsaved = Author(name="B")
    assert Q(author=saved) == Q(author="a1")
    assert Q(author__in=[saved, "a2"]) == Q(author__in=["a1", "a2"])
    assert Q(authors__contains=saved) == Q(authors__contains="a1")
    assert Q(authors__contains_all=[saved]) == Q(authors__contains_all=["a1"])
    with pytest.raises(InvalidQuery, match="Author given is not saved"):
        Q(author=unsaved)
    with pytest.raises(InvalidQuery, match="not saved"):
        Q(author__in=[saved, unsaved])
    with pytest.raises(InvalidQuery, match="author__gt"):
        Q(author__gt=saved)  # an ordering op takes no document


@st.composite
def _records_and_condition(
    draw: st.DrawFn, ops: tuple[str, ...] = OPS
) -> tuple[list[dict[str, Any]], Condition]:
    rows = list(draw(pst.record_sets()).values())
    return rows, pst.to_q(draw(pst.conditions(rows, ops=ops)))


@settings(max_examples=pst.examples(300))
@given(_records_and_condition())
def test_record_test_decides_as_matches(case: tuple[list[dict[str, Any]], Condition]) -> None:
    """The fast tests scans use decide every record exactly as the reference evaluator."""
    rows, cond = case
    test = record_test(cond)
    assert [test(row) for row in rows] == [cond.matches(row) for row in rows], cond


#: Values of different kinds that compare equal or ordered in plain Python (1, 1.0,
#: True and Decimal(1); "1" beside 1; -0.0 beside 0; an int beside the float it
#: rounds to): where a fast test could decide otherwise.
_LOOKALIKES = (
    0,
    1,
    1.0,
    -0.0,
    2.5,
    2**53 + 1,
    float(2**53),
    True,
    False,
    Decimal(1),
    Decimal("2.5"),
    "1",
    "a",
    "ab",
    "b",
    b"a",
)
_UNORDERED = ([1], ["a"], {"x": 1}, dt.date(2020, 1, 1))
_ORDERED = tuple(v for v in _LOOKALIKES if type(v) is not bool)  # a bool is not ordered
_NUMBERS = tuple(v for v in _LOOKALIKES if type(v) in (int, float))
_STRS = tuple(v for v in _LOOKALIKES if type(v) is str)


@st.composite
def _lookalike_leaf(draw: st.DrawFn, fields: st.SearchStrategy[str]) -> Condition:
    value = st.sampled_from(_LOOKALIKES + _UNORDERED)
    op = draw(st.sampled_from(("equals", "gt", "gte", "lt", "lte", "in", "startswith", "exists")))
    if op == "equals":
        operand: Any = draw(value)
    elif op == "in":
        # Operands of one kind (the specialised sets) and of mixed kinds alike.
        pool = draw(st.sampled_from((_NUMBERS, _STRS, _LOOKALIKES + _UNORDERED)))
        operand = tuple(draw(st.lists(st.sampled_from(pool), max_size=4)))
    elif op == "startswith":
        operand = draw(st.sampled_from(("", "a", "ab", "1")))
    elif op == "exists":
        operand = draw(st.booleans())
    else:
        operand = draw(st.sampled_from(_ORDERED))
    return Lookup((draw(fields),), op, operand)


@st.composite
def _lookalike_case(draw: st.DrawFn) -> tuple[list[dict[str, Any]], Condition]:
    fields = st.sampled_from(["a", "b"])
    value = st.sampled_from(_LOOKALIKES + _UNORDERED)
    rows = draw(st.lists(st.dictionaries(fields, value), max_size=6))
    tree = st.recursive(
        _lookalike_leaf(fields),
        lambda children: st.one_of(
            st.lists(children, max_size=3).map(lambda cs: And(cs)),
            st.lists(children, max_size=3).map(lambda cs: Or(cs)),
            children.map(Not),
        ),
        max_leaves=4,
    )
    return rows, draw(tree)


@settings(max_examples=pst.examples(300))
@given(_lookalike_case())
def test_record_test_tells_lookalike_kinds_apart(
    case: tuple[list[dict[str, Any]], Condition],
) -> None:
    """The specialised leaves (equality, comparisons, ``in``, ``startswith``,
    ``exists``) and the groups over them (And, Or, Not, empty ones included), over
    values of different kinds that Python itself would compare: decided as
    ``matches`` does."""
    rows, cond = case
    test = record_test(cond)
    assert [test(row) for row in rows] == [cond.matches(row) for row in rows], cond

"""Pins the conformance oracle to docs/queries.md with hand-written cases, and checks that the
strategies stay inside the value domain and produce well-formed specs."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymodels.testing import oracle
from pymodels.testing import strategies as gen

UTC = dt.UTC
NAIVE = dt.datetime(2020, 5, 17, 10, 30, 0, 123456)
# 23:30 at -02:00 on New Year's Eve is 01:30 UTC on 1 January: year, month and day all move.
AWARE = dt.datetime(2020, 12, 31, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
DAY = dt.date(2020, 5, 17)


Records = dict[str, dict[str, Any]]


def lookup(key: str, value: Any) -> oracle.CondSpec:
    return ("lookup", key, value)


# (record, lookup key, value, expected): at least three per op, covering kind strictness.
CASES: list[tuple[dict[str, Any], str, Any, bool]] = [
    # equals
    ({"a": 1}, "a", 1.0, True),
    ({"a": -0.0}, "a", 0, True),
    ({"a": True}, "a", 1, False),
    ({"a": 1}, "a", True, False),
    ({"a": "7"}, "a", 7, False),
    ({"a": 7}, "a", [7], False),
    ({"a": [True]}, "a", [1], False),
    ({"a": [1, 2]}, "a", [2, 1], False),
    ({"a": {"x": 1, "y": [1, 2]}}, "a", {"y": [1.0, 2], "x": 1}, True),
    ({"a": {"x": 1}}, "a", {"x": 1, "y": 2}, False),
    ({"a": D("2.50")}, "a", D("2.5"), True),
    ({"a": D("2.5")}, "a", 2.5, False),
    ({"a": DAY}, "a", dt.datetime(2020, 5, 17), False),
    ({"a": NAIVE}, "a", NAIVE.replace(tzinfo=UTC), False),
    ({"a": AWARE}, "a", AWARE.astimezone(UTC), True),
    ({"a": b"\x00\xff"}, "a", b"\x00\xff", True),
    ({"a": b"a"}, "a", "a", False),
    ({"a": "$gt"}, "a", "$gt", True),
    ({"a": {"b": 1}}, "a__b", 1, True),
    ({"a": {"b": 1}}, "a__b__equals", 1, True),
    ({"a": [{"b": 1}]}, "a__b", 1, False),  # paths never pass through lists
    ({"in": 5}, "in", 5, True),  # a one-part key is always a field name
    ({"a": {"in": 1}}, "a__in__equals", 1, True),
    ({"a": {"day": 3}}, "a__day__equals", 3, True),
    ({"a": "x"}, "b", "x", False),
    # exists
    ({"a": 1}, "a__exists", True, True),
    ({}, "a__exists", True, False),
    ({}, "a__exists", False, True),
    ({"a": 1}, "a__exists", False, False),
    ({"a": None}, "a__exists", True, False),  # a stored null reads as absent
    ({"a": {"b": 1}}, "a__b__exists", True, True),
    ({"a": [{"b": 1}]}, "a__b__exists", False, True),
    ({"a": 1}, "a__b__exists", True, False),
    # gt
    ({"a": 5}, "a__gt", 4.5, True),
    ({"a": 5}, "a__gt", 5, False),
    ({"a": True}, "a__gt", 0, False),
    ({"a": "b"}, "a__gt", "a", True),
    ({"a": "5"}, "a__gt", 4, False),
    ({"a": [5]}, "a__gt", 4, False),
    ({"a": D("1.10")}, "a__gt", D("1.1"), False),
    ({"a": D("2")}, "a__gt", 1, False),
    ({"day": 5}, "day__gt", 4, True),
    ({}, "a__gt", 0, False),
    # gte
    ({"a": 5}, "a__gte", 5.0, True),
    ({"a": D("2.50")}, "a__gte", D("2.5"), True),
    ({"a": dt.date(2020, 1, 2)}, "a__gte", dt.datetime(2020, 1, 1), False),
    ({"a": b"b"}, "a__gte", b"a", True),
    ({"a": 2**63 - 1}, "a__gte", -(2**63), True),
    # lt
    ({"a": "B"}, "a__lt", "a", True),  # code point order, not collation
    ({"a": NAIVE}, "a__lt", NAIVE.replace(tzinfo=UTC), False),
    ({"a": AWARE}, "a__lt", dt.datetime(2021, 1, 1, 1, 31, tzinfo=UTC), True),  # instants
    ({"a": AWARE}, "a__lt", dt.datetime(2021, 1, 1, 1, 30, tzinfo=UTC), False),
    ({"a": 2**63 - 1}, "a__lt", 2**63 - 1, False),
    # lte
    ({"a": -1}, "a__lte", -1, True),
    ({"a": DAY}, "a__lte", DAY, True),
    ({"a": "é"}, "a__lte", "z", False),
    ({"a": False}, "a__lte", 1, False),
    ({"a": {"b": 1}}, "a__lte", 5, False),
    # between
    ({"a": 5}, "a__between", (5, 10.0), True),
    ({"a": 10}, "a__between", (5, 10), True),
    ({"a": 11}, "a__between", (5, 10), False),
    ({"a": 7}, "a__between", (10, 5), False),  # reversed bounds match nothing
    ({"a": "m"}, "a__between", ("a", "z"), True),
    ({"a": D("5")}, "a__between", (1, 10), False),
    ({"a": True}, "a__between", (0, 1), False),
    ({"a": DAY}, "a__between", (dt.date(2020, 1, 1), dt.date(2020, 12, 31)), True),
    ({"a": NAIVE}, "a__between", (dt.date(2020, 1, 1), dt.date(2020, 12, 31)), False),
    # in
    ({"a": 1}, "a__in", [0, 1.0], True),
    ({"a": True}, "a__in", [1, 0], False),
    ({"a": [1]}, "a__in", [[1], 2], True),
    ({"a": 1}, "a__in", [[1]], False),
    ({"a": 1}, "a__in", [], False),
    ({"a": {"in": 1}}, "a__in", [1], False),
    # contains
    ({"a": "50% off"}, "a__contains", "%", True),
    ({"a": "abc"}, "a__contains", "B", False),
    ({"a": "abc"}, "a__contains", "", True),
    ({"a": "123"}, "a__contains", 1, False),
    ({"a": [1, "x"]}, "a__contains", 1.0, True),
    ({"a": [True]}, "a__contains", 1, False),
    ({"a": [[1, 2]]}, "a__contains", [1, 2], True),
    ({"a": [1, 2]}, "a__contains", [1, 2], False),
    ({"a": ["abc"]}, "a__contains", "a", False),  # list elements are compared whole
    ({"a": {"x": 1}}, "a__contains", "x", False),
    ({"a": 12}, "a__contains", 1, False),
    # contains_all
    ({"a": [1, 2, 3]}, "a__contains_all", [3, 1], True),
    ({"a": [1, 2]}, "a__contains_all", [1, 4], False),
    ({"a": "hello"}, "a__contains_all", ["he", "lo"], True),
    ({"a": "x"}, "a__contains_all", [], True),
    ({"a": []}, "a__contains_all", [], True),
    ({"a": 5}, "a__contains_all", [], False),
    ({"a": {"k": 1}}, "a__contains_all", [], False),
    ({}, "a__contains_all", [], False),
    # contains_any
    ({"a": [1, 2]}, "a__contains_any", [4, 2], True),
    ({"a": [1, 2]}, "a__contains_any", [], False),
    ({"a": "hello"}, "a__contains_any", ["z", "ll"], True),
    ({"a": "hello"}, "a__contains_any", ["z"], False),
    ({"a": [True]}, "a__contains_any", [1], False),
    # startswith
    ({"a": "abc"}, "a__startswith", "ab", True),
    ({"a": "abc"}, "a__startswith", "AB", False),
    ({"a": "abc"}, "a__startswith", "", True),
    ({"a": "a_c"}, "a__startswith", "a%", False),
    ({"a": "%_x"}, "a__startswith", "%_", True),
    ({"a": ["abc"]}, "a__startswith", "a", False),
    # endswith
    ({"a": "abc"}, "a__endswith", "bc", True),
    ({"a": "abc"}, "a__endswith", "b", False),
    ({"a": "a.*"}, "a__endswith", ".*", True),
    ({"a": "axx"}, "a__endswith", ".*", False),
    ({"a": b"abc"}, "a__endswith", "c", False),
    # iequals
    ({"a": "Hello"}, "a__iequals", "hELLO", True),
    ({"a": "Hello"}, "a__iequals", "Hell", False),
    ({"a": "ÀÉ"}, "a__iequals", "àé", True),
    ({"a": 7}, "a__iequals", "7", False),
    ({"a": "a"}, "a__iequals", "_", False),
    # icontains
    ({"a": "Hello World"}, "a__icontains", "O W", True),
    ({"a": "abc"}, "a__icontains", "D", False),
    ({"a": ["ABC"]}, "a__icontains", "abc", False),
    ({"a": "abc"}, "a__icontains", "%", False),
    # istartswith
    ({"a": "Hello"}, "a__istartswith", "HE", True),
    ({"a": "Hello"}, "a__istartswith", "lo", False),
    ({"a": "Σx"}, "a__istartswith", "\u03c3", True),
    ({"a": "abc"}, "a__istartswith", "_", False),
    # iendswith
    ({"a": "Hello"}, "a__iendswith", "LO", True),
    ({"a": "Hello"}, "a__iendswith", "he", False),
    ({"a": "file.TXT"}, "a__iendswith", ".txt", True),
    ({"a": "abc"}, "a__iendswith", "*", False),
    # matches
    ({"a": "abc123"}, "a__matches", r"\d+", True),
    ({"a": "abc"}, "a__matches", r"^b", False),
    ({"a": "abc"}, "a__matches", r"b", True),  # search, not match
    ({"a": "axc"}, "a__matches", r"a\.c", False),
    ({"a": "axc"}, "a__matches", r"a.c", True),
    ({"a": "ABC"}, "a__matches", "abc", False),
    ({"a": ["abc"]}, "a__matches", "a", False),
    ({"a": 123}, "a__matches", r"\d", False),
    # imatches
    ({"a": "ABC"}, "a__imatches", "abc", True),
    ({"a": "ABC"}, "a__imatches", "^b", False),
    ({"a": "xyz"}, "a__imatches", "Y", True),
    ({"a": b"xyz"}, "a__imatches", "y", False),
    # year
    ({"a": DAY}, "a__year", 2020, True),
    ({"a": NAIVE}, "a__year", 2020, True),
    ({"a": AWARE}, "a__year", 2021, True),  # in UTC
    ({"a": AWARE}, "a__year", 2020, False),
    ({"a": "2020-05-17"}, "a__year", 2020, False),
    ({"a": 2020}, "a__year", 2020, False),
    # month
    ({"a": DAY}, "a__month", 5, True),
    ({"a": AWARE}, "a__month", 1, True),
    ({"a": NAIVE}, "a__month", 6, False),
    ({"a": [DAY]}, "a__month", 5, False),
    # day
    ({"a": DAY}, "a__day", 17, True),
    ({"a": AWARE}, "a__day", 1, True),
    ({"a": AWARE}, "a__day", 31, False),
    ({"a": 17}, "a__day", 17, False),
    ({"day": 17}, "day", 17, True),
    # like
    ({"a": "The quick brown fox"}, "a__like", "quick fox", True),
    ({"a": "The quick brown fox"}, "a__like", "QUICK", True),
    ({"a": "quickly"}, "a__like", "quick", False),
    ({"a": "The quick"}, "a__like", "quick cat", False),
    ({"a": "a_b"}, "a__like", "a_b", True),  # \w includes "_": one word
    ({"a": "a_b"}, "a__like", "a", False),
    ({"a": "a-b"}, "a__like", "b, a", True),
    ({"a": "50% off"}, "a__like", "50%", True),
    ({"a": "x"}, "a__like", "%", True),  # no words in the value: vacuously true
    ({"a": ["quick"]}, "a__like", "quick", False),
]


@pytest.mark.parametrize(("record", "key", "value", "expected"), CASES)
def test_lookup(record: dict[str, Any], key: str, value: Any, expected: bool) -> None:
    assert oracle.matches(record, lookup(key, value)) is expected
    # Two-valued logic: the negation is exactly the opposite, absent fields included.
    assert oracle.matches(record, ("not", lookup(key, value))) is not expected


def test_every_op_has_three_cases() -> None:
    per_op: dict[str, int] = {}
    for _, key, _, _ in CASES:
        op = oracle.parse_key(key)[1]
        per_op[op] = per_op.get(op, 0) + 1
    assert set(per_op) == oracle.OPS == set(gen.OPS)
    assert min(per_op.values()) >= 3, per_op


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("name", (["name"], "equals")),
        ("a__b__gte", (["a", "b"], "gte")),
        ("in", (["in"], "equals")),
        ("in__in", (["in"], "in")),
        ("a__day", (["a"], "day")),
        ("a__day__equals", (["a", "day"], "equals")),
        ("a__id", (["a", "id"], "equals")),
    ],
)
def test_parse_key(key: str, expected: tuple[list[str], str]) -> None:
    assert oracle.parse_key(key) == expected


@pytest.mark.parametrize(
    ("record", "cond", "expected"),
    [
        ({}, ("not", lookup("age__gt", 5)), True),
        ({"age": 6}, ("not", lookup("age__gt", 5)), False),
        ({"age": "6"}, ("not", lookup("age__gt", 5)), True),
        ({}, ("not", ("not", lookup("age__gt", 5))), False),
        ({}, ("not", lookup("age__exists", False)), False),
        ({}, ("and", []), True),
        ({}, ("or", []), False),
        ({"a": 1}, ("and", [lookup("a", 1), lookup("b__exists", False)]), True),
        ({"a": 1}, ("and", [lookup("a", 1), lookup("b", 2)]), False),
        ({"a": 1}, ("or", [lookup("b", 2), lookup("a__in", [1])]), True),
        ({"a": 1}, ("not", ("or", [lookup("b", 2), lookup("a", 2)])), True),
    ],
)
def test_compound(record: dict[str, Any], cond: oracle.CondSpec, expected: bool) -> None:
    assert oracle.matches(record, cond) is expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("a__gt", True),
        ("a__lt", [1]),
        ("a__between", (1, "z")),
        ("a__between", (1,)),
        ("a__in", 1),
        ("a__contains_all", "ab"),
        ("a__startswith", 1),
        ("a__like", None),
        ("a__matches", "("),
        ("a__year", True),
        ("a__day", 1.0),
        ("a__exists", 1),
        ("a", None),
        ("a", "nul\x00"),
        ("a", float("nan")),
        ("a", 2**63),
        ("a", (1, 2)),
        ("a__b.c", 1),
        ("_a", 1),
    ],
)
def test_wrong_value_kinds_are_rejected(key: str, value: Any) -> None:
    with pytest.raises(ValueError):
        oracle.matches({"a": 1}, lookup(key, value))


# --- order -----------------------------------------------------------------------------------

# One value of every kind, in the total order of docs/queries.md (strictly increasing).
RANKED: list[Any] = [
    False,
    True,
    -1,
    2.5,
    3,
    D("0.1"),
    D("10"),
    "",
    "B",
    "a",
    "é",
    b"",
    b"\x00",
    b"\xff",
    dt.date(1, 1, 1),
    dt.date(9999, 12, 31),
    dt.datetime(1, 1, 1),
    dt.datetime(2020, 1, 1, 0, 0, 0, 1),
    dt.datetime(2020, 1, 1, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),  # 08:00 UTC
    dt.datetime(2020, 1, 1, 9, 0, tzinfo=UTC),
    [],
    [True],
    [1],
    [1, "a"],
    ["a"],
    [[]],
    {},
    {"a": 1, "b": 0},
    {"a": 2},
    {"b": 0},
]


def _shuffled_pks(n: int) -> list[str]:
    # pks whose own order differs from the value order, so the pk tiebreak cannot fake it.
    return [f"k{(i * 7) % n:02d}" for i in range(n)]


def test_type_rank_order() -> None:
    pks = _shuffled_pks(len(RANKED))
    records: dict[str, dict[str, Any]] = {pk: {"a": v} for pk, v in zip(pks, RANKED, strict=True)}
    records["none"] = {}
    assert oracle.run(records, {"order_by": ["a"]}) == ["none", *pks]
    # Descending is the exact reverse: absent last.
    assert oracle.run(records, {"order_by": ["-a"]}) == [*reversed(pks), "none"]


def test_compare_is_consistent_with_rank() -> None:
    for i, a in enumerate(RANKED):
        for j, b in enumerate(RANKED):
            assert oracle.compare(a, b) == (i > j) - (i < j), (a, b)
    assert sorted(reversed(RANKED), key=oracle.sort_key) == RANKED


def test_pk_breaks_ties_in_both_directions() -> None:
    records: Records = {"p3": {"a": 1}, "p1": {"a": 1.0}, "p2": {"a": 1}, "p0": {"a": 2}}
    assert oracle.run(records, {"order_by": ["a"]}) == ["p1", "p2", "p3", "p0"]
    assert oracle.run(records, {"order_by": ["-a"]}) == ["p0", "p1", "p2", "p3"]
    equal: Records = {"x": {"d": D("2.50")}, "w": {"d": D("2.5")}, "v": {"d": -0.0}, "u": {"d": 0}}
    assert oracle.run(equal, {"order_by": ["-d"]}) == ["w", "x", "u", "v"]


def test_multi_key_mixed_directions() -> None:
    records: Records = {
        "1": {"a": 1, "b": "x"},
        "2": {"a": 1, "b": "y"},
        "3": {"a": 0, "b": "z"},
        "4": {"a": 1},
        "5": {"b": "x"},
    }
    assert oracle.run(records, {"order_by": ["a", "-b"]}) == ["5", "3", "2", "1", "4"]
    assert oracle.run(records, {"order_by": ["-a", "b"]}) == ["4", "1", "2", "3", "5"]
    assert oracle.run(records, {"order_by": ["a", "-pk"]}) == ["5", "3", "4", "2", "1"]


def test_pk_order_and_nested_paths() -> None:
    records: Records = {"é": {"x": {"y": 2}}, "a": {"x": {"y": 1}}, "B": {"x": 5}, "b": {}}
    assert oracle.run(records, {}) == ["B", "a", "b", "é"]  # code point order
    assert oracle.run(records, {"order_by": ["-pk"]}) == ["é", "b", "a", "B"]
    assert oracle.run(records, {"order_by": ["x__y"]}) == ["B", "b", "a", "é"]
    assert oracle.run(records, {"order_by": ["-x__y"]}) == ["é", "a", "B", "b"]


@pytest.mark.parametrize(
    ("offset", "limit", "expected"),
    [
        (0, None, ["a", "b", "c", "d", "e"]),
        (1, 2, ["b", "c"]),
        (3, None, ["d", "e"]),
        (4, 10, ["e"]),
        (10, None, []),
        (0, 0, []),
    ],
)
def test_slicing(offset: int, limit: int | None, expected: list[str]) -> None:
    records: dict[str, dict[str, Any]] = {pk: {"n": i} for i, pk in enumerate("edcba")}
    query = {"order_by": ["-n"], "offset": offset, "limit": limit}
    assert oracle.run(records, query) == expected
    assert oracle.count(records, query) == len(expected)


def test_where_and_where_not() -> None:
    records: Records = {"1": {"age": 4}, "2": {"age": 6}, "3": {}, "4": {"age": "9"}}
    assert oracle.run(records, {"where_not": [lookup("age__gt", 5)]}) == ["1", "3", "4"]
    both = {"where": [lookup("age__exists", True)], "where_not": [lookup("age__gt", 5)]}
    assert oracle.run(records, both) == ["1", "4"]
    two = {"where_not": [lookup("age", 4), lookup("age", 6)]}
    assert oracle.run(records, two) == ["3", "4"]


# --- values ----------------------------------------------------------------------------------

VALUE_RECORDS: dict[str, dict[str, Any]] = {
    "01": {"a": 1},
    "02": {"a": 1.0},
    "03": {"a": True},
    "04": {"a": [1]},
    "05": {"a": [True]},
    "06": {"a": [1.0]},
    "07": {"a": D("2.5")},
    "08": {"a": D("2.50")},
    "09": {},
    "10": {"a": {"x": 1, "y": 2}},
    "11": {"a": {"y": 2, "x": 1}},
    "12": {"a": "1"},
}


def test_values_dedup_keeps_first() -> None:
    found = oracle.values(VALUE_RECORDS, {}, "a")
    assert found == [1, True, [1], [True], D("2.5"), {"x": 1, "y": 2}, "1"]
    assert type(found[0]) is int and type(found[2][0]) is int
    assert str(found[4]) == "2.5"


def test_values_follow_query_order_and_slice() -> None:
    found = oracle.values(VALUE_RECORDS, {"order_by": ["-pk"], "limit": 8}, "a")
    assert found == ["1", {"x": 1, "y": 2}, D("2.50"), [1.0], [True]]
    assert type(found[3][0]) is float and str(found[2]) == "2.50"
    positive = ("or", [lookup("a__gt", 0), lookup("a__gt", D(0))])  # Decimal is not a number
    assert oracle.values(VALUE_RECORDS, {"where": [positive]}, "a") == [1, D("2.5")]


def test_values_of_nested_paths() -> None:
    records: Records = {
        "1": {"a": {"b": [1, 2]}},
        "2": {"a": {"b": [1, 2]}},
        "3": {"a": [{"b": 3}]},
    }
    assert oracle.values(records, {}, "a__b") == [[1, 2]]  # lists are not flattened


# --- strategies ------------------------------------------------------------------------------


def _walk(value: Any) -> list[Any]:
    """Every value nested in ``value``, itself included."""
    if isinstance(value, list):
        return [value, *(x for item in value for x in _walk(item))]
    if isinstance(value, dict):
        return [value, *(x for item in value.values() for x in _walk(item))]
    return [value]


def _one_edit(a: str, b: str) -> bool:
    """Whether a and b differ by exactly one insertion, deletion or substitution."""
    if len(a) > len(b):
        a, b = b, a
    if len(b) - len(a) > 1 or a == b:
        return False
    return any(
        a[:i] + b[i] + a[i:] == b if len(a) < len(b) else a[:i] + b[i] + a[i + 1 :] == b
        for i in range(len(b))
    )


def test_field_pool_is_valid_and_has_no_op_typos() -> None:
    for name in gen.FIELD_NAMES:
        assert oracle.valid_field_name(name), name
        assert name != "pk"
        assert not any(_one_edit(name, op) for op in oracle.OPS), name
    pool = set(gen.FIELD_NAMES)
    assert {"in", "day"} <= pool
    assert any(" " in n for n in pool) and any("," in n for n in pool)
    assert any(not n.isascii() for n in pool)
    assert _one_edit("id", "in") and _one_edit("gtee", "gte") and not _one_edit("gte", "gte")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(gen.values(big_floats=True))
def test_values_are_in_the_domain(value: Any) -> None:
    assert oracle.in_domain(value)
    for item in _walk(value):
        if isinstance(item, str):
            assert "\x00" not in item
            item.encode("utf-8")  # no surrogates
        elif isinstance(item, dt.datetime) and item.tzinfo is not None:
            assert item.astimezone(UTC).tzinfo is UTC
        elif isinstance(item, D):
            assert item.is_finite() and len(item.as_tuple().digits) <= 34


@settings(max_examples=200)
@given(gen.values(big_floats=False))
def test_small_floats_stay_below_2_53(value: Any) -> None:
    for item in _walk(value):
        if isinstance(item, float):
            assert abs(item) < 2**53


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(gen.record_sets())
def test_records_are_in_the_domain(data: dict[str, dict[str, Any]]) -> None:
    for pk, record in data.items():
        assert isinstance(pk, str) and pk and "\x00" not in pk
        assert oracle.in_domain(record)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(gen.query_cases())
def test_generated_queries_are_well_formed(case: tuple[dict[str, Any], Any]) -> None:
    data, query = case
    oracle.check_query(query)  # every op gets a value of the right kind; regexes compile

    def lookups(cond: oracle.CondSpec) -> list[oracle.CondSpec]:
        if cond[0] == "lookup":
            return [cond]
        if cond[0] == "not":
            return lookups(cond[1])
        assert cond[1], "and/or lists are never empty"
        return [leaf for sub in cond[1] for leaf in lookups(sub)]

    for cond in [*query.get("where", ()), *query.get("where_not", ())]:
        for _, key, _ in lookups(cond):
            path, _ = oracle.parse_key(key)
            assert set(path) <= set(gen.FIELD_NAMES), key

    hits = oracle.run(data, query)
    assert len(set(hits)) == len(hits) and set(hits) <= set(data)
    assert oracle.count(data, query) == len(hits)
    # Without the slice, a different order_by gives the same set (order is total).
    unsliced = {k: v for k, v in query.items() if k not in ("offset", "limit", "order_by")}
    assert set(oracle.run(data, {**unsliced, "order_by": ["-pk"]})) == set(
        oracle.run(data, unsliced)
    )


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(gen.record_sets(), st.data())
def test_negation_is_the_complement(data: dict[str, dict[str, Any]], draw: st.DataObject) -> None:
    cond = draw.draw(gen.conditions(list(data.values())))
    kept = set(oracle.run(data, {"where": [cond]}))
    dropped = set(oracle.run(data, {"where_not": [cond]}))
    assert kept | dropped == set(data) and not kept & dropped


@pytest.mark.parametrize("op", gen.OPS)
def test_conditions_often_hit(op: str) -> None:
    """The value bias works: for each op, generated conditions often match a record."""
    hits: list[bool] = []

    @st.composite
    def case(draw: st.DrawFn) -> tuple[dict[str, Any], oracle.CondSpec]:
        data = draw(gen.record_sets(max_size=4))
        return data, draw(gen.conditions(list(data.values()), max_depth=0, ops=[op]))

    @settings(max_examples=100, derandomize=True, database=None)
    @given(case())
    def probe(c: tuple[dict[str, Any], oracle.CondSpec]) -> None:
        assert oracle.parse_key(c[1][1])[1] == op
        # Trivial hits (contains "" or contains_all []) do not count.
        hits.append(c[1][2] not in ([], "") and any(oracle.matches(r, c[1]) for r in c[0].values()))

    probe()
    assert sum(hits) >= 3, f"{op}: {sum(hits)} hits in {len(hits)}"

"""The value domain's fast paths agree with the full checks, and generated pks stay in order."""

from __future__ import annotations

import copy
import datetime as dt
import threading
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymodels import ValidationError
from pymodels.pks import _encode, _encode_run, new_pk, new_pks
from pymodels.storage import batch_records
from pymodels.testing.strategies import records
from pymodels.testing.suite import run_in_threads
from pymodels.values import copy_value, stored_record, validate_record


@given(records())
def test_stored_record_is_validate_record_for_valid_records(record: dict[str, Any]) -> None:
    assert stored_record(record) == validate_record(record)


def _containers(value: Any) -> list[Any]:
    """Every list and dict in ``value``, itself included."""
    if type(value) is dict:
        return [value, *(c for v in value.values() for c in _containers(v))]
    if type(value) is list:
        return [value, *(c for v in value for c in _containers(v))]
    return []


@given(records())
def test_copy_value_is_equal_and_shares_no_container(record: dict[str, Any]) -> None:
    before = copy.deepcopy(record)
    out = copy_value(record)
    assert out == record
    assert list(out) == list(record)  # key order kept
    ours = {id(c) for c in _containers(record)}
    assert not ours & {id(c) for c in _containers(out)}
    for container in _containers(out):  # changing the copy leaves the original alone
        if type(container) is dict:
            container["__probe"] = 1
        else:
            container.append(1)
    assert record == before


@pytest.mark.parametrize(
    "record",
    [
        {"a": None},
        {"a": {"b": None}},
        {"a": dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2)))},
        {"a": Decimal("1.50")},
    ],
)
def test_records_needing_normalisation_are_copied(record: dict[str, Any]) -> None:
    out = stored_record(record)
    assert out is not record and out == validate_record(record)


def test_a_record_in_stored_form_is_not_copied() -> None:
    record = {"a": "x", "b": [1, 2.5, True], "c": {"d": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}}
    assert stored_record(record) is record


@pytest.mark.parametrize(
    "record",
    [
        {"a": "nul\x00"},
        {"a": float("nan")},
        {"a": 2**63},
        {"a": "\ud800"},
        {"$a": 1},
        {"a": {"b.c": 1}},
        {"a": object()},
        {"a": (1, 2)},
        {"a": [1, None]},
        {1: "x"},
        {"a": ["ok", "nul\x00"]},
        {"a": ["ok", "\ud800"]},
        {"a": -(2**63) - 1},
        {"a": float("-inf")},
        {"a": {"b": 2**63}},
    ],
)
def test_invalid_records_fail_both_ways(record: dict[Any, Any]) -> None:
    with pytest.raises(ValidationError):
        stored_record(record)
    with pytest.raises(ValidationError):
        validate_record(record)


@given(st.integers(0, 2**127 - 1), st.integers(1, 3000))
def test_runs_of_pks_encode_like_single_pks(first: int, count: int) -> None:
    assert _encode_run(first, count) == [_encode(first + i) for i in range(count)]


def test_new_pks_continue_one_increasing_sequence() -> None:
    out: list[str] = []
    lock = threading.Lock()

    def work(_: int) -> None:
        mine = [new_pk(), *new_pks(500), new_pk(), *new_pks(1)]
        assert mine == sorted(mine) and len(set(mine)) == len(mine)
        with lock:
            out.extend(mine)

    run_in_threads(work, 4)
    assert len(set(out)) == len(out) == 4 * 503
    assert new_pks(0) == []
    assert all(len(pk) == 26 for pk in out)


def test_batch_records_gives_each_items_record_up_to_the_first_failure() -> None:
    batch: list[Any] = [
        {"a": 1},
        {"a": None, "b": 2},
        MappingProxyType({"c": 3}),
        {"d": [4, "x"]},
        [("e", 5)],
        {"f": 6},
    ]
    records, failure = batch_records(10, batch)
    assert records == [{"a": 1}, {"b": 2}, {"c": 3}, {"d": [4, "x"]}]
    assert records[0] is batch[0] and records[1] is not batch[1]
    assert failure is not None
    index, error = failure
    assert index == 14 and "not list" in str(error)
    records, failure = batch_records(0, [{"a": 1}, {"a": float("nan")}, {"a": 2}])
    assert records == [{"a": 1}] and failure is not None and failure[0] == 1
    assert batch_records(3, [{"a": 1}]) == ([{"a": 1}], None)

"""Ordered slices sorted in Python keep a bounded heap, with the full sort's answers.

A query whose order the engine cannot run is sorted by the generic executor. For a
slice (``q.order_by("age")[:10]``, ``first()``) it keeps only ``offset + limit`` sort
keys; these tests check that this picks exactly what the full sort picks (mixed kinds,
mixed directions, ties broken by pk) and that its memory does not grow with the matches.

The minimal plug-in (every query run by pymodels) and shelve (which orders only by pk
in its engine) both reach that executor.
"""

from __future__ import annotations

import heapq
import itertools
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pymodels
from pymodels.ordering import full_order, parse_order, sort_keyed, total_key
from pymodels.query import _heap_key
from pymodels.storage import BaseStorage
from pymodels.testing.strategies import query_cases, record_sets, to_query

_names = itertools.count()

Factory = Callable[[Path], BaseStorage]


def _plugin(tmp: Path) -> BaseStorage:
    return pymodels.get_storage(f"testbackend://query-heap-{next(_names)}")


def _shelve(tmp: Path) -> BaseStorage:
    return pymodels.get_storage({"backend": "shelve", "path": str(tmp / f"s{next(_names)}")})


FACTORIES = [pytest.param(_plugin, id="plugin"), pytest.param(_shelve, id="shelve")]


order_names = st.lists(
    st.tuples(
        st.sampled_from(["", "-"]),
        st.sampled_from(["pk", "name", "age", "tags", "a", "b", "a__b", "名前", "in"]),
    ).map("".join),
    min_size=1,
    max_size=3,
)


@given(record_sets(max_size=20, big_floats=False), order_names, st.integers(0, 25))
def test_heap_key_picks_what_the_full_sort_picks(
    data: dict[str, dict[str, Any]], names: list[str], k: int
) -> None:
    order = full_order(parse_order(names))
    keyed = [(total_key(pk, record, order), pk) for pk, record in data.items()]
    sort_keyed(keyed, order)
    heap_key = _heap_key(order)
    picked = heapq.nsmallest(k, ((heap_key(pk, record), pk) for pk, record in data.items()))
    assert [pk for _, pk in picked] == [pk for _, pk in keyed[:k]]


@pytest.mark.parametrize("factory", FACTORIES)
@given(case=query_cases(max_records=12), start=st.integers(0, 6), size=st.integers(0, 6))
def test_ordered_slice_equals_slice_of_full_order(
    factory: Factory,
    tmp_path_factory: pytest.TempPathFactory,
    case: tuple[dict[str, dict[str, Any]], dict[str, Any]],
    start: int,
    size: int,
) -> None:
    data, spec = case
    spec = {k: v for k, v in spec.items() if k not in ("offset", "limit")}
    with factory(tmp_path_factory.mktemp("heap")) as storage:
        for pk, record in data.items():
            storage.save(record, pk)
        query = to_query(storage.query(), spec)
        everything = [doc.pk for doc in query]  # unsliced: the full sort
        assert [doc.pk for doc in query[start : start + size]] == everything[start : start + size]
        first = query[start:].first()
        assert (first.pk if first is not None else None) == next(iter(everything[start:]), None)


def _records(n: int) -> Iterator[tuple[str, dict[str, Any]]]:
    for i in range(n):
        # Ages repeat (ties broken by the unique name); a third are str, another kind.
        age: Any = i * 7919 % 90 if i % 3 else f"age{i % 50}"
        yield f"p{i:07}", {"age": age, "name": f"n{i}"}


def _peak(run: Callable[[], Any]) -> tuple[Any, int]:
    """What ``run()`` returns and the peak of memory traced while it ran, in bytes."""
    tracemalloc.start()
    try:
        result = run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.mark.slow
def test_limited_order_holds_limit_keys_not_one_per_match(tmp_path: Path) -> None:
    n, limit = 200_000, 10
    with _shelve(tmp_path) as storage:
        storage.save_many(record for _, record in _records(n))
        matching = storage.query().where(name__startswith="n")
        query = matching.order_by("-age", "-name")
        expected = sorted(
            (record for _, record in _records(n)),
            key=lambda r: (isinstance(r["age"], str), r["age"], r["name"]),
            reverse=True,
        )[:limit]
        # What reading every match costs by itself (the engine's scan, whatever it
        # holds), measured the same way: the ordered slice may add to it only a heap
        # of `limit` keys and a batch of records, not one sort entry per match (a
        # tuple of tuples and a pk, over 150 bytes each: 30 MB here).
        total, scan_peak = _peak(matching.count)
        got, peak = _peak(lambda: [doc.name for doc in query[:limit]])
        assert total == n
        assert got == [r["name"] for r in expected]
        assert peak - scan_peak < 2_000_000, f"{peak=} {scan_peak=} bytes for {n} matches"

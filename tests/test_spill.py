"""The external merge sort (``pymodels.spill``): order, runs on disk, what a run may hold."""

from __future__ import annotations

import datetime as dt
import io
import pickle
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymodels import spill
from pymodels.ordering import Descending
from pymodels.testing import strategies as pst
from pymodels.values import sort_key


@pytest.fixture
def small_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs of 5 items in blocks of 2, spilled under a directory to watch."""
    monkeypatch.setattr(spill, "RUN_SIZE", 5)
    monkeypatch.setattr(spill, "RUN_BLOCK", 2)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@settings(deadline=None)
@given(keys=st.lists(st.binary(max_size=4)), descending=st.booleans())
def test_keys_come_back_sorted_through_runs(keys: list[bytes], descending: bool) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spill, "RUN_SIZE", 5)
        mp.setattr(spill, "RUN_BLOCK", 2)
        with spill.KeySorter[bytes]("keys") as sorter:
            got = list(sorter.sort(iter(keys), descending=descending))
    assert got == sorted(keys, reverse=descending)


@settings(deadline=None)
@given(values=st.lists(pst.values(), max_size=30), descending=st.booleans())
def test_sort_keys_of_every_kind_survive_a_run_on_disk(values: list[Any], descending: bool) -> None:
    # Items as the query layer makes them: (sort keys, pk), sorted by passes and merged
    # by a key object, the runs pickled and read back (Decimals, dates, aware datetimes,
    # bytes, nested lists and dicts included).
    items = [((sort_key(v), (f"k{i:02}",)), f"k{i:02}") for i, v in enumerate(values)]

    def key(item: tuple[Any, str]) -> Any:
        first = Descending(item[0][0]) if descending else item[0][0]
        return (first, item[0][1])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spill, "RUN_SIZE", 4)
        with spill.KeySorter[Any]("sort keys") as sorter:
            got = list(
                sorter.sort(iter(items), sort_run=lambda run: run.sort(key=key), merge_key=key)
            )
    assert got == sorted(items, key=key)


def test_a_short_slice_keeps_a_heap_and_spills_nothing(small_runs: Path) -> None:
    with spill.KeySorter[int]("ints") as sorter:
        assert list(sorter.sort(iter(range(100, 0, -1)), stop=3)) == [1, 2, 3]
        assert list(small_runs.iterdir()) == []


def test_runs_are_removed_when_the_sorter_closes(small_runs: Path) -> None:
    sorter = spill.KeySorter[int]("ints")
    with sorter:
        ordered = iter(sorter.sort(iter(range(20, 0, -1))))
        assert next(ordered) == 1
        assert list(small_runs.iterdir()) != []
    assert list(small_runs.iterdir()) == []


@settings(deadline=None)
@given(items=st.lists(st.binary(max_size=4), max_size=30))
def test_a_spool_hands_items_back_as_they_came_through_runs(items: list[bytes]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spill, "RUN_SIZE", 5)
        mp.setattr(spill, "RUN_BLOCK", 2)
        with spill.KeySorter[bytes]("keys") as sorter:
            got = list(sorter.spool(iter(items)))
    assert got == items


def test_a_spool_holds_its_runs_until_the_sorter_closes(small_runs: Path) -> None:
    walked = []

    def walk() -> Any:
        for i in range(12):
            walked.append(i)
            yield i

    with spill.KeySorter[int]("ints") as sorter:
        spooled = iter(sorter.spool(walk()))
        assert walked == list(range(12))  # the walk ends before the first item is used
        [directory] = small_runs.iterdir()
        assert len(list(directory.iterdir())) == 2  # two runs of 5 spilled, 2 held
        assert list(spooled) == list(range(12))
    assert list(small_runs.iterdir()) == []
    with spill.KeySorter[int]("ints") as sorter:
        assert list(sorter.spool(range(4, 0, -1))) == [4, 3, 2, 1]
        assert list(small_runs.iterdir()) == []  # fewer than a run: no disk


def test_a_run_loads_the_values_records_hold_and_nothing_else() -> None:
    aware = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
    plain = [Decimal("2.50"), dt.date(2024, 5, 1), aware, b"\x00", ("x", 1.5, True, None)]
    data = io.BytesIO(pickle.dumps(plain, pickle.HIGHEST_PROTOCOL))
    assert list(spill._read_run(data)) == plain
    for foreign in ([Path("/")], [io.BytesIO]):
        data = io.BytesIO(pickle.dumps(foreign, pickle.HIGHEST_PROTOCOL))
        with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
            list(spill._read_run(data))

"""The memory backend's own behaviour: its indexes, its transactions, streaming.

Indexes only choose which records a query evaluates its condition on, so every
test here compares an indexed answer with the reference's (the oracle or an
unindexed storage) on the same records.
"""

from __future__ import annotations

import itertools
import threading
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pymodels
from pymodels import Document
from pymodels.conditions import parse_key
from pymodels.ext.memory import Storage
from pymodels.testing import oracle
from pymodels.testing import strategies as pst

_names = itertools.count()


def _storage(name: str | None = None) -> Storage:
    storage = pymodels.get_storage({"backend": "memory", "name": name})
    assert isinstance(storage, Storage)
    return storage


def _people(n: int) -> list[dict[str, Any]]:
    # Many ties on age within a city: the pk decides their order.
    return [
        {"name": f"n{i}", "city": f"c{i % 5}", "age": 18 + i * 7 % 11, "email": f"e{i}"}
        for i in range(n)
    ]


def _pks(q: Any) -> list[str]:
    return [d.pk for d in q]


# ------------------------------------------------------------ differential


def _equality_paths(spec: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    for cond in spec.get("where", ()):
        if cond[0] == "lookup":
            lookup = parse_key(cond[1], cond[2])
            if lookup.op == "equals":
                out.append(lookup.path)
    return out


@settings(deadline=None)
@given(case=pst.query_cases(), data=st.data())
def test_indexed_queries_match_the_oracle(
    case: tuple[dict[str, dict[str, Any]], dict[str, Any]], data: st.DataObject
) -> None:
    """Any records, any query, an index aimed at it: the oracle's pks in the oracle's order.

    The index's first path is one of the query's equality paths when it has one, and its
    other keys are the query's order keys, so the index both selects and orders. Some
    records are written before the index exists and some after; some are then replaced or
    deleted, so the index must follow every write.
    """
    records, spec = case
    storage = _storage()
    firsts = _equality_paths(spec)
    first = data.draw(st.sampled_from(firsts)) if firsts else ("a",)
    rest = [k for k in spec.get("order_by", ()) if k.lstrip("-") != "pk"]
    keys = ("__".join(first), *rest) if data.draw(st.booleans()) else ("__".join(first),)
    items = list(records.items())
    split = data.draw(st.integers(0, len(items)))
    for pk, record in items[:split]:
        storage.save(record, primary_key=pk)
    storage.create_index(keys)
    for pk, record in items[split:]:
        storage.save(record, primary_key=pk)
    final = dict(records)
    for pk, _ in items:
        action = data.draw(st.sampled_from(["keep", "keep", "delete", "swap"]))
        if action == "delete":
            storage.delete(pk)
            del final[pk]
        elif action == "swap" and len(items) > 1:
            other = data.draw(st.sampled_from(items))[1]
            storage.save(other, primary_key=pk)
            final[pk] = other
    q = pst.to_query(storage.query(), spec)
    expected = oracle.run(final, spec)
    assert _pks(q) == expected
    assert q.count() == len(expected)
    assert q.exists() == bool(expected)


# ------------------------------------------------------------ the indexes


def test_ordered_limit_comes_from_the_compound_index_in_order() -> None:
    indexed, plain = _storage(), _storage()
    indexed.create_index("email")
    indexed.create_index(("city", "-age"))
    for i, record in enumerate(_people(300)):
        indexed.save(record, primary_key=f"p{i:04}")
        plain.save(record, primary_key=f"p{i:04}")
    q = indexed.query().where(city="c3").order_by("-age")[:10]
    assert "index (city, -age): city == 'c3' (in order)" in q.explain()
    assert _pks(q) == _pks(plain.query().where(city="c3").order_by("-age")[:10])
    # The same index serves other slices and a descending pk tiebreak it cannot order.
    builds: list[Callable[[Storage], Any]] = [
        lambda s: s.query().where(city="c1").order_by("-age")[7:19],
        lambda s: s.query().where(city="c1", age__gte=20).order_by("-age"),
        lambda s: s.query().where(city="c1").order_by("-age", "-pk"),
        lambda s: s.query().where(city="c2").order_by("age"),
        lambda s: s.query().where(email="e17"),
        lambda s: s.query().where(email="nobody"),
    ]
    for build in builds:
        assert _pks(build(indexed)) == _pks(build(plain))
        assert build(indexed).count() == build(plain).count()
    assert "index (email)" in indexed.query().where(email="e17").explain()
    assert "then sort" in indexed.query().where(city="c1").order_by("age").explain()


def test_the_index_follows_every_write() -> None:
    storage = _storage()
    storage.create_index(("city", "-age"))
    storage.save({"city": "a", "age": 1}, primary_key="x")
    storage.save({"city": "a", "age": 2}, primary_key="y")
    by_age = storage.query().order_by("-age")
    assert _pks(by_age.where(city="a")) == ["y", "x"]
    storage.save({"city": "b", "age": 3}, primary_key="y")  # moves to another group
    assert _pks(by_age.where(city="a")) == ["x"]
    assert _pks(by_age.where(city="b")) == ["y"]
    storage.update("x", age=5, city="b")
    assert _pks(by_age.where(city="b")) == ["x", "y"]
    storage.delete("x")
    assert _pks(by_age.where(city="b")) == ["y"]
    storage.query().where(city="b").delete()
    assert storage.query().where(city="b").count() == 0
    storage.save({"city": "b"}, primary_key="z")  # no age: last when descending
    storage.save({"city": "b", "age": 0}, primary_key="w")
    assert _pks(by_age.where(city="b")) == ["w", "z"]
    storage.clear()
    assert storage.query().where(city="b").count() == 0


def test_equality_keeps_the_contracts_kinds() -> None:
    indexed, plain = _storage(), _storage()
    indexed.create_index("v")
    values = [1, 1.0, True, "1", [1], [1.0], {"a": 1}, {"a": 1.0}, 2**53, float(2**53), False, 0]
    for i, v in enumerate(values):
        for s in (indexed, plain):
            s.save({"v": v}, primary_key=f"k{i:02}")
    for v in values:
        assert _pks(indexed.query().where(v=v)) == _pks(plain.query().where(v=v)), v
        assert indexed.query().where(v=v).count() == plain.query().where(v=v).count(), v


def test_transactions_keep_their_writes_apart_until_commit() -> None:
    storage = _storage()
    storage.create_index("city")
    storage.save({"city": "a"}, primary_key="1")
    seen: list[int] = []
    with storage.transaction():
        storage.save({"city": "a"}, primary_key="2")
        storage.delete("1")
        # This thread sees its writes; another thread sees the committed records.
        assert _pks(storage.query().where(city="a")) == ["2"]
        thread = threading.Thread(
            target=lambda: seen.append(storage.query().where(city="a").count())
        )
        thread.start()
        thread.join()
    assert seen == [1]
    assert _pks(storage.query().where(city="a")) == ["2"]
    with pytest.raises(RuntimeError), storage.transaction():
        storage.save({"city": "a"}, primary_key="3")
        storage.clear()
        assert len(storage) == 0
        raise RuntimeError("roll back")
    assert _pks(storage.query().where(city="a")) == ["2"]
    with storage.transaction():
        storage.clear()
        storage.save({"city": "a"}, primary_key="4")
    assert _pks(storage.query().where(city="a")) == ["4"]
    assert list(storage) == ["4"]


def test_named_storages_share_records_and_indexes() -> None:
    name = f"shared-{next(_names)}"
    one, two = _storage(name), _storage(name)
    one.create_index("city")
    two.save({"city": "a"}, primary_key="k")
    assert "index (city)" in one.query().where(city="a").explain()
    assert _pks(one.query().where(city="a")) == ["k"]


class _Person(Document):
    city: str
    age: int

    class Meta:
        indexes = [("city", "-age")]


def test_meta_indexes_are_built_on_first_save() -> None:
    storage = _storage()
    _Person(city="a", age=3).save(storage)
    _Person(city="a", age=9).save(storage)
    q = _Person.objects(storage).where(city="a").order_by("-age")
    assert [p.age for p in q] == [9, 3]
    assert "(in order)" in storage.query().where(city="a").order_by("-age").explain()


# --------------------------------------------------------------- streaming


@pytest.mark.parametrize("in_pk_order", [True, False])
@pytest.mark.parametrize(
    "where",
    [{}, {"tag": "x"}, {"tag__startswith": "x"}],
    ids=["every record", "str equality (inline)", "another lookup (filter)"],
)
def test_iterating_while_writing_visits_every_record_once(
    in_pk_order: bool, where: dict[str, Any]
) -> None:
    storage = _storage()
    storage.save_many({"i": i, "tag": "x"} for i in range(2500))
    storage.save_many({"i": i, "tag": "y"} for i in range(500))  # never a match
    if not in_pk_order:
        storage.save({"i": -1, "tag": "x"}, primary_key="0")  # before every generated pk
    expected = sorted(_pks(storage.query().where(tag="x")))
    for order in ("pk", "-pk"):
        seen = []
        for doc in storage.query().where(**where).order_by(order):
            assert doc.pk is not None
            seen.append(doc.pk)
            if doc["tag"] == "x":
                storage.delete(doc.pk)
                # Recreated: moves to the end of the dict, whose size changed meanwhile.
                storage.save({"i": "again", "tag": "x"}, primary_key=doc.pk)
        if where:
            assert seen == (expected if order == "pk" else expected[::-1])
        else:
            assert [pk for pk in seen if pk in expected] == (
                expected if order == "pk" else expected[::-1]
            )
            assert seen == sorted(seen, reverse=order == "-pk")
    assert sorted(_pks(storage.query().where(tag="x"))) == expected


def test_a_query_in_pk_order_streams_without_a_list_of_its_matches() -> None:
    storage = _storage()
    storage.save_many({"i": i, "odd": i % 2} for i in range(60_000))
    storage.query().count()  # the pk list is made before measuring
    tracemalloc.start()
    try:
        seen = sum(1 for _ in storage.query().where(odd=1))
        seen += sum(1 for _ in storage.query().order_by("-pk")[:40_000])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == 70_000
    # A list of 30,000 (pk, record) pairs alone would take about 2.4 MB.
    assert peak < 500_000, peak


def test_the_scan_is_the_reference_scan() -> None:
    """The specialised tests of common lookups decide as the contract does, kinds included."""
    storage = _storage()
    records = [
        *_people(200),
        {"name": 5},
        {"name": "5"},
        {"age": True},
        {"age": 30.0},
        {"age": "30"},
        {"age": None},
        {"age": [40]},
        {"age": 2**60},
        {"age": -0.5},
    ]
    by_pk = {f"k{i:03}": record for i, record in enumerate(records)}
    for pk, record in by_pk.items():
        storage.save(record, primary_key=pk)
    for cond in (
        {"name": "n5"},
        {"name": 5},
        {"age": 30},
        {"age__gt": 25},
        {"age__lte": 25.5},
        {"age__gte": 30},
        {"age__lt": 18.5},
        {"age__gt": 2**59},
        {"name__gt": "n5"},
        {"name__gt": "n5", "age__lt": 24},
    ):
        expected = oracle.run(by_pk, {"where": [("lookup", k, v) for k, v in cond.items()]})
        assert _pks(storage.query().where(**cond)) == expected, cond
        assert storage.query().where(**cond).count() == len(expected), cond


def test_indexes_stay_exact_under_threads_writing_and_querying() -> None:
    storage, plain = _storage(), _storage()
    storage.create_index(("city", "-age"))

    def work(t: int) -> None:
        for i in range(300):
            record = {"city": f"c{i % 3}", "age": (i * 7 + t) % 13}
            storage.save(record, primary_key=f"t{t}-{i:03}")
            plain.save(record, primary_key=f"t{t}-{i:03}")
            list(storage.query().where(city=f"c{i % 3}").order_by("-age")[:5])
            if i % 7 == 0:
                storage.delete(f"t{t}-{i // 2:03}")
                plain.delete(f"t{t}-{i // 2:03}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for city in ("c0", "c1", "c2"):
        q = storage.query().where(city=city).order_by("-age")
        assert _pks(q) == _pks(plain.query().where(city=city).order_by("-age"))

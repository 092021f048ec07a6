"""The conformance suite every backend runs (the contract: docs/guide.md, docs/queries.md).

A backend runs the whole suite by subclassing :class:`StorageTests` and
providing one fixture, ``storage_factory``: a callable that opens a new storage
on the same database each time it is called (empty when the test starts)::

    class TestMyBackend(StorageTests):
        @pytest.fixture
        def storage_factory(self, tmp_path):
            return lambda: pymodels.get_storage({"backend": "mine", "path": str(tmp_path / "db")})

Tests are never gated by backend name. Lookups, ordering, slicing and round
trips are never gated at all; storage capabilities (transactions, unique
indexes, ...) are, with :func:`requires`, which skips with the reason.
The differential tests compare each backend with :mod:`pymodels.testing.oracle`,
an evaluator that shares no code with the library.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import math
import multiprocessing
import os
import random
import resource
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pymodels import (
    BulkWriteError,
    ConflictError,
    Document,
    DoesNotExist,
    Field,
    IntegrityError,
    InvalidQuery,
    LockTimeout,
    NotSupported,
    PyModelsError,
    Q,
    ValidationError,
    get_storage,
    spill,
)
from pymodels.changes import apply_changes, parse_changes
from pymodels.storage import BaseStorage
from pymodels.values import MAX_DEPTH

from . import oracle
from . import strategies as pst

__all__ = [
    "StorageTests",
    "check_query_case",
    "identical",
    "reopening_settings",
    "requires",
    "run_in_threads",
    "stored_form",
]

F = TypeVar("F", bound=Callable[..., Any])
Factory = Callable[[], BaseStorage]

UTC = dt.UTC

# The property tests reuse the test's storage fixture (cleared per example), and
# every StorageTests subclass runs the same test function on its own backend.
_SHARED_FIXTURE = [HealthCheck.function_scoped_fixture, HealthCheck.differing_executors]


def requires(*flags: str) -> Callable[[F], F]:
    """Skip the test (with the reason) unless the storage's features have these flags."""

    def mark(fn: F) -> F:
        fn.__pymodels_requires__ = flags  # type: ignore[attr-defined]
        return fn

    return mark


# -------------------------------------------------------------- exact equality


def stored_form(value: Any) -> Any:
    """What a value reads back as: aware datetimes in UTC, ``None`` dict entries gone."""
    if isinstance(value, dict):
        return {k: stored_form(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [stored_form(v) for v in value]
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    return value


def identical(a: Any, b: Any) -> bool:
    """Equal with the same types at every depth (``1 != 1.0``, ``Decimal("2.5") != "2.50"``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return bool(a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, Decimal):
        return bool(a.as_tuple() == b.as_tuple())
    if isinstance(a, dt.datetime):
        return bool(a == b and a.utcoffset() == b.utcoffset())
    return bool(a == b)


# -------------------------------------------------------------- documents used


class Country(Document):
    name: str
    code: str = Field(min_length=2, max_length=2)


class Person(Document):
    first_name: str
    last_name: str = ""
    age: int | None = None
    birth_date: dt.date | None = None
    birth_place: Country | None = None
    tags: list[str] = []

    class Meta:
        must_have = {"first_name__exists": True}
        indexes = ["last_name", ("tags", "-birth_date")]


class Employee(Person):
    company: str

    class Meta:
        must_not_have = {"retired": True}


class Node(Document):
    label: str
    next: Node | None = None
    children: list[Node] = []


class Versioned(Document):
    title: str

    class Meta:
        version_field = "v"


class Profile(Document):
    nick: str
    address: dict[str, Any] = {}


class Item(Document):
    sku: str
    qty: int = 0
    price: float | None = None

    class Meta:
        indexes = ["sku"]


class Member(Document):
    email: str
    name: str = ""


class Account(Member):
    """A member whose email is unique (savable only where unique indexes are)."""

    class Meta:
        indexes = [{"fields": "email", "unique": True}]


EVERY_KIND: dict[str, Any] = {
    "s": "héllo wörld ✓ $%_*.^'\"",
    "i": -(2**63),
    "j": 2**63 - 1,
    "f": 0.1,
    "big": 1e16,
    "whole": 3.0,
    "neg0": -0.0,
    "t": True,
    "fa": False,
    "d": Decimal("2.50"),
    "dneg": Decimal("-1E-30"),
    "b": b"\x00\xff bytes",
    "date": dt.date(1999, 12, 31),
    "naive": dt.datetime(2020, 2, 29, 23, 59, 59, 999999),
    "aware": dt.datetime(2021, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    "list": [1, 1.0, "1", [True], {"k": None, "z": b""}],
    "dict": {"n": {"m": [Decimal("0.000")]}, "e": {}},
    "empty_s": "",
    "empty_l": [],
}


class StorageTests:
    """Subclass and provide ``storage_factory`` to run the conformance suite."""

    # ----------------------------------------------------------- fixtures

    @pytest.fixture
    def storage_factory(self) -> Factory:
        """Override: a callable opening a new storage on one (initially empty) database."""
        raise NotImplementedError("StorageTests subclasses must provide storage_factory")

    @pytest.fixture
    def storage(self, storage_factory: Factory) -> Iterator[BaseStorage]:
        s = storage_factory()
        s.clear()
        try:
            yield s
        finally:
            s.close()

    @pytest.fixture(autouse=True)
    def _capabilities(self, request: pytest.FixtureRequest) -> None:
        flags = getattr(request.function, "__pymodels_requires__", ())
        if not flags:
            return
        storage = request.getfixturevalue("storage")
        missing = [f for f in flags if not getattr(storage.features, f)]
        if missing:
            pytest.skip(f"{storage.backend} lacks {', '.join(missing)}")

    # ============================================================ records

    def test_save_returns_str_pk_and_get_round_trips_every_kind(self, storage: BaseStorage) -> None:
        pk = storage.save(EVERY_KIND)
        assert isinstance(pk, str) and pk
        loaded = dict(storage.get(None, pk))
        assert identical(loaded, stored_form(EVERY_KIND)), loaded

    def test_reopened_storage_reads_the_same(self, storage_factory: Factory) -> None:
        first = storage_factory()
        first.clear()
        pk = first.save(EVERY_KIND)
        first.close()
        with storage_factory() as again:
            assert identical(dict(again.get(None, pk)), stored_form(EVERY_KIND))
            assert len(again) == 1

    @requires("persistent")
    def test_read_only_reads_and_refuses_every_write(self, storage: BaseStorage) -> None:
        storage.save({"a": 1}, primary_key="k")
        settings = {**reopening_settings(storage), "read_only": True}
        storage.close()  # some engines admit one writer per file, even in one process
        with get_storage(settings) as ro:
            assert ro.read_only
            doc = ro.get(None, "k")
            assert dict(doc) == {"a": 1} and len(ro) == 1
            assert [d.pk for d in ro.query().where(a=1)] == ["k"]
            writes: dict[str, Callable[[], object]] = {
                "save": lambda: ro.save({"a": 2}, primary_key="k"),
                "insert": lambda: ro.insert({"a": 2}),
                "update": lambda: ro.update("k", a=2),
                "save_many": lambda: ro.save_many([{"a": 2}]),
                "delete": lambda: ro.delete("k"),
                "clear": ro.clear,
                "create_index": lambda: ro.create_index("a"),
                "query.delete": lambda: ro.query().where(a=1).delete(),
                "query.update": lambda: ro.query().update(a=2),
                "document.save": doc.save,
                "document.delete": doc.delete,
            }
            for name, write in writes.items():
                with pytest.raises(NotSupported, match="read-only"):
                    write()
                    pytest.fail(f"{name} wrote to a read-only storage")
            assert dict(ro.get(None, "k")) == {"a": 1} and len(ro) == 1

    def test_save_with_primary_key_replaces_the_whole_record(self, storage: BaseStorage) -> None:
        assert storage.save({"a": 1, "b": 2}, primary_key="k1") == "k1"
        storage.save({"a": 3}, primary_key="k1")
        assert dict(storage.get(None, "k1")) == {"a": 3}
        assert len(storage) == 1

    def test_insert_refuses_an_existing_pk(self, storage: BaseStorage) -> None:
        storage.insert({"a": 1}, primary_key="k")
        with pytest.raises(IntegrityError):
            storage.insert({"a": 2}, primary_key="k")
        assert dict(storage.get(None, "k")) == {"a": 1}
        assert isinstance(storage.insert({"a": 3}), str)

    def test_saving_after_delete_recreates(self, storage: BaseStorage) -> None:
        storage.save({"a": 1}, primary_key="k")
        storage.delete("k")
        assert "k" not in storage
        storage.save({"a": 2}, primary_key="k")
        assert dict(storage.get(None, "k")) == {"a": 2}

    def test_missing_records(self, storage: BaseStorage) -> None:
        with pytest.raises(DoesNotExist):
            storage.get(None, "nope")
        with pytest.raises(KeyError):  # DoesNotExist is a KeyError
            storage.get(None, "nope")
        with pytest.raises(DoesNotExist):
            storage.delete("nope")
        assert "nope" not in storage

    def test_get_many_aligns_with_pks(self, storage: BaseStorage) -> None:
        a = storage.save({"first_name": "A"})
        b = storage.save({"other": 1})
        got = storage.get_many(Person, [b, "missing", a])
        assert got[0] is None and got[1] is None
        assert got[2] is not None and got[2].first_name == "A"

    def test_len_contains_iter_and_clear(self, storage: BaseStorage) -> None:
        assert len(storage) == 0 and list(storage) == []
        pks = {storage.save({"n": i}) for i in range(5)}
        assert len(storage) == 5
        assert set(storage) == pks
        assert all(pk in storage for pk in pks)
        assert 5 not in storage  # not a str: never a pk
        storage.clear()
        assert len(storage) == 0 and list(storage) == [] and storage.query().count() == 0

    def test_library_metadata_is_outside_the_namespace(self, storage: BaseStorage) -> None:
        assert len(storage) == 0
        assert list(storage) == []
        assert list(storage.query()) == []
        storage.save({"x": 1}, primary_key="only")
        assert list(storage) == ["only"]
        assert storage.query().values("x") == [1]

    def test_none_means_absent(self, storage: BaseStorage) -> None:
        pk = storage.save({"a": None, "b": 1, "c": {"d": None, "e": 2}})
        assert dict(storage.get(None, pk)) == {"b": 1, "c": {"e": 2}}

    @pytest.mark.parametrize(
        "bad",
        [
            {"s": "nul\x00"},
            {"i": 2**63},
            {"i": -(2**63) - 1},
            {"f": float("nan")},
            {"f": float("inf")},
            {"d": Decimal("NaN")},
            {"d": Decimal("1" * 35)},
            {"t": (1, 2)},
            {"o": object()},
            {"l": [1, None]},
            {"": 1},
            {"a.b": 1},
            {"a__b": 1},
            {"_x": 1},
            {"$x": 1},
            {'q"': 1},
            {"nested": {"bad.name": 1}},
            {"s": "\ud800"},
        ],
    )
    def test_values_outside_the_domain_raise_and_write_nothing(
        self, storage: BaseStorage, bad: dict[str, Any]
    ) -> None:
        with pytest.raises(ValidationError):
            storage.save(bad)
        with pytest.raises(ValidationError):
            storage.save({"ok": 1, **bad}, primary_key="p")
        assert len(storage) == 0

    def test_records_nest_exactly_to_the_limit_everywhere(self, storage: BaseStorage) -> None:
        """Lists and dicts nest 100 levels (the record is level 1), on every backend."""
        at_limit = {
            "lists": _nested(MAX_DEPTH - 1, lambda v: [v]),
            "dicts": _nested(MAX_DEPTH - 1, lambda v: {"k": v}),
            "mixed": _nested(MAX_DEPTH - 1, lambda v: [v] if isinstance(v, dict) else {"k": v}),
        }
        for name, value in at_limit.items():
            storage.save({name: value, "n": 1}, primary_key=name)
        for name, value in at_limit.items():
            assert identical(dict(storage.get(None, name)), {name: value, "n": 1}), name
            assert [d.pk for d in storage.query().where(**{name: value})] == [name]
        for deeper in (_nested(MAX_DEPTH, lambda v: [v]), _nested(MAX_DEPTH, lambda v: {"k": v})):
            with pytest.raises(ValidationError) as info:
                storage.save({"deep": deeper}, primary_key="deep")
            assert info.value.field is not None and info.value.field.startswith("deep")
            assert "100 levels" in str(info.value)
        # a__b's value sits in dict a (level 2): 98 lists fit, 99 do not.
        storage.update("lists", a__b=_nested(MAX_DEPTH - 2, lambda v: [v]))
        with pytest.raises(ValidationError, match="100 levels"):
            storage.update("lists", a__b=_nested(MAX_DEPTH - 1, lambda v: [v]))
        assert identical(
            storage.get(None, "lists")["a"], {"b": _nested(MAX_DEPTH - 2, lambda v: [v])}
        )
        assert "deep" not in storage and len(storage) == 3

    @pytest.mark.parametrize("pk", ["", "nul\x00", 5, b"k"])
    def test_bad_primary_keys(self, storage: BaseStorage, pk: Any) -> None:
        with pytest.raises(ValidationError):
            storage.save({"a": 1}, primary_key=pk)
        assert len(storage) == 0

    def test_generated_pks_are_unique_and_time_ordered(self, storage: BaseStorage) -> None:
        pks = [storage.save({"n": i}) for i in range(50)]
        assert len(set(pks)) == 50
        assert pks == sorted(pks)
        assert [d["n"] for d in storage.query()] == list(range(50))

    def test_update_set_unset_inc(self, storage: BaseStorage) -> None:
        pk = storage.save({"a": 1, "b": "x", "n": {"c": 1}})
        assert storage.update(pk, a__inc=2, b__unset=True, n__c=5, n__d=[1], z=1.5) == 1
        assert identical(dict(storage.get(None, pk)), {"a": 3, "n": {"c": 5, "d": [1]}, "z": 1.5})
        assert storage.update(pk, a__inc=0.5) == 1
        assert identical(storage.get(None, pk)["a"], 3.5)
        with pytest.raises(DoesNotExist):
            storage.update("missing", a=1)  # as delete("missing") does
        assert "missing" not in storage
        assert storage.update(pk, fresh__inc=4) == 1
        assert storage.get(None, pk)["fresh"] == 4

    def test_update_rejects_bad_changes_and_changes_nothing(self, storage: BaseStorage) -> None:
        pk = storage.save({"a": "text", "n": 1})
        with pytest.raises(ValidationError):
            storage.update(pk, a__inc=1)
        with pytest.raises(ValidationError):
            storage.update(pk, n__inc=True)
        with pytest.raises(ValidationError):
            storage.update(pk, bad_value=float("nan"))
        with pytest.raises(ValidationError):
            storage.update(pk, **{"$x": 1})
        assert dict(storage.get(None, pk)) == {"a": "text", "n": 1}
        # Sums outside the domain: an engine's own arithmetic would give inf or wrap.
        edges = {"f": 1e308, "g": -1e308, "i": 2**63 - 1, "j": -(2**63)}
        big = storage.save(edges)
        with pytest.raises(ValidationError, match=f"record {big!r}: f would overflow a float"):
            storage.update(big, f__inc=1e308)
        with pytest.raises(ValidationError, match="g would overflow a float"):
            storage.update(big, g__inc=-1e308)
        with pytest.raises(ValidationError, match="i would leave the int64 range"):
            storage.update(big, i__inc=1)
        with pytest.raises(ValidationError, match="j would leave the int64 range"):
            storage.update(big, j__inc=-1)
        assert identical(dict(storage.get(None, big)), edges)

    def test_a_query_update_one_record_refuses_writes_no_record(self, storage: BaseStorage) -> None:
        # On engines without transactions too: every change is computed before any write.
        for i, n in enumerate([1, 2, "two", 4]):
            storage.save({"n": n}, primary_key=f"k{i}")
        with pytest.raises(ValidationError, match="record 'k2': n is not a number") as info:
            storage.query().update(n__inc=1)
        assert (info.value.pk, info.value.field) == ("k2", "n")
        assert [storage.get(None, f"k{i}")["n"] for i in range(4)] == [1, 2, "two", 4]

    def test_query_update_honours_slice(self, storage: BaseStorage) -> None:
        for i in range(6):
            storage.save({"n": i, "flag": False}, primary_key=f"k{i}")
        q = storage.query().where(n__gte=1).order_by("-n")
        assert q[:2].update(flag=True) == 2
        assert sorted(storage.query().where(flag=True).values("n")) == [4, 5]
        assert q.update(n__inc=10) == 5
        assert sorted(storage.query().values("n")) == [0, 11, 12, 13, 14, 15]

    # --------------------------------------------------------- save_many

    def test_save_many_returns_pks_in_order(self, storage: BaseStorage) -> None:
        pks = storage.save_many(({"n": i} for i in range(25)), batch_size=10)
        assert len(pks) == 25 and len(set(pks)) == 25
        assert [storage.get(None, pk)["n"] for pk in pks] == list(range(25))

    def test_save_many_failure_reports_index_and_written(self, storage: BaseStorage) -> None:
        items: list[Any] = [{"n": i} for i in range(7)]
        items[5] = {"n": float("nan")}
        with pytest.raises(BulkWriteError) as info:
            storage.save_many(items, batch_size=3)
        err = info.value
        assert err.index == 5
        assert isinstance(err.__cause__, ValidationError)
        stored = sorted(d["n"] for d in storage.query())
        if storage.features.transactions:
            assert stored == [0, 1, 2]  # the failing batch (3, 4, 5) wrote nothing
        else:
            assert stored == [0, 1, 2, 3, 4]
        assert sorted(storage.get(None, pk)["n"] for pk in err.written_pks) == stored

    def test_generated_pk_clash_never_overwrites(
        self, storage: BaseStorage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A generated pk that exists already (astronomically rare with ULIDs) is
        # retried with a fresh one, on the bulk path and record by record.
        taken = storage.save({"n": 0})
        fresh = (f"fresh{i}" for i in range(100))
        monkeypatch.setattr(
            "pymodels.storage.new_pks", lambda count: [taken, *itertools.islice(fresh, count - 1)]
        )
        clashes = iter([taken])
        monkeypatch.setattr("pymodels.storage.new_pk", lambda: next(clashes, None) or next(fresh))
        pks = storage.save_many([{"n": 1}, {"n": 2}])
        assert taken not in pks and len(set(pks)) == 2
        assert storage.get(None, taken)["n"] == 0
        assert sorted(storage.get(None, pk)["n"] for pk in pks) == [1, 2]

    def test_save_many_documents(self, storage: BaseStorage) -> None:
        people = [
            Person(first_name=f"P{i}", birth_place=Country(name="X", code="XX")) for i in range(3)
        ]
        pks = storage.save_many(people)
        assert pks == [p.pk for p in people]
        assert Person.objects(storage).count() == 3 and Country.objects(storage).count() == 3

    # ------------------------------------------------------- transactions

    def test_transaction_without_support_raises(self, storage: BaseStorage) -> None:
        if storage.features.transactions:
            with storage.transaction():
                storage.save({"a": 1}, primary_key="t")
            assert "t" in storage
        else:
            with pytest.raises(NotSupported), storage.transaction():
                pass  # pragma: no cover - never entered

    @requires("transactions")
    def test_transaction_rolls_back_on_error(self, storage: BaseStorage) -> None:
        storage.save({"a": 0}, primary_key="keep")
        with pytest.raises(RuntimeError), storage.transaction():
            storage.save({"a": 1}, primary_key="t1")
            storage.delete("keep")
            storage.update("t1", a=2)
            raise RuntimeError("boom")
        assert "t1" not in storage
        assert dict(storage.get(None, "keep")) == {"a": 0}

    @requires("transactions", "concurrent_processes")
    def test_a_transaction_is_invisible_elsewhere_until_commit(self, storage: BaseStorage) -> None:
        with get_storage(reopening_settings(storage)) as other:
            with storage.transaction():
                storage.save({"a": 1}, primary_key="k")
                assert "k" not in other
            assert "k" in other
            with pytest.raises(ZeroDivisionError), storage.transaction():
                storage.save({"a": 2}, primary_key="k")
                1 / 0  # noqa: B018 - the point is the exception
            assert other.get(None, "k")["a"] == 1

    @requires("transactions")
    def test_nested_transactions_join_the_outer_one(self, storage: BaseStorage) -> None:
        with pytest.raises(RuntimeError), storage.transaction():
            with storage.transaction():
                storage.save({"a": 1}, primary_key="inner")
            raise RuntimeError("outer fails")
        assert "inner" not in storage

    @requires("transactions")
    def test_references_save_in_one_transaction(self, storage: BaseStorage) -> None:
        bad = Person(first_name="X", birth_place=Country(name="C", code="CC"))
        bad.birth_place["weird"] = "ok"  # type: ignore[index]
        storage.save({"x": 1}, primary_key="taken")
        with pytest.raises(IntegrityError):
            storage.insert(bad, primary_key="taken")
        assert Country.objects(storage).count() == 0

    # ------------------------------------------------------------ indexes

    def test_plain_indexes_always_succeed(self, storage: BaseStorage) -> None:
        storage.create_index("a")
        storage.create_index("a")  # idempotent
        storage.create_index("n__m")
        if storage.features.compound_indexes or not storage.features.indexes:
            storage.create_index(("a", "-b"))
        storage.ensure_indexes(Person)
        storage.ensure_indexes(Person)
        pk = storage.save({"a": 1, "b": "x", "n": {"m": [1]}})
        assert storage.query().where(a=1).values("b") == ["x"]
        assert storage.query().where(n__m=[1]).count() == 1
        storage.delete(pk)

    def test_unique_index_or_not_supported(self, storage: BaseStorage) -> None:
        if not storage.features.unique_indexes:
            with pytest.raises(NotSupported):
                storage.create_index("email", unique=True)
            return
        storage.create_index("email", unique=True)
        storage.save({"email": "a@x"}, primary_key="1")
        with pytest.raises(IntegrityError) as refused:
            storage.save({"email": "a@x"}, primary_key="2")
        # Told in words a user reads: the field, not the engine's index definition.
        assert "email" in str(refused.value) and len(str(refused.value)) < 200
        assert "2" not in storage
        storage.save({"email": 5}, primary_key="3")  # another kind never clashes with a str
        storage.save({"other": 1}, primary_key="4")
        storage.save({"other": 2}, primary_key="5")  # absent values never clash
        storage.save({"email": "a@x", "more": 1}, primary_key="1")  # same record may keep it
        storage.save({"n": 1}, primary_key="n1")
        storage.create_index("n", unique=True)
        with pytest.raises(IntegrityError):
            storage.save({"n": 1.0})  # 1 == 1.0
        storage.save({"n": True})  # True is not 1
        with pytest.raises(BulkWriteError) as info:
            storage.save_many([{"email": "b"}, {"email": "b"}])
        assert info.value.index == 1 and isinstance(info.value.__cause__, IntegrityError)
        if storage.features.transactions:
            assert storage.query().where(email="b").count() == 0  # the batch rolled back
        else:  # without transactions the records before the failing one stay (docs/guide.md)
            assert [d.pk for d in storage.query().where(email="b")] == info.value.written_pks
            assert len(info.value.written_pks) == 1

    @requires("partial_update")
    def test_partial_update_never_reads_the_record(
        self, storage: BaseStorage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        storage.save({"n": 1, "d": {"x": 1}, "f": 1.5}, primary_key="k")
        with monkeypatch.context() as m:
            m.setattr(storage, "_load", _never)
            m.setattr(storage, "_load_many", _never)
            assert storage.update("k", n__inc=2, d__y__z="new", d__x__unset=True) == 1
            assert storage.update("k", e=Decimal("1.0")) == 1
            assert storage.query().where(n__gte=3).update(n__inc=1, g=[1, 2.0]) == 1
        assert identical(
            dict(storage.get(None, "k")),
            {"n": 4, "d": {"y": {"z": "new"}}, "f": 1.5, "e": Decimal("1.0"), "g": [1, 2.0]},
        )
        # What the engine cannot do exactly takes the generic way, with the same answers.
        assert storage.update("k", f__inc=0.1) == 1
        assert storage.get(None, "k")["f"] == 1.5 + 0.1
        with pytest.raises(ValidationError):
            storage.update("k", n__x=1)  # n is not a dict
        with pytest.raises(ValidationError):
            storage.update("k", n__inc=2**63)  # leaves int64
        assert storage.get(None, "k")["n"] == 4
        with pytest.raises(DoesNotExist):
            storage.update("missing", n__inc=1)

    def test_unknown_index_kind_raises(self, storage: BaseStorage) -> None:
        with pytest.raises(NotSupported):
            storage.create_index("a", kind="no-such-kind")

    # ---------------------------------------------------------- lifecycle

    def test_close_is_idempotent_and_closed_storages_refuse(self, storage_factory: Factory) -> None:
        s = storage_factory()
        s.clear()
        pk = s.save(Person(first_name="A", birth_place=Country(name="C", code="CC")))
        person = s.get(Person, pk)
        q = s.query()
        s.close()
        s.close()
        assert s.closed
        with pytest.raises(PyModelsError):
            s.get(None, pk)
        with pytest.raises(PyModelsError):
            s.save({"a": 1})
        with pytest.raises(PyModelsError):
            list(q)
        with pytest.raises(PyModelsError):
            len(s)
        with pytest.raises(PyModelsError):
            _ = person.birth_place.name  # type: ignore[union-attr]

    def test_context_manager_closes(self, storage_factory: Factory) -> None:
        with storage_factory() as s:
            assert not s.closed
        assert s.closed

    def test_threads_when_thread_safe(self, storage: BaseStorage) -> None:
        if not storage.features.thread_safe:
            pytest.skip(f"{storage.backend} is not thread-safe (features.thread_safe)")

        def work(t: int) -> None:
            for i in range(50):
                storage.save({"t": t, "i": i}, primary_key=f"{t}-{i}")
                assert storage.get(None, f"{t}-{i}")["i"] == i
                assert storage.query().where(t=t).count() == i + 1
            if storage.features.transactions:
                with storage.transaction():
                    storage.save({"t": t, "tx": True})

        run_in_threads(work, 4)
        assert len(storage) == 4 * (51 if storage.features.transactions else 50)

    # ========================================================== documents

    def test_document_save_and_lazy_reference(self, storage: BaseStorage) -> None:
        john = Person(first_name="John", birth_place=Country(name="Finland", code="FI"))
        pk = john.save(storage)
        assert isinstance(pk, str) and john.pk == pk
        assert john.birth_place is not None and john.birth_place.pk is not None
        loaded = storage.get(Person, pk)
        assert loaded["birth_place"] == john.birth_place.pk  # the mapping view shows the pk
        assert loaded.birth_place is not None
        assert loaded.birth_place.name == "Finland"
        assert Person.object(storage, pk).first_name == "John"
        assert dict(loaded) == {
            "first_name": "John",
            "last_name": "",
            "birth_place": john.birth_place.pk,
            "tags": [],
        }

    def test_reference_to_missing_record_raises_on_access(self, storage: BaseStorage) -> None:
        storage.save({"first_name": "A", "birth_place": "gone"}, primary_key="p")
        person = storage.get(Person, "p")
        assert person.birth_place is not None and person.birth_place.pk == "gone"
        with pytest.raises(DoesNotExist):
            _ = person.birth_place.name

    def test_reference_cycles_and_lists(self, storage: BaseStorage) -> None:
        a, b, c = Node(label="a"), Node(label="b"), Node(label="c")
        a.next, b.next = b, a
        a.children = [b, c]
        pk = a.save(storage)
        assert all(n.pk for n in (a, b, c))
        loaded = storage.get(Node, pk)
        assert loaded.next is not None and loaded.next.label == "b"
        assert loaded.next.next is not None and loaded.next.next.pk == pk
        assert [n.label for n in loaded.children] == ["b", "c"]
        assert storage.query(Node).count() == 3

    def test_undeclared_fields_survive(self, storage: BaseStorage) -> None:
        storage.save(
            {"first_name": "A", "extra": {"deep": [1, 2]}, "x": Decimal("1.0")}, primary_key="p"
        )
        person = storage.get(Person, "p")
        assert person["extra"] == {"deep": [1, 2]}
        person.last_name = "B"
        person["added"] = b"new"
        person.save()
        raw = dict(storage.get(None, "p"))
        assert identical(raw["x"], Decimal("1.0"))
        assert (
            raw["extra"] == {"deep": [1, 2]} and raw["added"] == b"new" and raw["last_name"] == "B"
        )

    def test_membership(self, storage: BaseStorage) -> None:
        storage.save({"first_name": "A"}, primary_key="person")
        storage.save({"first_name": "B", "company": "X"}, primary_key="employee")
        storage.save({"first_name": "C", "company": "X", "retired": True}, primary_key="retired")
        storage.save({"company": "X"}, primary_key="nobody")
        assert [p.pk for p in Person.objects(storage)] == ["employee", "person", "retired"]
        assert [p.pk for p in Employee.objects(storage)] == ["employee"]
        with pytest.raises(DoesNotExist):
            storage.get(Employee, "retired")
        assert Employee.objects(storage).count() == 1
        assert [type(d) for d in storage.query()] == [Document] * 4

    def test_strict_loading(self, storage: BaseStorage) -> None:
        storage.save({"first_name": "A", "age": "7"}, primary_key="p")
        q = Person.objects(storage)
        assert q.count() == 1 and q.exists() and q.values("age") == ["7"]
        with pytest.raises(ValidationError) as info:
            list(q)
        assert info.value.pk == "p" and "age" in str(info.value)
        with pytest.raises(ValidationError):
            storage.get(Person, "p")
        assert q.delete() == 1

    def test_optimistic_concurrency(self, storage: BaseStorage) -> None:
        doc = Versioned(title="a")
        pk = doc.save(storage)
        assert doc["v"] == 1
        one, two = storage.get(Versioned, pk), storage.get(Versioned, pk)
        one.title = "one"
        one.save()
        two.title = "two"
        with pytest.raises(ConflictError):
            two.save()
        assert storage.get(Versioned, pk).title == "one"
        assert storage.get(Versioned, pk)["v"] == 2

    def test_get_or_create(self, storage: BaseStorage) -> None:
        doc, created = Person.get_or_create(storage, first_name="Ann", defaults={"age": 3})
        assert created and doc.age == 3 and doc.pk is not None
        again, created = Person.get_or_create(storage, first_name="Ann")
        assert not created and again.pk == doc.pk

    def test_document_delete_and_resave(self, storage: BaseStorage) -> None:
        doc = Person(first_name="A")
        pk = doc.save(storage)
        doc.delete()
        assert pk not in storage
        doc.save()
        assert storage.get(Person, pk).first_name == "A"

    def test_only_loads_some_fields_and_refuses_save(self, storage: BaseStorage) -> None:
        Person(first_name="A", last_name="B", age=3).save(storage)
        doc = Person.objects(storage).only("last_name").first()
        assert doc is not None and doc.last_name == "B"
        with pytest.raises(AttributeError):
            _ = doc.age
        with pytest.raises(PyModelsError):
            doc.save()

    def test_json_interchange(self, storage: BaseStorage) -> None:
        pk = storage.save(EVERY_KIND)
        doc = storage.get(None, pk)
        back = Document.from_json(doc.to_json())
        assert back.pk == pk
        assert identical(dict(back), stored_form(EVERY_KIND))

    def test_query_path_through_declared_field(self, storage: BaseStorage) -> None:
        with pytest.raises(InvalidQuery):
            Person.objects(storage).where(first_name__x__equals=1)
        with pytest.raises(InvalidQuery):
            Person.objects(storage).order_by("age__x")
        storage.save({"nick": "n", "address": {"city": "Oulu"}})
        assert Profile.objects(storage).where(address__city="Oulu").count() == 1

    # ============================================================ queries

    def _people(self, storage: BaseStorage) -> list[str]:
        rows: list[dict[str, Any]] = [
            {"first_name": "Ann", "last_name": "Smith", "age": 31, "tags": ["a", "b"]},
            {"first_name": "Bob", "last_name": "Smythe", "age": 25},
            {"first_name": "Cid", "last_name": "Doe", "age": 25.0, "tags": ["retired"]},
            {"first_name": "Dee", "last_name": "smith", "age": "40"},
            {"first_name": "Eve"},
        ]
        return [storage.save(r, primary_key=f"p{i}") for i, r in enumerate(rows)]

    def test_queries_are_lazy_and_immutable(self, storage_factory: Factory) -> None:
        s = storage_factory()
        s.clear()
        base = s.query()
        s.close()
        q = base.where(a=1).order_by("-a")[2:5].where  # building touches nothing
        assert callable(q)
        narrowed = base.where(a=1)
        assert narrowed is not base and base.condition != narrowed.condition
        with pytest.raises(PyModelsError):
            list(narrowed)

    def test_where_where_not_and_q(self, storage: BaseStorage) -> None:
        self._people(storage)
        q = Person.objects(storage)

        def pks(query: Any) -> list[str | None]:
            return [d.pk for d in query.only("first_name")]

        assert pks(q.where(last_name__startswith="Sm")) == ["p0", "p1"]
        assert pks(q.where_not(age__gt=26)) == ["p1", "p2", "p3", "p4"]
        assert pks(q.where(Q(first_name="Ann") | Q(last_name="Doe"))) == ["p0", "p2"]
        assert pks(q.where(~~Q(age=25))) == ["p1", "p2"]
        assert pks(q.where_not(tags__contains="retired")) == ["p0", "p1", "p3", "p4"]
        assert pks(q.where(last_name__iequals="SMITH")) == ["p0", "p3"]

    def test_order_by_and_slices(self, storage: BaseStorage) -> None:
        self._people(storage)
        q = storage.query().order_by("-age", "first_name")
        names = [d["first_name"] for d in q]
        # "40" is a str: str sorts after numbers; absent sorts last descending.
        assert names == ["Dee", "Ann", "Bob", "Cid", "Eve"]
        assert [d["first_name"] for d in q[1:3]] == ["Ann", "Bob"]
        assert [d["first_name"] for d in q[1:][1:2]] == ["Bob"]
        assert q[4]["first_name"] == "Eve"
        with pytest.raises(IndexError):
            q[5]
        with pytest.raises(TypeError):
            len(q)  # type: ignore[arg-type]  # a query has no len(): count() asks the engine
        assert [d.pk for d in storage.query().order_by("-pk")[:2]] == ["p4", "p3"]

    def test_bad_slices_raise_invalid_query_and_int64_bounds_agree(
        self, storage: BaseStorage
    ) -> None:
        self._people(storage)
        q = storage.query().order_by("first_name")
        bad: dict[str, Callable[[], object]] = {
            "q[-1]": lambda: q[-1],
            "q[::2]": lambda: q[::2],
            "q[-3:]": lambda: q[-3:],
            "q[:-1]": lambda: q[:-1],
            "q[:2**63]": lambda: q[: 2**63],
            "q[2**63:]": lambda: q[2**63 :],
            "q[2**63]": lambda: q[2**63],
            "q[2**62:][2**62:]": lambda: q[2**62 :][2**62 :],
        }
        for name, make in bad.items():
            with pytest.raises(InvalidQuery):
                make()
                pytest.fail(f"{name} did not raise InvalidQuery")
        # At the int64 edge itself every backend answers as the reference does.
        top = 2**63 - 1
        assert [d["first_name"] for d in q[:top]] == ["Ann", "Bob", "Cid", "Dee", "Eve"]
        assert [d["first_name"] for d in q[3:][:top]] == ["Dee", "Eve"]
        assert q[2:][:top].count() == 3 and q[top:].count() == 0 and not q[top:].exists()
        assert q[top:].values("age") == [] and q[top:].delete() == 0
        with pytest.raises(IndexError):
            q[top]
        assert len(storage) == 5

    def test_count_exists_first_values_delete_honour_slices(self, storage: BaseStorage) -> None:
        self._people(storage)
        q = storage.query().order_by("first_name")
        assert q.count() == 5 and q[1:3].count() == 2 and q[4:].count() == 1 and q[9:].count() == 0
        assert q.exists() and bool(q) and not q.where(first_name="Zed").exists()
        assert q.first() is not None and q.first()["first_name"] == "Ann"  # type: ignore[index]
        assert q.where(first_name="Zed").first() is None
        assert q.values("age") == [31, 25, "40"]  # 25.0 equals 25: first kept
        assert q[2:].values("last_name") == ["Doe", "smith"]
        assert q[1:3].delete() == 2
        assert [d["first_name"] for d in q] == ["Ann", "Dee", "Eve"]
        assert q.where(first_name="Ann").delete() == 1
        assert q.delete() == 2 and len(storage) == 0

    def test_errors_come_at_where(self, storage: BaseStorage) -> None:
        q = storage.query()
        for bad in (
            {"a__gtee": 1},
            {"a__gt": [1]},
            {"a__gt": True},
            {"a__startswith": 1},
            {"a__matches": "("},
            {"a__in": 1},
            {"a__between": (1, "z")},
            {"a__exists": 1},
            {"a__year": "2020"},
            {"a": None},
        ):
            with pytest.raises(InvalidQuery):
                q.where(**bad)
        assert q.where(id=1).count() == 0  # a plain name is never a typo

    def test_values_are_data_not_syntax(self, storage: BaseStorage) -> None:
        texts = ["100%", "a_b", "a*b", "$set", "it's", 'say "hi"', "x.y", "^a", "(a|b)", "a\\b"]
        for i, t in enumerate(texts):
            storage.save({"t": t, "w": t + " tail"}, primary_key=f"k{i}")
        for t in texts:
            for op in ("equals", "startswith", "endswith", "contains", "icontains", "iequals"):
                got = storage.query().where(**{f"t__{op}": t}).values("t")
                assert got == [t], (op, t, got)
        # like compares words (\w+), so punctuation separates them and "_" joins them.
        assert sorted(storage.query().where(t__like="a b").values("t")) == ["(a|b)", "a*b", "a\\b"]

    def test_set_operations(self, storage: BaseStorage) -> None:
        self._people(storage)
        q = storage.query()
        a, b = q.where(age__gte=25), q.where(last_name__startswith="Sm")
        assert sorted(d.pk for d in (a & b)) == ["p0", "p1"]  # type: ignore[type-var]
        assert sorted(d.pk for d in (a | b)) == ["p0", "p1", "p2"]  # type: ignore[type-var]
        assert sorted(d.pk for d in (a - b)) == ["p2"]  # type: ignore[type-var]
        with pytest.raises(InvalidQuery):
            _ = a[:1] & b

    def test_after_pages_through_the_order(self, storage: BaseStorage) -> None:
        for i in range(23):
            storage.save({"n": i % 5, "s": str(i)}, primary_key=f"k{i:02}")
        q = storage.query().order_by("-n", "s")
        expected = [d.pk for d in q]
        seen: list[str | None] = []
        page = list(q[:5])
        while page:
            seen.extend(d.pk for d in page)
            page = list(q.after(page[-1])[:5])
        assert seen == expected
        assert [d.pk for d in q.after(expected[10])] == expected[11:]  # type: ignore[arg-type]

    def test_repr_and_explain(self, storage: BaseStorage) -> None:
        for i in range(12):
            storage.save({"n": i}, primary_key=f"k{i:02}")
        text = repr(storage.query())
        assert "k09" in text and "k10" not in text and "2 more" in text
        plan = storage.query().where(n__gt=3).order_by("n").explain()
        assert isinstance(plan, str) and "n" in plan

    def test_streaming_many_records(self, storage: BaseStorage) -> None:
        storage.save_many(({"n": i} for i in range(2500)), batch_size=1000)
        total = 0
        for total, doc in enumerate(storage.query().order_by("-n"), 1):
            assert doc["n"] == 2500 - total
        assert total == 2500
        assert storage.query().where(n__gte=2000).count() == 500

    # ========================================================= concurrency

    @requires("fork_safe")
    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
    def test_storage_opened_before_fork_works_in_the_child(self, storage: BaseStorage) -> None:
        storage.save({"who": "parent"}, primary_key="p")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                storage.save({"who": "child"}, primary_key="c")
                code = 0 if storage.get(None, "p")["who"] == "parent" else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        if storage.features.concurrent_processes:
            assert storage.get(None, "c")["who"] == "child"
        # The child left the parent's connections and locks alone.
        storage.save({"who": "parent again"}, primary_key="p2")
        assert storage.get(None, "p2")["who"] == "parent again"

    @requires("concurrent_processes")
    def test_four_processes_saving_at_once(self, storage: BaseStorage) -> None:
        settings = reopening_settings(storage)
        _in_processes(_save_many_times, [(settings, w, 2000) for w in range(4)])
        assert len(storage) == 8000
        for w in range(4):
            assert storage.query().where(worker=w).count() == 2000

    @requires("concurrent_processes", "compare_and_swap_across_processes")
    def test_compare_and_swap_across_processes(self, storage: BaseStorage) -> None:
        storage.save({"n": 0, "v": 1}, primary_key="counter")
        settings = reopening_settings(storage)
        _in_processes(_increment, [(settings, 50) for _ in range(4)])
        assert storage.get(None, "counter")["n"] == 200

    # ========================================================= reliability

    @requires("persistent")
    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
    def test_sigkill_at_random_points_loses_no_acknowledged_write(
        self, storage: BaseStorage
    ) -> None:
        """Kill a writing child many times; every write it acknowledged is there after.

        The child saves one by one, with ``save_many``, in transactions (where
        there are), clears and creates an index, telling the parent through a
        pipe when each begins and when it returned. A ``crash_safe`` backend
        must then hold every acknowledged write, nothing the child never began,
        a transaction whole or not at all, and indexes that answer what a scan
        answers. Any other persistent backend must at least answer with a typed
        error, never a raw one. ``PYMODELS_CRASH_KILLS`` (or the hypothesis
        profile: 50 kills under ``ci``, 500 under ``soak``) sets how many kills.
        """
        settings = reopening_settings(storage)
        storage.close()  # one writer per file on some engines: the child is it
        crash_safe = storage.features.crash_safe
        rng = random.Random(0x5EED)
        model: dict[str, dict[str, Any]] = {}
        for kill in range(_kills()):
            events = _run_and_kill(settings, seed=kill, rng=rng)
            inflight = _apply_events(model, events)
            if storage.features.networked:
                _until_quiet(settings)
            try:
                with get_storage(settings) as s:
                    stored = _all_records(s)
                    if crash_safe:
                        _check_after_crash(s, model, stored, inflight)
            except PyModelsError as e:
                if crash_safe:
                    raise AssertionError(f"kill {kill}: a crash-safe store failed to reopen") from e
                return  # typed and explained (CorruptData says how to recover): all it owes
            if not crash_safe:
                return  # the file opened and read back: nothing further is promised
            model = stored

    @requires("persistent")
    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
    def test_a_full_disk_raises_typed_errors_and_keeps_the_store(
        self, storage: BaseStorage
    ) -> None:
        """Writes on a full disk (RLIMIT_FSIZE in a child) raise typed errors.

        A ``disk_full_safe`` backend then holds exactly what was there before
        plus every acknowledged write; others must still answer with typed errors.
        """
        if storage.features.networked:
            pytest.skip("RLIMIT_FSIZE limits this process's files; a server writes its own")
        base = {f"base{i}": {"n": i, "pad": "b" * 500} for i in range(20)}
        for pk, record in base.items():
            storage.save(record, primary_key=pk)
        settings = reopening_settings(storage)
        storage.close()
        events = _in_forked_child(_fill_the_disk, settings)
        untyped = [e for e in events if e.get("error") and not e.get("typed")]
        assert not untyped, f"untyped errors on a full disk: {untyped}"
        assert any(e.get("error") for e in events), "the file never reached the size limit"
        acked = {e["pk"]: e["record"] for e in events if "pk" in e}
        try:
            with get_storage(settings) as s:
                stored = _all_records(s)
        except PyModelsError:
            if storage.features.disk_full_safe:
                raise
            return
        if storage.features.disk_full_safe:
            assert stored == {**base, **acked}

    @requires("persistent")
    def test_a_second_storage_or_process_on_the_file_loses_no_acknowledged_write(
        self, storage: BaseStorage
    ) -> None:
        """A second opener either shares the file safely or is refused with LockTimeout."""
        settings = reopening_settings(storage)
        storage.close()
        acked: dict[str, dict[str, Any]] = {}
        with get_storage(settings) as first:
            try:
                second: BaseStorage | None = get_storage(settings)
            except LockTimeout:
                second = None  # one writer per file: refused, and said so
            for i in range(100):
                for name, s in (("first", first), ("second", second)):
                    if s is not None:
                        pk = s.save({"by": name, "i": i})
                        acked[pk] = {"by": name, "i": i}
            if second is not None:
                second.close()
            # Another process, while this one holds the file open.
            events = _in_forked_child(_save_a_few, settings) if hasattr(os, "fork") else []
            for e in events:
                assert e.get("typed", True), f"untyped error in the other process: {e}"
            acked.update({e["pk"]: e["record"] for e in events if "pk" in e})
            first.save({"by": "first", "i": -1}, primary_key="last")
            acked["last"] = {"by": "first", "i": -1}
        with get_storage(settings) as again:
            stored = _all_records(again)
        assert stored == acked

    # ================================================ typed writes and lookups

    @requires("indexes")
    @pytest.mark.parametrize(
        "writer", ["save", "insert", "save_many", "save_many_mappings", "update", "import"]
    )
    def test_meta_indexes_exist_before_the_first_query(
        self, storage_factory: Factory, writer: str
    ) -> None:
        """Whatever wrote the records, a class's query finds its Meta.indexes made."""
        s = storage_factory()
        s.clear()
        try:
            if writer == "save":
                Item(sku="a").save(s)
            elif writer == "insert":
                s.insert({"sku": "a"})
            elif writer == "save_many":
                s.save_many([Item(sku=c) for c in "abcde"], batch_size=2)
                # Documents saved in bulk have their class's indexes before any query.
                assert s.has_index("sku")
            elif writer == "save_many_mappings":
                s.save_many([{"sku": c} for c in "abcde"])
            elif writer == "update":
                pk = s.save({"sku": "old"})
                s.update(pk, sku="a")
            elif writer == "import":
                # What an import or a copy does: mappings under given pks, in a
                # transaction where there are transactions, from another storage object.
                with s.transaction() if s.features.transactions else contextlib.nullcontext():
                    s.save({"sku": "a"}, primary_key="imported")
            with storage_factory() as reader:
                query = Item.objects(reader).where(sku="a")
                assert reader.has_index("sku"), "the query was made before the index"
                assert query.count() == 1
                assert not reader.has_index("qty")
        finally:
            s.close()

    def test_a_class_whose_indexes_cannot_be_made_is_still_queried(
        self, storage: BaseStorage
    ) -> None:
        storage.save({"email": "a@x"})
        if storage.features.unique_indexes:
            assert Account.objects(storage).count() == 1
            return
        with pytest.warns(UserWarning, match="indexes of Account not made"):
            query = Account.objects(storage)
        assert query.where(email="a@x").count() == 1
        with pytest.raises(NotSupported):
            Account(email="b@x").save(storage)  # the save reports it

    @requires("indexes", "transactions")
    def test_meta_indexes_of_a_save_inside_a_transaction(self, storage: BaseStorage) -> None:
        with storage.transaction():
            Item(sku="a").save(storage)
        Item.objects(storage)
        assert storage.has_index("sku")

    def test_typed_update_validates_every_change_before_writing(self, storage: BaseStorage) -> None:
        pk = Person(first_name="Ann", age=3, tags=["a"]).save(storage)
        before = dict(storage.get(None, pk))
        people = Person.objects(storage)
        bad: list[tuple[dict[str, Any], str]] = [
            ({"age": "two thousand"}, "age"),
            ({"age": 1.5}, "age"),
            ({"age": True}, "age"),
            ({"tags": ["x", 1]}, "tags"),
            ({"first_name__unset": True}, "first_name"),  # required: records would leave Person
            ({"first_name": None}, "first_name"),
            ({"last_name__inc": 1}, "last_name"),  # inc needs a number field
            ({"age__inc": 0.5}, "age"),  # an int field stays an int
            ({"age__x": 1}, "age"),  # an int holds no keys
            ({"agee": 4}, "agee"),  # one edit from a declared field
            ({"age": 4, "first_name": 5}, "first_name"),  # the good change is not written either
            ({"birth_place": 7}, "birth_place"),
        ]
        for changes, field in bad:
            with pytest.raises(ValidationError, match=field):
                people.update(**changes)
        with pytest.raises(ValidationError, match="code"):
            Country.objects(storage).update(code="FIN")  # Field(max_length=2)
        doc = storage.get(Person, pk)
        with pytest.raises(ValidationError, match="age"):
            storage.update(doc, age="x")  # a document's class validates storage.update too
        assert dict(storage.get(None, pk)) == before
        assert people.update(age=4, tags=["b"], nickname="undeclared", last_name=None) == 1
        assert people.update(age__inc=2) == 1
        assert storage.update(doc, age__inc=1) == 1
        loaded = storage.get(Person, pk)
        assert (loaded.age, loaded.tags, loaded["nickname"]) == (7, ["b"], "undeclared")
        storage.save({"nick": "n", "address": {"city": "Oulu"}}, primary_key="prof")
        assert Profile.objects(storage).update(address__zip="90100") == 1
        assert storage.get(Profile, "prof").address == {"city": "Oulu", "zip": "90100"}
        item = Item(sku="s", price=1.5)
        item.save(storage)
        Item.objects(storage).update(price=2)  # a float field takes an int, stored as a float
        assert identical(storage.get(None, item.pk)["price"], 2.0)  # type: ignore[arg-type]
        # Free-form queries and storage.update(pk) write any value, as records may hold it.
        assert storage.query().where(first_name="Ann").update(age="old") == 1

    def test_mistaken_lookups_on_a_declared_class_raise_with_the_spelling(
        self, storage: BaseStorage
    ) -> None:
        people = Person.objects(storage)
        mistakes: list[tuple[dict[str, Any], str]] = [
            ({"first_nme": "A"}, "did you mean 'first_name'"),
            ({"frist_name": "A"}, "did you mean 'first_name'"),
            ({"agee__gt": 3}, "did you mean 'age'"),
            ({"age": "40"}, "did you mean 40"),
            ({"age__gte": "4.5"}, "did you mean 4.5"),
            ({"age__in": [1, "2"]}, "'2'"),
            ({"age__startswith": "4"}, "str fields"),
            ({"age__year": 1990}, "dates"),
            ({"first_name": 1}, "can never match"),
            ({"first_name__contains": 1}, "can never match"),
            ({"tags": "a"}, "can never match"),  # a list field never equals a str
            ({"birth_date": dt.datetime(2000, 1, 1)}, "can never match"),
            ({"first_name__ne": "A"}, r"where_not\(first_name=\.\.\.\)"),
            ({"age__nin": [1]}, r"where_not\(age__in=\[\.\.\.\]\)"),
            ({"age__isnull": True}, "age__exists=False"),
            ({"first_name__iexact": "a"}, "first_name__iequals"),
            ({"first_name__regex": "^A"}, "first_name__matches"),
            ({"first_name__iregex": "^a"}, "first_name__imatches"),
            ({"age__range": (1, 2)}, "age__between"),
        ]
        for lookups, message in mistakes:
            with pytest.raises(InvalidQuery, match=message):
                people.where(**lookups)
            with pytest.raises(InvalidQuery):
                people.where_not(**lookups)
        with pytest.raises(InvalidQuery, match="did you mean 'last_name'"):
            people.order_by("-last_nme")
        with pytest.raises(InvalidQuery, match="did you mean 'age'"):
            people.values("agee")
        # Truly undeclared fields and values that can match keep working.
        Person(first_name="Ann", age=3)["nickname"] = "x"
        storage.save({"first_name": "Ann", "age": 3.0, "nickname": "an", "zz": 1})
        assert people.where(nickname="an", zz=1, age=3, age__in=[3, 4.5]).count() == 1
        assert people.where(company="none").count() == 0
        # Free-form queries know no declarations: any field, any value.
        assert storage.query().where(first_nme="A", age="40").count() == 0
        # A Django or MongoDB op name gets its spelling in any query; __equals
        # reaches a nested key named so, as it does for keys named like ops.
        with pytest.raises(InvalidQuery, match=r"where_not\(country="):
            storage.query().where(country__ne="FI")
        storage.save({"country": {"ne": "FI"}, "nick": "n", "address": {"ne": 1}})
        assert storage.query().where(country__ne__equals="FI").count() == 1
        assert Profile.objects(storage).where(address__ne__equals=1).count() == 1

    def test_saved_documents_stand_for_their_pks(self, storage: BaseStorage) -> None:
        fi = Country(name="Finland", code="FI")
        se = Country(name="Sweden", code="SE")
        fi.save(storage)
        se.save(storage)
        ann = Person(first_name="Ann", birth_place=fi)
        ann.save(storage)
        people = Person.objects(storage)
        assert [p.pk for p in people.where(birth_place=fi)] == [ann.pk]
        assert people.where(birth_place__in=[se, fi]).count() == 1
        assert people.where(Q(birth_place=se) | Q(birth_place=fi)).count() == 1
        assert people.where_not(birth_place=se).count() == 1
        assert storage.query().where(birth_place=fi).count() == 1
        assert people.update(birth_place=se) == 1
        assert storage.get(Person, ann.pk).birth_place.pk == se.pk  # type: ignore[arg-type,union-attr]
        assert storage.update(ann.pk, birth_place=fi) == 1  # type: ignore[arg-type]
        assert people.where(birth_place=fi.pk).count() == 1
        a, b = Node(label="a"), Node(label="b")
        storage.save_many([a, b])
        root = Node(label="root")
        root.save(storage)
        assert Node.objects(storage).where(label="root").update(children=[a, b], next=a) == 1
        loaded = storage.get(Node, root.pk)  # type: ignore[arg-type]
        assert [c.pk for c in loaded.children] == [a.pk, b.pk]
        assert Node.objects(storage).where(children__contains=b).count() == 1
        unsaved = Country(name="Nowhere", code="NW")
        with pytest.raises(InvalidQuery, match="not saved"):
            people.where(birth_place=unsaved)
        with pytest.raises(InvalidQuery, match="not saved"):
            people.where(birth_place__in=[fi, unsaved])
        with pytest.raises(ValidationError, match="not saved"):
            people.update(birth_place=unsaved)
        storage.delete(ann)
        assert ann.pk not in storage
        with pytest.raises(PyModelsError, match="never saved"):
            storage.delete(unsaved)

    def test_values_of_several_fields_and_of_the_pk(self, storage: BaseStorage) -> None:
        self._people(storage)
        q = storage.query().order_by("first_name")
        assert q.values("pk") == ["p0", "p1", "p2", "p3", "p4"]
        assert q[1:3].values("pk") == ["p1", "p2"]
        assert q.values("last_name", "age") == [
            ("Smith", 31),
            ("Smythe", 25),
            ("Doe", 25.0),
            ("smith", "40"),
        ]  # Eve has neither: no tuple
        # Missing values are None; tuples are deduplicated as values are (25 == 25.0).
        assert q.values("age", "nope") == [(31, None), (25, None), ("40", None)]
        assert q.values("pk", "age")[-1] == ("p4", None)
        assert q.values("tags", "first_name")[0] == (["a", "b"], "Ann")

    def test_get_or_create_takes_equality_lookups_only(self, storage: BaseStorage) -> None:
        with pytest.raises(InvalidQuery, match="first_name__startswith"):
            Person.get_or_create(storage, first_name__startswith="Z")
        with pytest.raises(InvalidQuery, match="age__gt"):
            Person.get_or_create(storage, first_name="Z", age__gt=3)
        assert len(storage) == 0
        fi = Country(name="Finland", code="FI")
        fi.save(storage)
        doc, created = Person.get_or_create(
            storage, first_name="Ann", birth_place=fi, nickname="an", defaults={"age": 3}
        )
        assert created and doc.pk is not None and doc.age == 3 and doc["nickname"] == "an"
        again, created = Person.get_or_create(
            storage, first_name__equals="Ann", birth_place=fi.pk, nickname="an"
        )
        assert (again.pk, created) == (doc.pk, False)
        prof, created = Profile.get_or_create(storage, nick="n", address__city="Oulu")
        assert created and prof.address == {"city": "Oulu"}
        assert Profile.get_or_create(storage, nick="n", address__city="Oulu")[1] is False
        with pytest.raises(ValidationError):
            Person.get_or_create(storage, first_name="Bo", defaults={"age": "x"})
        assert Person.objects(storage).where(first_name="Bo").count() == 0

    @requires("thread_safe")
    def test_get_or_create_racing_in_threads_creates_once(self, storage: BaseStorage) -> None:
        created: list[bool] = []

        def work(t: int) -> None:
            for i in range(20):
                created.append(Person.get_or_create(storage, first_name=f"R{i}")[1])

        run_in_threads(work, 4)
        assert created.count(True) == 20
        assert Person.objects(storage).count() == 20

    @requires("transactions", "concurrent_processes")
    def test_get_or_create_racing_in_processes_creates_once(self, storage: BaseStorage) -> None:
        settings = reopening_settings(storage)
        start = multiprocessing.get_context("spawn").Barrier(4)
        _in_processes(_get_or_create_many, [(settings, "Person", 30, start) for _ in range(4)])
        assert sorted(Person.objects(storage).values("first_name")) == sorted(
            f"R{i}" for i in range(30)
        )
        assert Person.objects(storage).count() == 30

    @requires("unique_indexes", "concurrent_processes")
    def test_get_or_create_on_a_unique_field_racing_in_processes(
        self, storage: BaseStorage
    ) -> None:
        settings = reopening_settings(storage)
        start = multiprocessing.get_context("spawn").Barrier(4)
        _in_processes(_get_or_create_many, [(settings, "Account", 30, start) for _ in range(4)])
        assert Account.objects(storage).count() == 30

    def test_upsert_replaces_or_inserts_on_a_field(self, storage: BaseStorage) -> None:
        pk = storage.upsert({"email": "a@x", "n": 1}, on="email")
        assert storage.upsert({"email": "a@x", "n": 2}, on="email") == pk
        assert dict(storage.get(None, pk)) == {"email": "a@x", "n": 2}
        other = storage.upsert({"email": "b@x"}, on="email")
        assert other != pk and len(storage) == 2
        doc = Member(email="a@x", name="Ann")
        assert storage.upsert(doc, on="email") == pk == doc.pk
        assert dict(storage.get(None, pk)) == {"email": "a@x", "name": "Ann"}
        fresh = Member(email="c@x")
        assert storage.upsert(fresh, on="email") == fresh.pk and len(storage) == 3
        storage.save({"email": "dup", "n": 1}, primary_key="d1")
        storage.save({"email": "dup", "n": 2}, primary_key="d2")
        with pytest.raises(IntegrityError, match="several"):
            storage.upsert({"email": "dup", "n": 3}, on="email")
        assert len(storage) == 5 and storage.get(None, "d1")["n"] == 1
        with pytest.raises(ValidationError, match="email"):
            storage.upsert({"name": "no email"}, on="email")

    @requires("thread_safe")
    def test_upsert_racing_in_threads_inserts_once(self, storage: BaseStorage) -> None:
        def work(t: int) -> None:
            for i in range(20):
                storage.upsert({"email": f"{i}@x", "by": t}, on="email")

        run_in_threads(work, 4)
        assert len(storage) == 20

    @requires("transactions", "concurrent_processes")
    def test_upsert_racing_in_processes_inserts_once(self, storage: BaseStorage) -> None:
        settings = reopening_settings(storage)
        start = multiprocessing.get_context("spawn").Barrier(4)
        _in_processes(_upsert_many, [(settings, w, 100, start) for w in range(4)])
        assert len(storage) == 100
        assert sorted(storage.query().values("email")) == sorted(f"{i}@x" for i in range(100))

    def test_update_and_delete_by_pk_agree_on_a_missing_pk(self, storage: BaseStorage) -> None:
        with pytest.raises(DoesNotExist, match="nope"):
            storage.update("nope", x=1)
        with pytest.raises(DoesNotExist, match="nope"):
            storage.delete("nope")
        assert len(storage) == 0
        # Queries count instead: nothing matched, nothing changed.
        assert storage.query().where(x=1).update(x=2) == 0
        assert storage.query().where(x=1).delete() == 0

    def test_delete_many_is_all_or_nothing(self, storage: BaseStorage) -> None:
        pks = [storage.save({"n": i}) for i in range(3)]
        with pytest.raises(DoesNotExist, match=r"'nope'.*nothing deleted"):
            storage.delete_many([pks[0], "nope", pks[1]])
        assert sorted(storage) == sorted(pks)
        doc = storage.get(None, pks[2])
        assert storage.delete_many([pks[0], doc, pks[0]]) == 2
        assert list(storage) == [pks[1]]
        assert storage.delete_many([]) == 0

    def test_repr_names_backend_and_location(self, storage: BaseStorage) -> None:
        text = repr(storage)
        assert storage.backend in text
        if storage.features.persistent:
            assert storage.location and repr(storage.location) in text

    # ====================================================== differential

    @settings(suppress_health_check=_SHARED_FIXTURE, deadline=None)
    @given(case=pst.query_cases(), data=st.data())
    def test_queries_match_the_oracle(
        self,
        storage: BaseStorage,
        case: tuple[dict[str, dict[str, Any]], dict[str, Any]],
        data: st.DataObject,
    ) -> None:
        """Any records, any query: the same pks in the same order as the oracle.

        One example checks iteration, count, exists, values and delete, so
        each generated case is worth every terminal operation.
        """
        records, spec = case
        q, expected = check_query_case(storage, records, spec)
        assert q.exists() == bool(expected)
        path = data.draw(st.sampled_from(_paths_of(records) or ["x"]), label="values path")
        assert _same_values(q.values(path), oracle.values(records, spec, path))
        assert q.delete() == len(expected)
        assert sorted(storage) == sorted(set(records) - set(expected))

    @settings(suppress_health_check=_SHARED_FIXTURE, deadline=None, max_examples=pst.examples(100))
    @given(case=pst.query_cases())
    def test_queries_sorted_in_spilled_runs_match_the_oracle(
        self, storage: BaseStorage, case: tuple[dict[str, dict[str, Any]], dict[str, Any]]
    ) -> None:
        """The differential test with the external sort (``pymodels.spill``) spilling a
        run every 3 items: orders an engine cannot give, and pk orders of engines that
        cannot list keys in order, merge runs of sort keys of every kind read back from
        disk. Engines that sort for themselves answer as in the test above."""
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(spill, "RUN_SIZE", 3)
            mp.setattr(spill, "RUN_BLOCK", 2)
            check_query_case(storage, *case)

    @settings(suppress_health_check=_SHARED_FIXTURE, deadline=None, max_examples=pst.examples(300))
    @given(case=pst.query_cases(), data=st.data())
    def test_after_continues_the_oracle_order(
        self,
        storage: BaseStorage,
        case: tuple[dict[str, dict[str, Any]], dict[str, Any]],
        data: st.DataObject,
    ) -> None:
        """Keyset pagination: after any record, matching or not, a query gives the
        records of its oracle answer that come later in its order, whatever kinds the
        order keys meet."""
        records, spec = case
        assume(records)
        spec = {k: v for k, v in spec.items() if k not in ("offset", "limit")}
        q, expected = check_query_case(storage, records, spec)
        anchor = data.draw(st.sampled_from(sorted(records)), label="anchor")
        # The anchor's place in the same order over every record.
        position = {pk: i for i, pk in enumerate(oracle.run(records, _order_only(spec)))}
        later = [pk for pk in expected if position[pk] > position[anchor]]
        assert [d.pk for d in q.after(anchor)] == later
        page = q.after(storage.get(None, anchor))[:2]
        assert [d.pk for d in page] == later[:2]

    @settings(suppress_health_check=_SHARED_FIXTURE, deadline=None, max_examples=pst.examples(400))
    @given(case=pst.update_cases())
    def test_updates_match_the_reference(
        self,
        storage: BaseStorage,
        case: tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]],
    ) -> None:
        """Any records, any query, any changes: ``query.update`` leaves each record as
        the reference semantics (:func:`pymodels.changes.apply_changes`) change it,
        or raises ValidationError with no record written, on engines with
        transactions and without, in place or through the generic path."""
        records, spec, changes = case
        storage.clear()
        for pk, record in records.items():
            storage.save(record, primary_key=pk)
        before = {pk: stored_form(record) for pk, record in records.items()}
        matched = oracle.run(records, spec)
        q = pst.to_query(storage.query(), spec)
        try:
            parsed = parse_changes(changes)
            expected = {pk: apply_changes(before[pk], parsed) for pk in matched}
        except ValidationError:
            with pytest.raises(ValidationError):
                q.update(**changes)
            expected = {}
        else:
            assert q.update(**changes) == len(matched)
        after = {pk: dict(storage.get(None, pk)) for pk in storage}
        assert after.keys() == before.keys()
        for pk, record in after.items():
            assert identical(record, expected.get(pk, before[pk])), (pk, record, changes)

    @settings(suppress_health_check=_SHARED_FIXTURE, deadline=None)
    @given(record=pst.records(), pk=pst.primary_keys())
    def test_any_record_round_trips(
        self, storage: BaseStorage, record: dict[str, Any], pk: str
    ) -> None:
        storage.save(record, primary_key=pk)
        loaded = dict(storage.get(None, pk))
        assert identical(loaded, stored_form(record)), (loaded, record)


def check_query_case(
    storage: BaseStorage, records: Mapping[str, Mapping[str, Any]], spec: Mapping[str, Any]
) -> tuple[Any, list[str]]:
    """Store exactly ``records`` (the storage cleared first), run the query ``spec``
    (:func:`pymodels.testing.strategies.to_query`) and check its pks and count against
    the oracle; return the query and the oracle's pks for further checks."""
    storage.clear()
    for pk, record in records.items():
        storage.save(record, primary_key=pk)
    q = pst.to_query(storage.query(), spec)
    expected = oracle.run(records, spec)
    assert [d.pk for d in q] == expected
    assert q.count() == len(expected)
    return q, expected


def _order_only(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec``'s order alone: a query over every record in the same order."""
    return {"order_by": spec["order_by"]} if spec.get("order_by") else {}


def run_in_threads(work: Callable[[int], None], count: int) -> None:
    """Run ``work(0)`` ... ``work(count - 1)`` in threads at once; re-raise the first failure."""
    errors: list[BaseException] = []

    def guarded(t: int) -> None:
        try:
            work(t)
        except BaseException as e:  # pragma: no cover - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(count)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


def reopening_settings(storage: BaseStorage) -> dict[str, Any]:
    """Settings (plain, picklable) that open ``storage``'s data again, in any process."""
    return {"backend": storage.backend, **storage.settings.model_dump()}


def _in_processes(target: Callable[..., None], arguments: list[tuple[Any, ...]]) -> None:
    # spawn, not fork: each worker starts as a fresh program would.
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=args) for args in arguments]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
    assert [p.exitcode for p in procs] == [0] * len(procs)


def _nested(levels: int, wrap: Callable[[Any], Any]) -> Any:
    """A value of ``levels`` lists/dicts, each inside the next, around a scalar."""
    value: Any = "leaf"
    for _ in range(levels):
        value = wrap(value)
    return value


def _never(*args: Any) -> Any:
    raise AssertionError("the record was read into Python")


def _save_many_times(settings: dict[str, Any], worker: int, count: int) -> None:
    with get_storage(settings) as s:
        for i in range(count):
            s.save({"worker": worker, "i": i})


def _get_or_create_many(settings: dict[str, Any], cls_name: str, count: int, start: Any) -> None:
    cls: Any = {"Person": Person, "Account": Account}[cls_name]
    field = "first_name" if cls is Person else "email"
    with get_storage(settings) as s:
        start.wait(60)  # every process is ready: the race starts at once
        for i in range(count):
            cls.get_or_create(s, **{field: f"R{i}"})


def _upsert_many(settings: dict[str, Any], worker: int, count: int, start: Any) -> None:
    with get_storage(settings) as s:
        start.wait(60)
        for i in range(count):
            s.upsert({"email": f"{i}@x", "by": worker}, on="email")


class _Counter(Document):
    n: int = 0

    class Meta:
        version_field = "v"


def _increment(settings: dict[str, Any], times: int) -> None:
    with get_storage(settings) as s:
        done = 0
        while done < times:
            counter = _Counter.object(s, "counter")
            counter.n += 1
            try:
                counter.save(s)
            except ConflictError:
                continue  # another process saved first: load and try again
            done += 1


# ---------------------------------------------------------- reliability harness


def _kills() -> int:
    """How many kills the crash test makes (env knob, else by hypothesis profile)."""
    knob = os.environ.get("PYMODELS_CRASH_KILLS")
    if knob:
        return int(knob)
    return {"ci": 50, "soak": 500}.get(os.environ.get("HYPOTHESIS_PROFILE", ""), 12)


def _say(fd: int, event: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(event) + "\n").encode())


def _read_events(fd: int) -> Iterator[dict[str, Any]]:
    buffer = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield json.loads(line)


def _in_forked_child(
    work: Callable[[dict[str, Any], int], None], settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """Run ``work(settings, fd)`` in a forked child; return the events it wrote to ``fd``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(r)
        try:
            work(settings, w)
        except BaseException as e:
            _say(w, {"error": repr(e), "typed": isinstance(e, PyModelsError), "fatal": True})
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb", buffering=0) as pipe:
        events = list(_read_events(pipe.fileno()))
    os.waitpid(pid, 0)
    return events


def _crash_child(settings: dict[str, Any], fd: int, seed: int) -> None:  # pragma: no cover
    """The writer the crash test kills: announces each write, then acknowledges it."""
    rng = random.Random(seed)
    with get_storage(settings) as s:
        # save_below: a pk of the program's choosing below every generated one (which
        # ends SQLite's row order, see docs/sqlite.md: a kill lands amid that too).
        ops = ["save"] * 6 + ["save_below", "save_many", "save_many", "save_many"]
        ops += ["clear", "index"]
        if s.features.transactions:
            ops += ["transaction"] * 3
        for op_id in itertools.count():
            op = rng.choice(ops)
            tag = f"{seed}.{op_id}"
            _say(fd, {"begin": op, "tag": tag})
            if op in ("save", "save_below"):
                record = _crash_record(rng, tag)
                pk = s.save(record, primary_key=f"00.{tag}" if op == "save_below" else None)
                _say(fd, {"ack": op, "records": {pk: record}})
            elif op == "save_many":
                records = [_crash_record(rng, tag) for _ in range(rng.randint(2, 40))]
                pks = s.save_many(records, batch_size=rng.choice([7, 1000]))
                _say(fd, {"ack": op, "records": dict(zip(pks, records, strict=True))})
            elif op == "transaction":
                records = [_crash_record(rng, tag) for _ in range(rng.randint(2, 10))]
                with s.transaction():
                    pks = [s.save(r) for r in records]
                _say(fd, {"ack": op, "records": dict(zip(pks, records, strict=True))})
            elif op == "clear":
                s.clear()
                _say(fd, {"ack": op})
            else:
                s.create_index("n")
                _say(fd, {"ack": op})


def _crash_record(rng: random.Random, tag: str) -> dict[str, Any]:
    record = {"n": rng.randrange(8), "tag": tag, "pad": "p" * rng.randrange(0, 1500)}
    if rng.random() < 0.5:
        # Field names that keep appearing for the first time: a backend that does
        # work per new field (SQLite adds columns for it) is killed amid that too.
        record[f"{_NEW_FIELD}{rng.randrange(48)}"] = rng.randrange(3)
    return record


#: The prefix of _crash_record's occasional fields.
_NEW_FIELD = "x"


def _until_quiet(settings: dict[str, Any], timeout: float = 10.0) -> None:
    """Wait until a server has applied what a killed client had sent before it died.

    A server goes on executing requests it received before the client's death (a
    pipelined batch of writes, say), so a scan and a query made meanwhile see different
    stores. The check starts once the record count has held still for 150 ms.
    """
    with get_storage(settings) as s:
        deadline = time.monotonic() + timeout
        last, still = len(s), 0
        while still < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
            count = len(s)
            still = still + 1 if count == last else 0
            last = count


def _run_and_kill(
    settings: dict[str, Any], *, seed: int, rng: random.Random
) -> list[dict[str, Any]]:
    """Start the crash child, let it acknowledge a few writes, SIGKILL it mid-flight."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child until killed
        os.close(r)
        try:
            _crash_child(settings, w, seed)
        except BaseException as e:
            _say(w, {"error": repr(e), "typed": isinstance(e, PyModelsError), "fatal": True})
        finally:
            os._exit(0)
    os.close(w)
    target = rng.randint(1, 12)
    events: list[dict[str, Any]] = []
    buffer = b""
    acks = 0
    deadline = time.monotonic() + 30
    while acks < target and time.monotonic() < deadline:
        ready, _, _ = select.select([r], [], [], 1.0)
        if not ready:
            continue
        chunk = os.read(r, 65536)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            event = json.loads(line)
            events.append(event)
            acks += "ack" in event
    time.sleep(rng.uniform(0, 0.004))  # land anywhere in the next write
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    rest = buffer + b"".join(iter(lambda: os.read(r, 65536), b""))
    os.close(r)
    # A line the kill cut short (longer than the pipe writes atomically) is no acknowledgement.
    *complete, _partial = rest.split(b"\n")
    events.extend(json.loads(line) for line in complete)
    fatal = [e for e in events if e.get("fatal")]
    assert not fatal, f"the writer failed before it was killed: {fatal}"
    return events


def _all_records(s: BaseStorage) -> dict[str, dict[str, Any]]:
    return {str(d.pk): dict(d) for d in s.query()}


def _apply_events(model: dict[str, dict[str, Any]], events: list[dict[str, Any]]) -> Any:
    """Apply acknowledged writes to ``model``; return the write in flight at the kill."""
    inflight = None
    for event in events:
        if "begin" in event:
            inflight = event
        elif "ack" in event:
            inflight = None
            if event["ack"] == "clear":
                model.clear()
            model.update(event.get("records", {}))
    return inflight


def _check_after_crash(
    s: BaseStorage,
    model: dict[str, dict[str, Any]],
    stored: dict[str, dict[str, Any]],
    inflight: dict[str, Any] | None,
) -> None:
    op = inflight["begin"] if inflight else None
    tag = inflight["tag"] if inflight else None
    if op == "clear":  # begun, not acknowledged: anything between nothing and all of it
        assert stored.keys() <= model.keys(), "records nobody wrote appeared"
    else:
        missing = model.keys() - stored.keys()
        assert not missing, f"{len(missing)} acknowledged records lost (in flight: {op})"
    for pk, record in stored.items():
        if pk in model:
            assert record == model[pk], f"record {pk} changed"
        else:
            assert record.get("tag") == tag, f"record {pk} was never written"
    landed = [pk for pk, r in stored.items() if pk not in model]
    if op == "transaction" and s.features.transactions and landed:
        assert len(landed) == len({k for k, r in stored.items() if r.get("tag") == tag})
    # Indexes are never behind their records: a query answers what a scan answers,
    # in pk order (SQLite's row order must hold through the kill, or be gone).
    for n in range(8):
        expected = sorted(pk for pk, r in stored.items() if r.get("n") == n)
        assert [str(d.pk) for d in s.query().where(n=n)] == expected, f"where(n={n})"
        assert s.query().where(n=n).count() == len(expected)
    # Nor is anything kept per field (SQLite's shadow columns) behind its records.
    fields = sorted({k for r in stored.values() for k in r if k.startswith(_NEW_FIELD)})
    for name in fields:
        expected = sorted(pk for pk, r in stored.items() if r.get(name) == 1)
        found = sorted(str(d.pk) for d in s.query().where(**{name: 1}))
        assert found == expected, f"where({name}=1)"
    assert len(s) == len(stored)


def _fill_the_disk(settings: dict[str, Any], fd: int) -> None:  # pragma: no cover - child
    """Write until the file size limit bites; report each acknowledged write or error."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
    sizes = [os.path.getsize(p) for p in _files_of(settings) if os.path.isfile(p)] or [0]
    limit = max(sizes) + 256 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    errors = 0
    # Some engines take long to fail each write (Berkeley DB retries): a time budget.
    deadline = time.monotonic() + 1.5
    with contextlib.ExitStack() as stack:
        try:
            s = stack.enter_context(get_storage(settings))
        except BaseException as e:
            _say(fd, {"error": repr(e), "typed": isinstance(e, PyModelsError)})
            return
        for i in range(400):
            record = {"n": i, "pad": f"{i}" * 4000}
            try:
                if i % 3 == 0:
                    pks = s.save_many([record, {**record, "second": True}])
                    _say(fd, {"pk": pks[0], "record": record})
                    _say(fd, {"pk": pks[1], "record": {**record, "second": True}})
                else:
                    _say(fd, {"pk": s.save(record, primary_key=f"full{i}"), "record": record})
            except BulkWriteError as e:
                _say(fd, {"error": repr(e), "typed": True})
                for pk in e.written_pks:
                    _say(fd, {"pk": pk, "record": record})
                errors += 1
            except BaseException as e:
                _say(fd, {"error": repr(e), "typed": isinstance(e, PyModelsError)})
                errors += 1
            if errors >= 10 or (errors and time.monotonic() > deadline):
                break
        try:
            stack.close()
        except BaseException as e:
            _say(fd, {"error": f"close: {e!r}", "typed": isinstance(e, PyModelsError)})


def _files_of(settings: dict[str, Any]) -> list[str]:
    path = settings.get("path")
    if not isinstance(path, str):
        return []
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    return [os.path.join(folder, f) for f in os.listdir(folder) if f.startswith(base)]


def _save_a_few(settings: dict[str, Any], fd: int) -> None:  # pragma: no cover - child
    try:
        s = get_storage(settings)
    except LockTimeout:
        _say(fd, {"refused": True})
        return
    with s:
        for i in range(50):
            record = {"by": "other", "i": i}
            _say(fd, {"pk": s.save(record), "record": record})


def _paths_of(records: Mapping[str, Mapping[str, Any]]) -> list[str]:
    paths: set[str] = set()
    for record in records.values():
        for key, value in record.items():
            paths.add(key)
            if isinstance(value, dict):
                paths.update(f"{key}__{sub}" for sub in value)
    return sorted(paths)


def _same_values(got: list[Any], expected: list[Any]) -> bool:
    return len(got) == len(expected) and all(
        oracle.strict_equal(a, b) for a, b in zip(got, expected, strict=True)
    )

"""MongoDB-specific behaviour: ObjectId pks, the filter allow-list, connections,
replica sets and transactions, bulk writes, and SecantusDB's deviations."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings

import pymodels
from pymodels import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailed,
    CorruptData,
    IntegrityError,
    NotSupported,
)
from pymodels.ext.memory import Storage as MemoryStorage
from pymodels.storage import BaseStorage
from pymodels.testing import strategies as pst
from pymodels.testing.mongodb import TemporaryMongo, mongodb_skip_reason

if os.environ.get("PYMODELS_REQUIRE_ENGINES"):
    import pymongo  # scripts/test installs it: an ImportError here is a broken setup
else:
    pymongo = pytest.importorskip("pymongo")
from bson import Decimal128, ObjectId
from pymongo.monitoring import CommandListener, CommandStartedEvent

from pymodels.ext.mongodb._compiler import OPERATORS, compile_condition

_reason = mongodb_skip_reason()
if _reason is not None and os.environ.get("PYMODELS_REQUIRE_ENGINES"):
    raise RuntimeError(f"MongoDB is required (PYMODELS_REQUIRE_ENGINES is set): {_reason}")
needs_server = pytest.mark.skipif(_reason is not None, reason=_reason or "")
_names = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[TemporaryMongo]:
    if _reason is not None:
        pytest.skip(_reason)
    with TemporaryMongo() as s:
        yield s


@pytest.fixture
def collection_name() -> str:
    return f"t{os.getpid()}_{next(_names)}"


@pytest.fixture
def storage(server: TemporaryMongo, collection_name: str) -> Iterator[BaseStorage]:
    with pymodels.get_storage(server.url, collection=collection_name) as s:
        yield s


@pytest.fixture
def raw(server: TemporaryMongo, collection_name: str) -> Iterator[Any]:
    """The same collection through pymongo, as another program sees it."""
    client: Any = pymongo.MongoClient(server.url)
    try:
        yield client.pymodels[collection_name]
    finally:
        client.close()


# ------------------------------------------------------------------ the compiler


def _operators(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key.startswith("$"):
                yield key
            yield from _operators(value)
    elif isinstance(node, list):
        for item in node:
            yield from _operators(item)


def _keys(node: Any) -> Iterator[str]:
    """Every key of the filter that names a field (operator documents skipped)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not key.startswith("$"):
                yield key
                if isinstance(value, dict) and all(k.startswith("$") for k in value):
                    yield from _keys(list(value.values()))
            else:
                yield from _keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keys(item)


@settings(max_examples=pst.examples(400), deadline=None)
@given(case=pst.query_cases())
def test_the_compiler_emits_only_allowed_operators(
    case: tuple[dict[str, dict[str, Any]], dict[str, Any]],
) -> None:
    _, spec = case
    with MemoryStorage() as memory:
        condition = pst.to_query(memory.query(), spec).condition
    native = compile_condition(condition).native or {}
    assert set(_operators(native)) <= OPERATORS
    for key in _keys(native):
        # Field names only come from validated paths (and the tagged values' parts).
        parts = key.split(".")
        assert all(p and "$" not in p for p in parts), key


def test_values_are_never_syntax() -> None:
    native = compile_condition(pymodels.Q(a__contains="$where(.*)", b="$gt")).native
    assert native is not None
    contains = native["$or"]
    assert contains[0]["a"]["$regex"] == r"\$where\(\.\*\)"  # escaped for the regex
    # A value, not an operator (a str is never read as one), on a flat indexable key.
    assert native["b"] == "$gt"
    assert native["b.0"] == {"$exists": False}
    # A path part that cannot be a field name never reaches the filter.
    assert compile_condition(pymodels.Q(**{"a__$where": 1})).native == {"_id": {"$in": []}}


# ------------------------------------------------------------------ primary keys


@needs_server
def test_generated_pks_are_object_id_strings(storage: BaseStorage, raw: Any) -> None:
    pk = storage.save({"a": 1})
    assert ObjectId.is_valid(pk) and str(ObjectId(pk)) == pk
    assert raw.find_one({"_id": pk}) is not None  # stored as the str


@needs_server
def test_object_id_records_of_other_programs(storage: BaseStorage, raw: Any) -> None:
    oid = ObjectId()
    raw.insert_one({"_id": oid, "name": "from elsewhere", "n": 2})
    storage.save({"name": "ours", "n": 1}, primary_key="zzz")
    pk = str(oid)
    assert storage.get(None, pk)["name"] == "from elsewhere" and pk in storage
    # Saving it back keeps the ObjectId _id, and so do updates.
    doc = storage.get(None, pk)
    doc["n"] = 3
    doc.save()
    assert storage.update(pk, m=1) == 1
    stored = raw.find_one({"_id": oid})
    assert stored == {"_id": oid, "name": "from elsewhere", "n": 3, "m": 1}
    assert raw.count_documents({"_id": pk}) == 0
    # A new record under that pk would be a second one: refused.
    with pytest.raises(IntegrityError):
        storage.insert({"x": 1}, primary_key=pk)
    # Order by pk is the order of the str pks, whatever the _id types.
    assert [d.pk for d in storage.query()] == sorted([pk, "zzz"])
    assert [d.pk for d in storage.query().order_by("-pk")] == sorted([pk, "zzz"], reverse=True)
    assert [d.pk for d in storage.query().order_by("n")] == ["zzz", pk]
    assert sorted(storage) == sorted([pk, "zzz"])
    storage.delete(pk)
    assert raw.count_documents({}) == 1


@needs_server
def test_a_pk_naming_two_records_is_refused(storage: BaseStorage, raw: Any) -> None:
    oid = ObjectId()
    raw.insert_many([{"_id": oid, "a": 1}, {"_id": str(oid), "a": 2}])
    with pytest.raises(IntegrityError, match="two records"):
        storage.save({"a": 3}, primary_key=str(oid))


@needs_server
def test_a_unique_index_refusing_a_write_names_its_fields_and_values(
    storage: BaseStorage,
) -> None:
    # The SQL backends' words, and MongoDB's key values beside them.
    storage.create_index(("city", "-age"), unique=True)
    storage.create_index("home__city", unique=True)
    storage.save({"city": "Oulu", "age": 3, "home": {"city": "Oulu"}})
    with pytest.raises(IntegrityError) as refused:
        storage.save({"city": "Oulu", "age": 3})
    assert str(refused.value) == (
        "mongodb: unique index on city, age: another record holds the same value already "
        "({'city': 'Oulu', 'age': 3})"
    )
    with pytest.raises(IntegrityError, match=r"^mongodb: unique index on home__city: "):
        storage.save({"home": {"city": "Oulu"}})


# ------------------------------------------------------------------ values


@needs_server
def test_values_are_native_bson_where_bson_keeps_them(storage: BaseStorage, raw: Any) -> None:
    aware = dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)
    storage.save(
        {
            "d": Decimal("2.50"),
            "big": Decimal("1E+6144"),
            "when": aware,
            "fine": aware.replace(microsecond=123456),
            "day": dt.date(2024, 5, 1),
            "naive": dt.datetime(2024, 5, 1, 12),
        },
        primary_key="k",
    )
    doc = raw.find_one({"_id": "k"})
    assert doc["d"] == Decimal128("2.50")
    assert doc["big"] == {"_pm": "dec", "_v": "1E+6144"}
    assert doc["when"] == aware.replace(tzinfo=None)  # a plain BSON date (naive UTC in pymongo)
    assert doc["fine"]["_pm"] == "aw" and doc["fine"]["_us"] == 456
    assert doc["day"]["_pm"] == "dt" and doc["naive"]["_pm"] == "nv"


@needs_server
def test_records_of_other_programs_read_in_the_domain(storage: BaseStorage, raw: Any) -> None:
    raw.insert_one(
        {"_id": "x", "when": dt.datetime(2024, 1, 2, 3, 4, 5), "gone": None, "n": {"z": None}}
    )
    record = dict(storage.get(None, "x"))
    assert record == {"when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "n": {}}
    assert storage.query().where(gone__exists=False).count() == 1


@needs_server
def test_records_of_other_programs_outside_the_domain_are_corrupt_data(
    storage: BaseStorage, raw: Any
) -> None:
    storage.save({"a": 1}, primary_key="ok")
    raw.insert_one({"_id": "tag", "a": {"_pm": "nope"}})
    raw.insert_one({"_id": "code", "a": [1, None]})
    for pk, said in (("tag", "a broken tagged value"), ("code", "a list with null")):
        with pytest.raises(CorruptData, match=f"record '{pk}': a holds {said}") as info:
            storage.get(None, pk)
        assert info.value.pk == pk
    with pytest.raises(CorruptData) as info:
        list(storage.query())
    assert info.value.pk in ("tag", "code")
    assert storage.query().count() == 3  # counting loads no record
    assert dict(storage.get(None, "ok")) == {"a": 1}


@needs_server
def test_secantus_deviations_give_the_contract_answer(storage: BaseStorage) -> None:
    # SecantusDB's distinct merges True with 1, and it finds Decimal128("9.99")
    # equal to 9.99: values() never uses distinct, and filters say the type.
    storage.save({"x": True}, primary_key="a")
    storage.save({"x": 1}, primary_key="b")
    storage.save({"y": Decimal("9.99")}, primary_key="c")
    storage.save({"y": 9.99}, primary_key="d")
    assert storage.query().values("x") == [True, 1]
    assert [d.pk for d in storage.query().where(y=9.99)] == ["d"]
    assert [d.pk for d in storage.query().where(y=Decimal("9.99"))] == ["c"]
    assert [d.pk for d in storage.query().where(y__gte=9.99)] == ["d"]
    assert [d.pk for d in storage.query().order_by("-y")] == ["c", "d", "a", "b"]


# ------------------------------------------------------------------ settings and connections


def test_url_parameters_of_pymodels_come_out() -> None:
    from pymodels.ext.mongodb import Storage

    got = Storage.settings_from_url(
        "mongodb://u:p%40ss@h1:27017,h2/db?replicaSet=rs&collection=people&readPreference=secondary"
    )
    assert got == {
        "url": "mongodb://u:p%40ss@h1:27017,h2/db?replicaSet=rs&readPreference=secondary",
        "collection": "people",
    }


def test_bad_settings() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        pymodels.get_storage({"backend": "mongo", "url": "mongodb://x", "host": "y"})
    with pytest.raises(ConfigurationError, match="collection"):
        pymodels.get_storage({"backend": "mongodb", "collection": "pymodels_meta"})
    with pytest.raises(ConfigurationError, match="unknown setting"):
        pymodels.get_storage({"backend": "mongodb", "table": "x"})


def test_unreachable_server_fails_within_the_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(ConnectionFailed) as info:
        pymodels.get_storage({"backend": "mongodb", "host": "127.0.0.1", "port": 1, "timeout": 0.5})
    assert time.monotonic() - start < 5
    assert info.value.host == "127.0.0.1" and info.value.port == 1
    # pymongo's topology description and configured timeouts are left out: the
    # message is the host, the reason and the wait.
    message = str(info.value)
    assert message.startswith("cannot reach MongoDB at 127.0.0.1:1: ")
    assert "(no server answered within 0.5s)" in message
    assert "Topology" not in message and "configured timeouts" not in message
    assert len(message) < 200


def test_an_unreachable_reason_of_another_shape_is_kept_whole() -> None:
    from pymodels.ext.mongodb._storage import _unreachable_reason

    error = pymongo.errors.AutoReconnect("connection closed")
    assert _unreachable_reason(error, ["db:27017"]) == "connection closed"
    two = "a:1: refused (configured timeouts: x),b:2: refused, Timeout: 3.0s, Topology: <...>"
    assert _unreachable_reason(ValueError(two), ["a:1", "b:2"]) == (
        "a:1: refused,b:2: refused (no server answered within 3.0s)"
    )


@needs_server
def test_a_ready_client_is_used_and_left_open(server: TemporaryMongo, collection_name: str) -> None:
    client: Any = pymongo.MongoClient(server.url)
    with pymodels.get_storage(
        {"backend": "mongodb", "client": client, "collection": collection_name, "database": "other"}
    ) as s:
        s.save({"a": 1}, primary_key="k")
    assert client.other[collection_name].find_one({"_id": "k"}) == {"_id": "k", "a": 1}
    client.close()


@needs_server
def test_replica_set_url_and_transactions(server: TemporaryMongo, collection_name: str) -> None:
    with pymodels.get_storage(server.replica_set_url, collection=collection_name) as s:
        assert s.features.transactions
        with pytest.raises(RuntimeError), s.transaction():
            s.save({"a": 1}, primary_key="k")
            raise RuntimeError
        assert "k" not in s
        with s.transaction():
            s.save({"a": 2}, primary_key="k")
        assert s.get(None, "k")["a"] == 2


@pytest.fixture(scope="module")
def standalone() -> Iterator[TemporaryMongo]:
    if _reason is not None:
        pytest.skip(_reason)
    with TemporaryMongo(standalone=True) as s:
        yield s


@needs_server
def test_no_transactions_on_a_standalone_server(
    standalone: TemporaryMongo, collection_name: str
) -> None:
    with pymodels.get_storage(standalone.url, collection=collection_name) as s:
        assert not s.features.transactions
        with pytest.raises(NotSupported), s.transaction():
            pass  # pragma: no cover - never entered
        assert len(s.save_many([{"n": i} for i in range(5)], batch_size=2)) == 5
        assert len(s) == 5


@needs_server
def test_save_many_on_a_standalone_server_is_one_insert_per_batch(
    standalone: TemporaryMongo, collection_name: str
) -> None:
    listener = _Inserts()
    client: Any = pymongo.MongoClient(standalone.url, event_listeners=[listener])
    with pymodels.get_storage(
        {"backend": "mongodb", "client": client, "collection": collection_name}
    ) as s:
        assert not s.features.transactions
        listener.commands.clear()
        pks = s.save_many(({"n": i} for i in range(2500)), batch_size=1000)
        assert len(pks) == 2500 and listener.commands == ["insert"] * 3
        assert sorted(pks) == sorted(s)
        # A unique clash mid-batch: the records before it stay, as without transactions.
        s.create_index("email", unique=True)
        s.save({"email": "taken"})
        items = [{"email": "a"}, {"email": "b"}, {"email": "taken"}, {"email": "c"}]
        with pytest.raises(BulkWriteError, match="unique index on email: ") as info:
            s.save_many(items, batch_size=10)
        assert info.value.index == 2 and len(info.value.written_pks) == 2
        assert sorted(s.query().values("email")) == ["a", "b", "taken"]
        # A mapping that does not validate: the ones before it are written.
        with pytest.raises(BulkWriteError) as info:
            s.save_many([{"email": "d"}, {"bad.name": 1}], batch_size=10)
        assert info.value.index == 1 and len(info.value.written_pks) == 1
    client.close()


# ------------------------------------------------------------------ writes and indexes


class _Inserts(CommandListener):
    def __init__(self) -> None:
        self.commands: list[str] = []

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name in ("insert", "update", "delete"):
            self.commands.append(event.command_name)

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


@needs_server
def test_save_many_is_one_insert_per_batch(server: TemporaryMongo, collection_name: str) -> None:
    listener = _Inserts()
    client: Any = pymongo.MongoClient(server.url, event_listeners=[listener])
    with pymodels.get_storage(
        {"backend": "mongodb", "client": client, "collection": collection_name}
    ) as s:
        listener.commands.clear()
        pks = s.save_many(({"n": i} for i in range(2500)), batch_size=1000)
        assert len(pks) == 2500 and listener.commands == ["insert"] * 3
    client.close()


@needs_server
def test_duplicate_keys_name_the_indexed_fields(storage: BaseStorage) -> None:
    storage.create_index(("city", "-age"))
    storage.create_index("email", unique=True)
    storage.save({"email": "a"})
    with pytest.raises(IntegrityError, match="unique index on email: "):
        storage.save({"email": "a"})


@needs_server
def test_explain_comes_from_the_server(storage: BaseStorage) -> None:
    storage.create_index("n")
    storage.save_many({"n": i} for i in range(10))
    plan = storage.query().where(n=3).order_by("n").explain()
    assert "plan (explain):" in plan and "'n'" in plan


@needs_server
def test_storage_used_after_fork_gets_its_own_client(storage: BaseStorage) -> None:
    storage.save({"a": 1}, primary_key="p")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            storage.save({"a": 2}, primary_key="c")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert storage.get(None, "c")["a"] == 2


# ------------------------------------------------------------------ ordered pages


@needs_server
@pytest.mark.parametrize(
    "odd",
    [True, Decimal("30"), Decimal("-1"), [5], [], "x", {"a": 1}, dt.date(2020, 1, 1), None],
    ids=repr,
)
def test_ordered_pages_see_a_kind_past_the_first_page(storage: BaseStorage, odd: Any) -> None:
    """Numbers at the sort key and one other kind that BSON would place elsewhere."""
    # More matches than a small page reads (SMALL_PAGE), so the probes run.
    records = {f"p{i:03}": {"age": (i * 7) % 23, "city": "c"} for i in range(300)}
    records["odd"] = {"city": "c"} if odd is None else {"age": odd, "city": "c"}
    reference = MemoryStorage()
    for s in (storage, reference):
        s.create_index(("city", "-age"))
        for pk, record in records.items():
            s.save(record, primary_key=pk)
    # One key (the one-probe path) and two keys (a probe per key).
    for order in (("age",), ("-age",), ("-age", "city"), ("city", "age")):
        for start, stop in ((0, 5), (3, 8), (250, 260), (0, 270), (290, 301)):
            got = [d.pk for d in storage.query().where(city="c").order_by(*order)[start:stop]]
            want = [d.pk for d in reference.query().where(city="c").order_by(*order)[start:stop]]
            assert got == want, (order, start, stop)


@needs_server
@pytest.mark.parametrize(
    "odd",
    [[{"age": 5}], [5], {"age": Decimal("30")}, {"age": "x"}, 7, None],
    ids=repr,
)
def test_ordered_pages_on_a_dotted_key_see_a_kind_past_the_first_page(
    storage: BaseStorage, odd: Any
) -> None:
    """An embedded key: another kind under it, or a list on its way, past the first page."""
    records = {f"p{i:03}": {"p": {"age": (i * 7) % 23}, "city": "c"} for i in range(300)}
    records["odd"] = {"city": "c"} if odd is None else {"p": odd, "city": "c"}
    reference = MemoryStorage()
    for s in (storage, reference):
        for pk, record in records.items():
            s.save(record, primary_key=pk)
    for order in (("p__age",), ("-p__age",), ("-p__age", "city")):
        for start, stop in ((0, 5), (250, 260), (290, 301)):
            got = [d.pk for d in storage.query().where(city="c").order_by(*order)[start:stop]]
            want = [d.pk for d in reference.query().where(city="c").order_by(*order)[start:stop]]
            assert got == want, (order, start, stop)


class _Reads(CommandListener):
    def __init__(self) -> None:
        self.commands: list[str] = []

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name in ("find", "aggregate", "getMore", "count"):
            self.commands.append(event.command_name)

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


@needs_server
def test_a_small_ordered_page_reads_the_matches_once(
    server: TemporaryMongo, collection_name: str
) -> None:
    """Past SMALL_PAGE matches, the page and the kinds check are one aggregation."""
    listener = _Reads()
    client: Any = pymongo.MongoClient(server.url, event_listeners=[listener])
    with pymodels.get_storage(
        {"backend": "mongodb", "client": client, "collection": collection_name}
    ) as s:
        s.create_index(("city", "-age"))
        s.save_many({"city": "c", "age": i % 50} for i in range(600))
        listener.commands.clear()
        page = [d["age"] for d in s.query().where(city="c").order_by("-age")[:10]]
        assert page == [49] * 10 and listener.commands == ["aggregate"]
        # A kind BSON interleaves with numbers: the same one read, then Python's order.
        s.save({"city": "c", "age": Decimal("1")}, primary_key="dec")
        listener.commands.clear()
        assert s.query().where(city="c").order_by("-age")[:1][0].pk == "dec"
        assert listener.commands[0] == "aggregate" and "find" in listener.commands
    client.close()


@needs_server
def test_an_ordered_page_with_more_ties_than_it_reads_past_its_end(
    server: TemporaryMongo, collection_name: str
) -> None:
    """The server sorts by the keys alone; ties past TIE_ROOM are sorted by the pk there."""
    from pymodels.ext.mongodb._storage import TIE_ROOM

    listener = _Reads()
    client: Any = pymongo.MongoClient(server.url, event_listeners=[listener])
    records = {f"p{(i * 37) % 400:03}": {"city": "c", "age": 7} for i in range(400)}
    records.update({f"q{i:03}": {"city": "c", "age": i % 3} for i in range(100)})
    records.update({f"r{i:03}": {"city": "d", "age": i} for i in range(100)})
    reference = MemoryStorage()
    with pymodels.get_storage(
        {"backend": "mongodb", "client": client, "collection": collection_name}
    ) as s:
        for target in (s, reference):
            target.create_index(("city", "-age"))
            for pk, record in records.items():
                target.save(record, primary_key=pk)
        assert TIE_ROOM < 400
        for order in (("-age",), ("age",), ("-age", "-pk")):
            for start, stop in ((0, 10), (5, 15), (0, 1), (395, 405), (0, 256)):
                listener.commands.clear()
                got = [d.pk for d in s.query().where(city="c").order_by(*order)[start:stop]]
                want = [
                    d.pk for d in reference.query().where(city="c").order_by(*order)[start:stop]
                ]
                assert got == want, (order, start, stop)
        # After a page whose ties overflowed, the next ones of that order sort by pk at once,
        # until one finds its ties fit; then they sort by the keys again.
        for city, reads in (("c", 1), ("d", 1), ("d", 1), ("c", 2), ("c", 1)):
            listener.commands.clear()
            got = [d.pk for d in s.query().where(city=city).order_by("-age")[:10]]
            want = [d.pk for d in reference.query().where(city=city).order_by("-age")[:10]]
            assert got == want and listener.commands == ["aggregate"] * reads, city
    client.close()


@needs_server
def test_pages_and_first_check_the_list_guards_on_what_they_read(storage: BaseStorage) -> None:
    """The filter goes without its list guards; a list at a queried field never comes back."""
    records: dict[str, dict[str, Any]] = {
        f"p{i:03}": {"city": "c", "age": i % 40, "email": f"e{i}"} for i in range(300)
    }
    # Lists holding the value, first in pk order and first by age: MongoDB matches them.
    records["a0"] = {"city": ["c", "d"], "age": 99, "email": ["e5", "x"]}
    records["a1"] = {"city": ["c"], "age": 98, "email": ["e6"]}
    records["a2"] = {"city": [], "age": 97}
    reference = MemoryStorage()
    for s in (storage, reference):
        s.create_index(("city", "-age"))
        s.create_index("email")
        for pk, record in records.items():
            s.save(record, primary_key=pk)
    queries: list[Callable[[BaseStorage], Any]] = [
        lambda s: s.query().where(city="c").order_by("-age")[:10],
        lambda s: s.query().where(city="c").order_by("-age")[3:12],
        lambda s: s.query().where(city="c").order_by("age")[:5],
        lambda s: s.query().where(city="c")[:7],
        lambda s: s.query().where(city="c"),
        lambda s: s.query().where(email="e5")[:1],
        lambda s: s.query().where(email="e6"),
        lambda s: s.query().where(city="c", age__gte=30).order_by("-age", "email")[:4],
    ]
    for make in queries:
        assert [d.pk for d in make(storage)] == [d.pk for d in make(reference)]
    assert storage.query().where(email="e5").first().pk == "p005"  # type: ignore[union-attr]


class _Replies(CommandListener):
    """The number of documents in each reply of a find or getMore."""

    def __init__(self) -> None:
        self.sizes: list[tuple[str, int]] = []

    def started(self, event: CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: Any) -> None:
        if event.command_name in ("find", "getMore"):
            cursor = event.reply.get("cursor", {})
            batch = cursor.get("firstBatch", cursor.get("nextBatch", []))
            self.sizes.append((event.command_name, len(batch)))

    def failed(self, event: Any) -> None:
        pass


@needs_server
def test_a_stream_reads_a_bounded_batch_per_reply(
    server: TemporaryMongo, collection_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query streams STREAM_BATCH documents per reply (not 16 MB of them), every match
    once, in pk order, the list guards checked across the replies."""
    from pymodels.ext.mongodb import _storage

    monkeypatch.setattr(_storage, "STREAM_BATCH", 50)
    listener = _Replies()
    client: Any = pymongo.MongoClient(server.url, event_listeners=[listener])
    records: dict[str, dict[str, Any]] = {
        f"p{(i * 47) % 333:03}": {"age": i % 90, "tags": [f"t{i % 7}"]} for i in range(333)
    }
    # Lists at the queried field, between the replies: MongoDB matches them, the contract not.
    records.update({f"p{i:03}l": {"age": [60, 70]} for i in (49, 50, 51, 200)})
    reference = MemoryStorage()
    with pymodels.get_storage(
        {"backend": "mongodb", "client": client, "collection": collection_name}
    ) as s:
        for target in (s, reference):
            for pk, record in records.items():
                target.save(record, primary_key=pk)
        queries: list[Callable[[BaseStorage], Any]] = [
            lambda t: t.query().where(age__gt=50),
            lambda t: t.query(),
            lambda t: t.query().order_by("-pk"),
            lambda t: t.query().where(age__gt=50)[10:180],
        ]
        for query in queries:
            listener.sizes.clear()
            got = [d.pk for d in query(s)]
            assert got == [d.pk for d in query(reference)]
            assert len(set(got)) == len(got)
            assert max(size for _, size in listener.sizes) <= 50, listener.sizes
            assert [name for name, _ in listener.sizes].count("getMore") >= 2, listener.sizes
    client.close()


def test_the_page_pipeline_uses_only_allowed_stages() -> None:
    from pymodels.ext.mongodb._query import page_pipeline, sort_spec

    with MemoryStorage() as memory:
        query = (
            memory.query()
            .where(pymodels.Q(a__gt=1) | pymodels.Q(b="$where"))
            .order_by("-a", "b__c")
        )
        condition, order = query.condition, query._full_order
    keys = [k for k in order if not k.is_pk]
    native = compile_condition(condition).native or {}
    pipeline = page_pipeline(native, sort_spec(order), 10, keys)
    stages = {"$match", "$facet", "$sort", "$limit", "$group"}
    assert set(_operators(pipeline)) <= OPERATORS | stages | {"$type"}
    assert not set(_operators(pipeline)) & {"$where", "$function", "$accumulator", "$expr"}
    # The $type expressions name validated field paths only.
    kinds = pipeline[1]["$facet"]["kinds"][0]["$group"]["_id"]
    assert kinds == {"k0": {"$type": "$a"}, "k1": {"$type": "$b.c"}, "k1p1": {"$type": "$b"}}


@needs_server
@pytest.mark.parametrize(
    ("base", "odd"),
    [(True, 7), (Decimal("2.5"), 7), (Decimal("2.5"), [7]), ("s", 7), ("s", [7])],
    ids=repr,
)
def test_ordered_pages_see_a_number_past_the_first_page(
    storage: BaseStorage, base: Any, odd: Any
) -> None:
    """A number (or a list holding one) among other kinds past the first page (one key)."""
    records = {f"p{i:03}": {"v": base, "city": "c"} for i in range(300)}
    records["odd"] = {"v": odd, "city": "c"}
    reference = MemoryStorage()
    for s in (storage, reference):
        for pk, record in records.items():
            s.save(record, primary_key=pk)
    for order in (("v",), ("-v",)):
        for start, stop in ((0, 5), (290, 301)):
            got = [d.pk for d in storage.query().where(city="c").order_by(*order)[start:stop]]
            want = [d.pk for d in reference.query().where(city="c").order_by(*order)[start:stop]]
            assert got == want, (order, start, stop)

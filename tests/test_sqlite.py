"""SQLite backend: what only SQLite needs checking (the conformance suite covers the contract).

Every engine trap the backend works around has a test here: ``json_extract`` gives 1 for
true, text compares greater than numbers, ``LIKE`` ignores ASCII case, ``DISTINCT`` merges
1, 1.0 and true, and ``lower()`` folds ASCII only. Then the file layout, URLs, indexes and
plans, optimistic concurrency in one statement, and a SIGKILL in the middle of a bulk save.
Threads, fork, four processes writing one file, transactions seen from another connection,
unique indexes and partial updates in SQL are the conformance suite's (by capability).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pymodels
from pymodels import Document, Q
from pymodels.backend import MISSING
from pymodels.cli.app import main as cli_main
from pymodels.errors import (
    BulkWriteError,
    ConfigurationError,
    ConflictError,
    CorruptData,
    IntegrityError,
    LockTimeout,
    NotSupported,
    PyModelsError,
)
from pymodels.ext import sqlite as backend
from pymodels.ext._sql.encoding import dumps
from pymodels.ext._sql.sqlite_dialect import SQLiteDialect, shadow_names
from pymodels.ext.sqlite import _shadow, _storage
from pymodels.testing import oracle
from pymodels.testing import strategies as pst
from pymodels.testing.suite import check_query_case, run_in_threads


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
def storage(path: Path) -> Any:
    s = pymodels.get_storage(f"sqlite:///{path}")
    yield s
    s.close()


def pks(query: Any) -> list[str]:
    return [d.pk for d in query]


# ----------------------------------------------------------------- settings and URLs


def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pymodels.get_storage("sqlite:///rel.db?table=people") as s:
        assert isinstance(s, backend.Storage)
        assert s.settings.path == "rel.db" and s.settings.table == "people"
        s.save({"a": 1}, primary_key="x")
    assert (tmp_path / "rel.db").exists()
    with pymodels.get_storage(f"sqlite:///{tmp_path}/abs.db") as s:  # four slashes
        assert isinstance(s, backend.Storage)
        assert s.settings.path == f"{tmp_path}/abs.db"
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite3://"):
        with pymodels.get_storage(url) as s:
            assert s.features.persistent is False and s.features.concurrent_processes is False
            s.save({"a": 1}, primary_key="x")
            assert len(s) == 1
    # Two in-memory storages are two databases.
    with pymodels.get_storage("sqlite://") as a, pymodels.get_storage("sqlite://") as b:
        a.save({"a": 1})
        assert len(b) == 0
    assert backend.features.persistent is True


def test_default_storage_is_sqlite_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pymodels.get_storage() as s:
        assert s.backend == "pymodels.ext.sqlite"
        s.save({"a": 1})
    assert (tmp_path / "pymodels.db").exists()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///x.db?colour=red",
        "sqlite:///x.db?table=bad-name",
        "sqlite:///x.db?table=sqlite_master",
        "sqlite:///x.db?table=pymodels_meta",
        "sqlite://host/x.db",
    ],
)
def test_bad_settings(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError):
        pymodels.get_storage(url)


def test_layout_is_plain_json_in_one_table(storage: Any, path: Path) -> None:
    storage.save({"n": 1, "d": Decimal("2.50"), "when": dt.date(2024, 5, 1)}, primary_key="p")
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    (body,) = raw.execute("SELECT body FROM documents WHERE pk = 'p'").fetchone()
    assert raw.execute("SELECT json_extract(?, '$.n')", (body,)).fetchone()[0] == 1
    assert '"$":"62024-05-01"' in body and '"$r":"2.50"' in body
    # The library's own data is in another table, never in the namespace: the
    # table's format and the fields with shadow columns (slot order).
    assert dict(raw.execute("SELECT name, value FROM pymodels_meta")) == {
        "documents.format": "3",
        "documents.columns": '["n", "d", "when"]',
    }
    row = raw.execute('SELECT "r1:n", "v1:n", "r2:d", "v2:d", "r3:when" FROM documents')
    assert row.fetchone() == (2, 1, 3, "3p1000025", 6)
    assert list(storage) == ["p"]
    raw.close()


def test_a_without_rowid_table_of_earlier_versions_works_alike(path: Path) -> None:
    # Tables were WITHOUT ROWID before this layout change; no statement
    # names the rowid, so such a file is read, written and indexed as before.
    pymodels.get_storage(f"sqlite:///{path}").close()
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("DROP TABLE documents")
    raw.execute(
        "CREATE TABLE documents (pk TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL) WITHOUT ROWID"
    )
    raw.execute("""INSERT INTO documents VALUES ('old', '{"email":"o@x","n":1}')""")
    raw.close()
    with pymodels.get_storage(f"sqlite:///{path}") as s:
        s.create_index("email")
        s.save_many({"email": f"u{i}@x", "n": i} for i in range(50))
        s.save({"email": "o@x", "n": 2}, primary_key="old")
        assert s.get(None, "old")["n"] == 2 and len(s) == 51
        query = s.query().where(email="u7@x")
        assert [d["n"] for d in query] == [7]
        assert "USING INDEX pm_documents_" in query.explain()
        assert "TEMP B-TREE" not in query.explain()
        assert s.query().where(n__gte=40).delete() == 10 and len(s) == 41
        s.delete("old")
        assert "old" not in s and len(s) == 40


def test_new_files_get_16_kib_pages_and_older_files_keep_theirs(path: Path) -> None:
    # The page size is fixed when a file is first written: new files get the
    # backend's, a file made with SQLite's default 4 KiB pages (by an earlier
    # build or another program) keeps them and works alike.
    with pymodels.get_storage(f"sqlite:///{path}") as s:
        s.create_index(("city", "-age"))
        s.save_many({"city": f"c{i % 3}", "age": i} for i in range(300))
        assert isinstance(s, backend.Storage)
        with s._db() as conn:
            assert conn.execute("PRAGMA cache_size").fetchone()[0] == -backend.CACHE_KIB
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA page_size").fetchone()[0] == backend.PAGE_SIZE == 16384
    raw.close()
    old = path.with_name("old.db")
    raw = sqlite3.connect(old, isolation_level=None)
    raw.execute("PRAGMA journal_mode = DELETE")  # also switched to WAL on open
    raw.execute("CREATE TABLE t (x)")
    raw.close()
    with pymodels.get_storage(f"sqlite:///{old}") as s:
        s.create_index(("city", "-age"))
        s.save_many({"city": f"c{i % 3}", "age": i} for i in range(300))
        query = s.query().where(city="c1").order_by("-age")[:3]
        assert [d["age"] for d in query] == [298, 295, 292]
        assert s.query().where(age__gt=150).count() == 149
    raw = sqlite3.connect(old)
    assert raw.execute("PRAGMA page_size").fetchone()[0] == 4096
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_reads_go_through_a_memory_map_of_the_size_set(path: Path) -> None:
    # mmap_size reaches every connection of a file storage, the read-only one too
    # (none unless set); a negative size is refused naming the setting.
    with pymodels.get_storage(f"sqlite:///{path}") as s:
        assert isinstance(s, backend.Storage)
        s.save_many({"n": i} for i in range(50))
        with s._db() as conn:
            assert conn.execute("PRAGMA mmap_size").fetchone()[0] == backend.MMAP_SIZE == 0
    for url in (
        f"sqlite:///{path}?mmap_size=65536",
        f"sqlite:///{path}?read_only=true&mmap_size=65536",
    ):
        with pymodels.get_storage(url) as s:
            assert isinstance(s, backend.Storage)
            assert s.query().where(n__gte=10).count() == 40
            with s._db() as conn:
                assert conn.execute("PRAGMA mmap_size").fetchone()[0] == 65536
    with pytest.raises(ConfigurationError, match="mmap_size"):
        pymodels.get_storage(f"sqlite:///{path}?mmap_size=-1")


def test_tables_are_separate_namespaces(path: Path) -> None:
    with (
        pymodels.get_storage(f"sqlite:///{path}?table=a") as a,
        pymodels.get_storage(f"sqlite:///{path}?table=b") as b,
    ):
        a.save({"x": 1}, primary_key="k")
        assert "k" in a and "k" not in b and len(b) == 0


def test_read_only_paths(path: Path, tmp_path: Path) -> None:
    # Reads and refused writes are the conformance suite's; here, SQLite's URI
    # filenames: a read-only file is opened as file:...?mode=ro.
    odd = tmp_path / "100% what?#.db"
    with pymodels.get_storage({"backend": "sqlite", "path": str(odd)}) as rw:
        rw.save({"a": 1}, primary_key="k")
    with pymodels.get_storage({"backend": "sqlite", "path": str(odd), "read_only": True}) as ro:
        assert ro.get(None, "k")["a"] == 1
    with pytest.raises(ConfigurationError):
        pymodels.get_storage({"backend": "sqlite", "path": str(path) + "x", "read_only": True})


def test_foreign_nulls_read_as_absent(storage: Any, path: Path) -> None:
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("""INSERT INTO documents VALUES ('k', '{"a": null, "b": {"c": null, "d": 1}}')""")
    raw.close()
    assert dict(storage.get(None, "k")) == {"b": {"d": 1}}
    assert pks(storage.query().where(a__exists=False)) == ["k"]
    assert pks(storage.query().where(b__c__exists=True)) == []


#: Bodies another program might store that hold no record, and what the error says.
_NO_RECORD = {
    "not json": "not valid JSON",
    "[1, 2]": "it holds an array, not an object",
    "5": "it holds a number, not an object",
    '"text"': "it holds a string, not an object",
    '{"$": "zzz"}': "unknown tagged value",
    '{"a": {"$": "Dnot-a-date"}}': "tagged value",
}


@pytest.mark.parametrize("body", list(_NO_RECORD))
def test_a_body_that_holds_no_record_is_corrupt_data_naming_its_pk(
    storage: Any, path: Path, body: str
) -> None:
    storage.save_many([{"a": i} for i in range(3)])
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("INSERT INTO documents (pk, body) VALUES ('bad', ?)", (body,))
    raw.close()
    # Every way a record is read: one, several, a page, a stream, an ordered page.
    reads: list[Callable[[], Any]] = [
        lambda: storage.get(None, "bad"),
        lambda: storage.get_many(None, ["bad"]),
        # "bad" sorts after the generated pks: the fourth in pk order.
        lambda: list(storage.query()[3:4]),
        lambda: list(storage.query()),
        lambda: list(storage.query().order_by("-a")[:10]),
    ]
    for read in reads:
        with pytest.raises(CorruptData) as info:
            read()
        assert info.value.pk == "bad" and info.value.path == str(path)
        assert _NO_RECORD[body] in str(info.value)
        assert str(info.value).startswith(f"sqlite: {path}, table 'documents': record 'bad'")
    if body == "not json":
        # A query that reads the body in SQL meets it before any pk is known.
        with pytest.raises(CorruptData, match=r"WHERE NOT json_valid\(body\)") as info:
            storage.query().where(a__exists=False).first()
        assert info.value.path == str(path)
        with contextlib.closing(sqlite3.connect(path)) as conn:
            found = conn.execute('SELECT pk FROM "documents" WHERE NOT json_valid(body)')
            assert found.fetchall() == [("bad",)]
    # What never loads a record still works, and finds the one to repair.
    assert storage.query().count() == 4
    assert "bad" in storage
    storage.delete("bad")
    assert len(list(storage.query())) == 3


def test_a_damaged_file_or_another_kind_of_file_is_corrupt_data(tmp_path: Path) -> None:
    other = tmp_path / "notes.db"
    other.write_bytes(b"these are not the pages of a database\n" * 200)
    with pytest.raises(CorruptData, match="not a SQLite database") as info:
        pymodels.get_storage(f"sqlite:///{other}")
    assert info.value.path == str(other)
    damaged = tmp_path / "damaged.db"
    with pymodels.get_storage(f"sqlite:///{damaged}") as s:
        s.save_many([{"a": i, "text": "x" * 200} for i in range(2000)])
    size = damaged.stat().st_size
    with damaged.open("r+b") as f:  # the table's pages, past the schema's first page
        f.seek(size // 2)
        f.write(b"\xff" * 16384 * 4)
    with (
        pytest.raises(CorruptData, match="damaged") as info,
        pymodels.get_storage(f"sqlite:///{damaged}") as s,
    ):
        list(s.query())
    assert info.value.path == str(damaged)


def test_a_lock_held_past_the_timeout(path: Path, storage: Any) -> None:
    storage.save({"a": 1}, primary_key="k")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
    try:
        with pymodels.get_storage(f"sqlite:///{path}?timeout=0.2") as s:
            started = time.monotonic()
            with pytest.raises(LockTimeout, match="locked") as info:
                s.save({"a": 2}, primary_key="k")
            assert time.monotonic() - started >= 0.2
            assert isinstance(info.value.__cause__, sqlite3.OperationalError)
            with pytest.raises(LockTimeout):  # no record failed: not a BulkWriteError
                s.save_many([{"a": 3}])
            assert s.get(None, "k")["a"] == 1  # readers are never blocked (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert storage.get(None, "k")["a"] == 1 and len(storage) == 1


def test_driver_errors_are_wrapped(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"this is no database" * 100)
    with pytest.raises(PyModelsError) as info:
        pymodels.get_storage(f"sqlite:///{bad}")
    assert not isinstance(info.value, sqlite3.Error)
    assert isinstance(info.value.__cause__, sqlite3.Error)


@pytest.mark.parametrize(
    ("index", "record", "named"),
    [
        ("email", {"email": "a@x"}, "unique index on email:"),  # shadow columns
        ("home__city", {"home": {"city": "Oulu"}}, "unique index on home__city:"),  # expressions
        (("city", "-age"), {"city": "Oulu", "age": 3}, "unique index on city, age:"),
    ],
)
def test_a_unique_index_refusing_a_write_is_named_by_its_fields(
    path: Path, index: Any, record: dict[str, Any], named: str
) -> None:
    # SQLite names shadow columns ("documents.r1:email, ...") or an index by its digest
    # ("index 'pm_documents_...'"); the message names the fields either way, also
    # when another storage made the index.
    with backend.Storage(path=str(path)) as maker, backend.Storage(path=str(path)) as other:
        maker.create_index(index, unique=True)
        maker.save(record, primary_key="first")
        for storage in (maker, other):
            with pytest.raises(IntegrityError) as refused:
                storage.save(record)
            assert str(refused.value) == (
                f"sqlite: {named} another record holds the same value already"
            )
        with pytest.raises(BulkWriteError) as failed:
            other.save_many([{"n": 1}, record])
        assert failed.value.index == 1 and named in str(failed.value)
        assert len(other) == 1  # the batch rolled back


# ------------------------------------------------------------------------ engine traps


def test_trap_json_extract_gives_1_for_true(storage: Any) -> None:
    storage.save({"a": True}, primary_key="bool")
    storage.save({"a": 1}, primary_key="int")
    storage.save({"a": 1.0}, primary_key="float")
    assert pks(storage.query().where(a=1)) == ["float", "int"]
    assert pks(storage.query().where(a=True)) == ["bool"]
    assert pks(storage.query().where(a__gt=0)) == ["float", "int"]
    assert pks(storage.query().where(a__in=[True])) == ["bool"]
    assert pks(storage.query().where(a__gte=1, a__lte=1)) == ["float", "int"]


def test_trap_text_compares_greater_than_numbers(storage: Any) -> None:
    storage.save({"a": "6"}, primary_key="str")
    storage.save({"a": 5}, primary_key="five")
    storage.save({"a": 7}, primary_key="seven")
    storage.save({"a": b"\x00"}, primary_key="bytes")
    assert pks(storage.query().where(a__gt=5)) == ["seven"]
    assert pks(storage.query().where(a__lt="7")) == ["str"]
    assert pks(storage.query().order_by("a")) == ["five", "seven", "str", "bytes"]
    assert pks(storage.query().order_by("-a")) == ["bytes", "str", "seven", "five"]


def test_trap_like_ignores_ascii_case_and_treats_percent_as_wildcard(storage: Any) -> None:
    for pk, text in [("lower", "abc"), ("upper", "ABC"), ("pct", "a%c"), ("under", "a_c")]:
        storage.save({"s": text}, primary_key=pk)
    assert pks(storage.query().where(s__startswith="a")) == ["lower", "pct", "under"]
    assert pks(storage.query().where(s__startswith="A")) == ["upper"]
    assert pks(storage.query().where(s__startswith="a%")) == ["pct"]
    assert pks(storage.query().where(s__endswith="_c")) == ["under"]
    assert pks(storage.query().where(s__contains="%")) == ["pct"]
    # A prefix ending in the last code point has no successor: no upper bound at all.
    storage.save({"s": "\U0010ffff\U0010ffffz"}, primary_key="top")
    assert pks(storage.query().where(s__startswith="\U0010ffff")) == ["top"]


def test_trap_distinct_merges_one_one_point_zero_and_true(storage: Any) -> None:
    for i, value in enumerate([1, 1.0, True, [1], [1.0], [True], "1"]):
        storage.save({"a": value}, primary_key=f"k{i}")
    assert storage.query().values("a") == [1, True, [1], [True], "1"]
    assert pks(storage.query().where(a=[1])) == ["k3", "k4"]
    assert pks(storage.query().where(a="[1]")) == []


def test_trap_lower_folds_ascii_only(storage: Any) -> None:
    # Python lowers beyond ASCII (and "İ" to two code points); SQLite's lower() does not.
    storage.save({"s": "İSTANBUL"}, primary_key="tr")
    storage.save({"s": "\u212a"}, primary_key="kelvin")  # KELVIN SIGN lowers to "k"
    storage.save({"s": "ÉCOLE"}, primary_key="fr")
    assert pks(storage.query().where(s__istartswith="i̇s")) == ["tr"]
    assert pks(storage.query().where(s__iequals="k")) == ["kelvin"]
    assert pks(storage.query().where(s__icontains="éco")) == ["fr"]
    assert pks(storage.query().where(s__imatches="^é")) == ["fr"]
    assert pks(storage.query().where(s__like="école")) == ["fr"]


def test_trap_not_over_null_keeps_records_without_the_field(storage: Any) -> None:
    storage.save({"a": 9}, primary_key="big")
    storage.save({"a": 1}, primary_key="small")
    storage.save({}, primary_key="none")
    assert pks(storage.query().where_not(a__gt=5)) == ["none", "small"]
    assert pks(storage.query().where(~(Q(a__gt=5) | Q(a__lt=0)))) == ["none", "small"]


def test_trap_json_path_labels_compare_with_the_escaped_key(storage: Any) -> None:
    # SQLite matches a quoted path label against the key's raw (escaped) JSON
    # token, but json_set writes a new label by escaping it again.
    names = ["a\\b", "tab\there", "bell\x07", "it's", "a[0]", "é\u2028"]
    storage.save({n: i for i, n in enumerate(names)} | {"x": {}}, primary_key="k")
    for i, n in enumerate(names):
        assert pks(storage.query().where(**{n: i})) == ["k"]
        assert pks(storage.query().order_by(n)) == ["k"]
        storage.update("k", **{f"{n}__inc": 1, f"x__{n}": i})
    assert dict(storage.get(None, "k")) == {n: i + 1 for i, n in enumerate(names)} | {
        "x": {n: i for i, n in enumerate(names)}
    }
    assert pks(storage.query().where(**{"x__tab\there": 1})) == ["k"]


def test_every_op_runs_in_sqlite(storage: Any) -> None:
    assert set(backend.features.ops.values()) == {"native"}
    plan = storage.query().where(s__imatches="x", t__like="a b", u__iendswith="Z").explain()
    assert "python filter: none" in plan


def test_lists_and_dicts_at_an_order_key_are_sorted_exactly(storage: Any) -> None:
    values = [[10], [9], [9, 1], {"b": 1}, {"a": 2}, 3, "x", [True], []]
    for i, value in enumerate(values):
        storage.save({"v": value, "i": i}, primary_key=f"k{i}")
    expected = sorted(range(len(values)), key=lambda i: pymodels.values.sort_key(values[i]))
    got = [d["i"] for d in storage.query().order_by("v")]
    assert got == expected
    assert [d["i"] for d in storage.query().order_by("v")[3:6]] == expected[3:6]
    assert [d["i"] for d in storage.query().order_by("-v")[:4]] == expected[::-1][:4]


# ------------------------------------------------------------------- indexes and plans


def test_indexes_are_used_by_the_queries(storage: Any) -> None:
    storage.create_index("email")
    storage.create_index(("city", "-age"))
    storage.save_many({"email": f"u{i}@x", "city": f"c{i % 5}", "age": i % 70} for i in range(500))
    plan = storage.query().where(email="u7@x").explain()
    # The pk ends every index entry, so the pk order needs no sort.
    assert "USING INDEX pm_documents_" in plan and "TEMP B-TREE" not in plan
    plan = storage.query().where(city="c1").order_by("-age")[:10].explain()
    assert "USING INDEX pm_documents_" in plan and "TEMP B-TREE" not in plan
    ages = [d["age"] for d in storage.query().where(city="c1").order_by("-age")[:10]]
    assert ages == sorted(ages, reverse=True) and len(ages) == 10
    plan = storage.query().where(email__startswith="u1").explain()
    assert "USING INDEX" in plan


def test_after_seeks_the_index_to_the_anchor(storage: Any) -> None:
    # Keyset pagination: the anchor's first order key bounds the statement, so an
    # index on it seeks there instead of reading every earlier row.
    storage.create_index(("city", "-age"))
    storage.save_many({"city": f"c{i % 5}", "age": i % 70, "i": i} for i in range(500))
    for field in ("n", "tags"):  # an unindexed number and a list: bounded, not sought
        storage.save({"city": "c1", "age": 5, field: [1] if field == "tags" else 2})
    q = storage.query().where(city="c1").order_by("-age")
    expected = [d.pk for d in q]
    anchor = q[40:41].first()
    plan = q.after(anchor)[:10].explain()
    assert "SEARCH documents USING INDEX pm_documents_" in plan and "<=" in plan, plan
    assert "TEMP B-TREE" not in plan and "engine from the anchor" in plan
    assert [d.pk for d in q.after(anchor)[:10]] == expected[41:51]
    by_city = storage.query().order_by("city", "-age")
    middle = by_city[250:251].first()
    assert "USING INDEX" in by_city.after(middle).explain()
    assert [d.pk for d in by_city.after(middle)[:5]] == [d.pk for d in by_city[251:256]]
    # The pk order (no order_by): in row order, a seek by rowid (tests/test_sqlite_row_order.py).
    everyone = storage.query()
    assert "(rowid>?)" in everyone.after(expected[3]).explain()
    # A list and an absent value as anchors.
    for field in ("tags", "n"):
        q = storage.query().order_by(field)
        anchor = q.where(**{f"{field}__exists": True}).first()
        assert [d.pk for d in q.after(anchor)] == [d.pk for d in q][
            [d.pk for d in q].index(anchor.pk) + 1 :
        ]


def test_meta_indexes_are_created_on_first_save(storage: Any, path: Path) -> None:
    class Person(Document):
        name: str
        city: str = ""

        class Meta:
            indexes = ["name", ("city", "-name"), {"fields": ["city"], "unique": False}]

    def indexes() -> list[str]:
        raw = sqlite3.connect(path)
        rows = raw.execute("SELECT name FROM sqlite_schema WHERE type = 'index'").fetchall()
        raw.close()
        return sorted(name for (name,) in rows if name.startswith("pm_documents_"))

    Person(name="Ann").save(storage)
    assert len(indexes()) == 3
    storage.ensure_indexes(Person)  # idempotent
    storage.create_index("name")
    assert len(indexes()) == 3


def test_index_kinds_are_not_supported(storage: Any) -> None:
    with pytest.raises(NotSupported):
        storage.create_index("a", kind="gin")


# ----------------------------------------------------------------------- updates


def test_optimistic_concurrency_is_one_statement(storage: Any) -> None:
    class Counter(Document):
        n: int = 0

        class Meta:
            version_field = "v"

    c = Counter()
    c.save(storage)
    stale = Counter.object(storage, c.pk)  # type: ignore[arg-type]
    c.n = 1
    c.save(storage)
    stale.n = 2
    with pytest.raises(ConflictError):
        stale.save(storage)


# ----------------------------------------------------------- transactions, crashes


def test_a_transaction_is_invisible_to_other_threads_until_commit(storage: Any) -> None:
    seen: list[bool] = []
    inside, checked = threading.Event(), threading.Event()

    def look() -> None:
        inside.wait()
        with pymodels.get_storage(f"sqlite:///{storage.settings.path}") as other:
            seen.append("k" in other)
        checked.set()

    t = threading.Thread(target=look)
    t.start()
    with storage.transaction():
        storage.save({"a": 1}, primary_key="k")
        inside.set()
        checked.wait(10)
    t.join()
    assert seen == [False] and "k" in storage


def test_sigkill_during_bulk_save_keeps_committed_batches(path: Path) -> None:
    child = textwrap.dedent(
        f"""
        import pymodels
        s = pymodels.get_storage("sqlite:///{path}")
        batch = 0
        while True:
            s.save_many(({{"batch": batch, "i": i, "pad": "x" * 200}} for i in range(1000)),
                        batch_size=1000)
            batch += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if not path.exists():
                continue
            try:
                raw = sqlite3.connect(path, timeout=10)
                n = raw.execute("SELECT count(*) FROM documents").fetchone()[0]
                raw.close()
            except sqlite3.Error:
                continue
            if n >= 5000:
                break
        time.sleep(0.05)  # most likely in the middle of the next batch now
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()
    with pymodels.get_storage(f"sqlite:///{path}") as s:
        total = len(s)
        assert total >= 5000 and total % 1000 == 0  # whole batches only
        batches = s.query().values("batch")
        assert sorted(batches) == list(range(total // 1000))
        for b in batches:
            assert s.query().where(batch=b).count() == 1000
        for doc in s.query()[:50]:
            assert doc["pad"] == "x" * 200


def test_read_only_opens_a_database_in_a_read_only_directory() -> None:
    """A WAL file's -shm cannot be made there: read_only falls back to immutable."""
    folder = tempfile.mkdtemp()
    try:
        path = os.path.join(folder, "db.sqlite")
        with pymodels.get_storage({"backend": "sqlite", "path": path}) as s:
            s.save({"a": 1}, primary_key="k")
        os.chmod(folder, 0o555)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                if os.geteuid() == 0:  # root writes anywhere: become nobody
                    os.setgid(65534)
                    os.setuid(65534)
                with pymodels.get_storage(
                    {"backend": "sqlite", "path": path, "read_only": True}
                ) as ro:
                    code = 0 if (len(ro), ro.get(None, "k")["a"]) == (1, 1) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.chmod(folder, 0o755)
        shutil.rmtree(folder)


def test_an_iterator_left_open_past_close_says_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    for _ in range(3):
        s = pymodels.get_storage({"backend": "sqlite", "path": str(tmp_path / "db.sqlite")})
        s.save_many({"n": i} for i in range(3000))
        it = iter(s.query())
        next(it)
        s.close()
        del it
        gc.collect()
    assert "Exception ignored" not in capfd.readouterr().err


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("nodir/x.db", "directory nodir does not exist"),
        ("adir", "adir is a directory"),
        ("afile/x.db", "afile is not a directory"),
    ],
)
def test_file_errors_name_the_path_and_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, cause: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    with pytest.raises(PyModelsError, match=f"cannot open {name}: {cause}"):
        pymodels.get_storage(f"sqlite:///{name}")


def test_repr_shows_the_file_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pymodels.get_storage("sqlite:///app.db") as s:
        assert repr(s) == "<pymodels.ext.sqlite.Storage at 'app.db'>"
    with pymodels.get_storage("sqlite:///app.db?table=people") as s:
        assert s.location == "app.db?table=people"
    assert repr(s) == "<pymodels.ext.sqlite.Storage at 'app.db?table=people' closed>"
    with pymodels.get_storage("sqlite://") as s:
        assert s.location == ":memory:"


# ---------------------------------------------------------- counting from an index


_COUNTED: list[dict[str, Any]] = [
    {"age__gt": 50},
    {"age__gte": 50},
    {"age__lt": "m"},
    {"age": True},
    {"age__between": (dt.date(2020, 1, 1), dt.date(2030, 1, 1))},
    {"age__exists": False},
    {"age__in": [1, 60, "x"]},
]


def _tricky_bodies() -> list[str]:
    """Records of every kind at ``age`` and ``city``, and foreign data a tool could write."""
    records = [
        {"city": "a", "age": 60},
        {"city": "a", "age": 50.5},
        {"city": 5, "age": 61},
        {"age": 70},  # no city: rank 0 leads the index
        {"city": "b"},
        {"city": "b", "age": True},
        {"city": "b", "age": "zz"},
        {"city": "b", "age": "abc"},
        {"city": [1], "age": dt.date(2024, 5, 1)},
        {"city": {"k": 1}, "age": Decimal("55")},
        {"city": b"x", "age": [60]},
    ]
    bodies = [dumps(r) for r in records]
    # Tags no pymodels writes (a first character below "0", an empty one) and a JSON null.
    bodies += ['{"city": {"$": "!odd"}, "age": 60}', '{"city": {"$": ""}, "age": 99}']
    bodies += ['{"city": null, "age": 51}', '{"age": null, "city": "c"}']
    return bodies


def legacy_file(path: Path, table: str = "documents") -> Path:
    """An empty table as builds before shadow columns made it (format 1: pk and body only)."""
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute(f"PRAGMA page_size = {backend.PAGE_SIZE}")
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute(f"CREATE TABLE {table} (pk TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL)")
    raw.execute(
        "CREATE TABLE IF NOT EXISTS pymodels_meta "
        "(name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID"
    )
    raw.execute("INSERT INTO pymodels_meta VALUES (?, '1')", (f"{table}.format",))
    raw.close()
    return path


def _insert_tricky_bodies(*storages: Any) -> None:
    """Write :func:`_tricky_bodies` with plain SQL, as programs other than pymodels would."""
    for s in storages:
        with s._db() as conn:
            for i, body in enumerate(_tricky_bodies()):
                conn.execute('INSERT INTO "documents" (pk, body) VALUES (?, ?)', (f"k{i:02}", body))


def test_counts_read_only_the_index_and_give_the_tables_answer(tmp_path: Path) -> None:
    # Expression indexes: a table of the legacy format (no shadow columns).
    indexed = backend.Storage(path=str(legacy_file(tmp_path / "indexed.db")))
    plain = backend.Storage(path=str(legacy_file(tmp_path / "plain.db")))
    indexed.create_index(("city", "-age"))
    _insert_tricky_bodies(indexed, plain)
    for lookups in _COUNTED:
        q, reference = indexed.query().where(**lookups), plain.query().where(**lookups)
        statement = indexed._count_from_index(q._compiled.native)
        assert statement is not None, lookups
        text, params = indexed._dialect.render(statement)
        with indexed._db() as conn:
            plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + text, params))
        assert "USING INDEX pm_documents_" in plan, plan
        # The reference is the same condition counted by a table scan (foreign tags
        # would not load as documents, but they count).
        assert q.count() == reference.count(), lookups
        assert (
            indexed.query().where_not(**lookups).count()
            == plain.query().where_not(**lookups).count()
        ), lookups
    # A path that leads an index, or that no index holds: SQLite's own plan.
    assert indexed._count_from_index(indexed.query().where(city="a")._compiled.native) is None
    assert indexed._count_from_index(indexed.query().where(x=1)._compiled.native) is None
    assert indexed.query().where(city="b", age__gt="a").count() == 2
    assert [indexed.query().where(age__gt=50).count(), plain.query().count()] == [7, 15]


def test_a_count_on_the_second_key_walks_the_first_keys_values(tmp_path: Path) -> None:
    with backend.Storage(path=str(legacy_file(tmp_path / "walk.db"))) as s:
        s.create_index(("city", "-age"))
        records: list[dict[str, Any]] = [
            {"city": c, "age": a} for c in "abc" for a in range(40, 60)
        ]
        records += [{"age": 55}, {"city": None, "age": 58}, {"city": 3, "age": 51.5}]
        s.save_many(records)
        where = s.query().where(age__gt=50)._compiled.native
        assert where is not None
        # Five values of city (none, 3, "a", "b", "c"): five ranges counted.
        assert s._count_by_prefix(where) == 3 * 9 + 3
        assert s.query().where(age__gt=50).count() == 30
        assert s.query().where_not(age__gt=50).count() == len(records) - 30
        # Past PREFIX_WALK_MAX values of the first key: the whole index is counted instead.
        s.save_many({"city": f"x{i}", "age": 99} for i in range(backend.PREFIX_WALK_MAX))
        assert s._count_by_prefix(where) is None
        assert s.query().where(age__gt=50).count() == 30 + backend.PREFIX_WALK_MAX
        # Two paths, or a path that is not an index's second key: no walk.
        both = s.query().where(age__gt=50, city="a")._compiled.native
        assert both is not None and s._count_by_prefix(both) is None


def test_a_count_survives_its_index_being_dropped(path: Path) -> None:
    storage = backend.Storage(path=str(legacy_file(path)))
    storage.create_index(("city", "age"))
    storage.save_many([{"city": "a", "age": i} for i in range(10)])
    assert storage.query().where(age__gte=5).count() == 5  # learns the index
    with sqlite3.connect(path) as other:
        (name,) = other.execute("SELECT name FROM sqlite_master WHERE name LIKE 'pm_%'").fetchone()
        other.execute(f'DROP INDEX "{name}"')
    assert storage.query().where(age__gte=5).count() == 5
    storage.close()


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=pst.query_cases())
def test_counts_from_an_index_match_the_oracle(
    tmp_path: Path, case: tuple[dict[str, dict[str, Any]], dict[str, Any]]
) -> None:
    """Any records, any condition, an index holding its paths behind another: the oracle's count."""
    records, spec = case
    spec = {k: v for k, v in spec.items() if k in ("where", "where_not")}
    paths: list[str] = []
    for cond in spec.get("where", []) + spec.get("where_not", []):
        for lookup in pst.to_q(cond).lookups():
            if lookup.key not in paths and lookup.key != "lead":
                paths.append(lookup.key)
    with backend.Storage(path=str(tmp_path / f"count-{uuid.uuid4().hex}.db")) as storage:
        storage.create_index(("lead", *paths))
        for pk, record in records.items():
            storage.save(record, primary_key=pk)
        q = pst.to_query(storage.query(), spec)
        assert q.count() == len(oracle.run(records, spec))


# ---------------------------------------------------------- shadow columns

_PLAIN = SQLiteDialect()  # the expressions over body that shadow columns stand for


def shadow_fields(path: Path | str, table: str = "documents") -> list[str] | None:
    """The fields with shadow columns, as the meta table lists them (None: legacy format)."""
    with sqlite3.connect(path) as raw:
        row = raw.execute(
            "SELECT value FROM pymodels_meta WHERE name = ?", (f"{table}.columns",)
        ).fetchone()
    return None if row is None else list(json.loads(row[0]))


def unshadowed_fields(path: Path | str, table: str = "documents") -> list[str]:
    """The fields the table keeps without shadow columns (long first values)."""
    with sqlite3.connect(path) as raw:
        row = raw.execute(
            "SELECT value FROM pymodels_meta WHERE name = ?", (f"{table}.unshadowed",)
        ).fetchone()
    return [] if row is None else list(json.loads(row[0]))


def assert_shadow_columns_hold_their_expressions(storage: Any) -> None:
    """Every shadow column of every row equals (value and type) the expression it replaces."""
    with storage._db() as conn:
        (text,) = conn.execute(
            "SELECT value FROM pymodels_meta WHERE name = ?", (f"{storage._table}.columns",)
        ).fetchone()
        for slot, field in enumerate(json.loads(text), 1):
            r, v = (_PLAIN.ident(n) for n in shadow_names(slot, field))
            rank, value = _PLAIN.rank((field,)), _PLAIN.value((field,))
            sql = (
                f"SELECT count(*) FROM {storage._qtable} WHERE {r} IS NOT ({rank}) "
                f"OR {v} IS NOT ({value}) OR typeof({r}) IS NOT typeof({rank}) "
                f"OR typeof({v}) IS NOT typeof({value})"
            )
            assert conn.execute(sql).fetchone()[0] == 0, field


# "y" and "Y": SQLite column names ignore ASCII case; the last one is in SQL-like text.
_FIELDS = ("x", "y", "Y", "n", "it's (body, x")
_SOME_RECORDS = st.one_of(
    pst.records(),
    st.fixed_dictionaries({}, optional={f: pst.values() for f in _FIELDS}),
)
_KEYS = st.sampled_from(["a", "b", "c", "d"])
_WRITES = st.lists(
    st.one_of(
        st.tuples(st.just("save"), _KEYS, _SOME_RECORDS, st.none()),
        st.tuples(st.just("many"), _KEYS, st.lists(_SOME_RECORDS, max_size=3), st.none()),
        st.tuples(st.just("set"), _KEYS, st.sampled_from(_FIELDS), pst.values()),
        st.tuples(st.just("nested"), _KEYS, st.sampled_from(_FIELDS), pst.scalars()),
        st.tuples(st.just("unset"), _KEYS, st.sampled_from(_FIELDS), st.none()),
        st.tuples(
            st.just("inc"),
            _KEYS,
            st.sampled_from(_FIELDS),
            st.integers(-3, 3) | st.floats(-2, 2, allow_nan=False),
        ),
        st.tuples(st.just("where_set"), _KEYS, st.sampled_from(_FIELDS), pst.scalars()),
        st.tuples(st.just("delete"), _KEYS, st.none(), st.none()),
        st.tuples(st.just("cas"), _KEYS, _SOME_RECORDS, st.none()),
    ),
    max_size=12,
)


def _apply(storage: Any, op: str, key: str, field: Any, value: Any) -> None:
    try:
        if op == "save":
            storage.save(field, primary_key=key)
        elif op == "many":
            storage.save_many(field)
        elif op == "set":
            storage.update(key, **{field: value})
        elif op == "nested":
            storage.update(key, **{f"{field}__k": value})
        elif op == "unset":
            storage.update(key, **{f"{field}__unset": True})
        elif op == "inc":
            storage.update(key, **{f"{field}__inc": value})
        elif op == "where_set":
            storage.query().where(**{f"{field}__exists": True}).update(**{field: value})
        elif op == "cas":
            # A Meta.version_field save on x: one UPDATE setting every column.
            current = storage._load(key)
            if current is not None:
                storage._compare_and_store(key, field, "x", current.get("x", MISSING))
        else:
            storage.delete(key)
    except PyModelsError:
        pass  # a missing record, an increment of a str: the write is refused whole


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=_WRITES)
def test_shadow_columns_equal_their_expressions_after_any_writes(
    tmp_path: Path, writes: list[tuple[str, str, Any, Any]]
) -> None:
    """Saves, bulk saves, partial updates in SQL and in Python, compare-and-swaps,
    deletes: each column of each row is exactly its expression over body (checked in
    SQL over the whole table)."""
    path = tmp_path / f"w-{uuid.uuid4().hex}.db"
    with backend.Storage(path=str(path)) as storage:
        storage.create_index(("x", "-y"))
        for write in writes:
            _apply(storage, *write)
        assert_shadow_columns_hold_their_expressions(storage)
        fields = shadow_fields(path)
        assert fields is not None and fields[:2] == ["x", "y"]


#: A value of every kind, with escapes, nested tagged values, empty lists and dicts.
_EVERY_KIND: dict[str, Any] = {
    "s": 'a "quoted" \\ line\nand\ttab \x01 é 😀',
    "e": "",
    "i": -(2**62),
    "z": 0,
    "f": 1e300,
    "g": -0.0,
    "t": True,
    "u": False,
    "l": [1, "a", dt.date(2024, 5, 1), [True]],
    "m": [],
    "d": {"b": dt.date(2024, 5, 1), "a": [1.5]},
    "n": {},
    "k": Decimal("2.50"),
    "b": b"\x00\xff",
    "day": dt.date(2024, 5, 1),
    "at": dt.datetime(2024, 5, 1, 12, 0),
    "tz": dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
}


def test_write_hints_are_the_ranks_the_expressions_give() -> None:
    """A write passes each field's rank where the value's type fixes it (:data:`_HINT`):
    for every such value it is what the rank expression gives over the stored JSON,
    and the tagged kinds (whose rank is in their tag) get none."""
    rank = _PLAIN.rank(("f",)).replace("(body, ", "(?, ")
    with sqlite3.connect(":memory:") as raw:
        for value in _EVERY_KIND.values():
            (expected,) = raw.execute(
                f"SELECT {rank}", (dumps({"f": value}),) * rank.count("?")
            ).fetchone()
            hint = _shadow.hints_of({"f": value}, ("f",))
            assert hint == ((expected,) if type(value) in _shadow.HINT else (None,)), value
            assert (hint == (None,)) == isinstance(value, (Decimal, bytes, dt.date)), value
        assert _shadow.hints_of({}, ("f",)) == (0,)  # absent: rank 0, value NULL


def test_every_write_gives_every_kind_the_columns_of_its_expressions(path: Path) -> None:
    """Insert, save (upsert), save_many and compare-and-swap each write all the columns,
    hinted or not, as their expressions give them; also for fields a record lacks."""
    keys = list(_EVERY_KIND)
    with backend.Storage(path=str(path)) as storage:
        storage.save(dict(_EVERY_KIND), primary_key="all")  # every field gets its columns
        storage.insert({k: _EVERY_KIND[k] for k in keys[::2]}, primary_key="even")
        storage.save({k: _EVERY_KIND[k] for k in keys[1::2]}, primary_key="all")  # overwrite
        storage.save_many(
            [{k: _EVERY_KIND[k]} for k in keys] + [{k: _EVERY_KIND[k] for k in keys[::3]}]
        )
        for pk, record in (("even", dict(reversed(_EVERY_KIND.items()))), ("all", {"t": 1})):
            current = storage._load(pk)
            assert current is not None
            assert storage._compare_and_store(pk, record, "s", current.get("s", MISSING))
        assert storage._shadow.order == tuple(keys)
        assert_shadow_columns_hold_their_expressions(storage)
        for key, value in _EVERY_KIND.items():
            assert storage.query().where(**{key: value}).count() >= 2, key


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=pst.query_cases())
def test_differential_with_and_without_shadow_columns(
    tmp_path: Path, case: tuple[dict[str, dict[str, Any]], dict[str, Any]]
) -> None:
    """Any records, any query: the oracle's answer on a table with shadow columns (and an
    index over them) and on a legacy table queried through expressions."""
    records, spec = case
    shadow_path = tmp_path / "shadow.db"
    legacy_path = tmp_path / "legacy.db"
    if not legacy_path.exists():
        legacy_file(legacy_path)
    for path in (shadow_path, legacy_path):
        with backend.Storage(path=str(path)) as storage:
            check_query_case(storage, records, spec)
            if path == shadow_path:
                assert_shadow_columns_hold_their_expressions(storage)
    fields = shadow_fields(shadow_path)
    assert fields is not None and shadow_fields(legacy_path) is None
    wanted = {f for r in records.values() for f in r}
    unshadowed = unshadowed_fields(shadow_path)
    assert not set(fields) & set(unshadowed)
    assert wanted <= set(fields) | set(unshadowed) or len(fields) == backend.SHADOW_MAX


def test_a_field_first_written_long_keeps_no_columns_and_answers_alike(path: Path) -> None:
    # A text or blob longer than SHADOW_VALUE_MAX would be stored twice in every row:
    # the table keeps such a field without columns (queried through the expressions),
    # a decision every later writer follows; an index on it still gets its columns.
    limit = backend.SHADOW_VALUE_MAX
    records = {
        f"k{i:02}": {
            "title": f"t{i % 7}",
            "text": f"{i % 5} " + "lorem ipsum " * (limit // 10) if i % 4 else f"{i % 5} short",
            "blob": bytes([i]) * limit if i else b"",
            "tags": [f"w{j}" for j in range(limit // 3)] if i % 2 else ["a"],
        }
        for i in range(40)
    }
    memory = pymodels.get_storage({"backend": "memory"})
    with backend.Storage(path=str(path)) as s:
        s.save_many(records.values())
        # The first record holds a short text, a short blob and a short list: the
        # batch's first values decide, and only the title's is short in k01 on.
        assert shadow_fields(path) == ["title", "text", "blob", "tags"]
    path.unlink()
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    ordered = dict(sorted(records.items(), key=lambda kv: kv[0] != "k01"))
    with backend.Storage(path=str(path)) as s:
        for key, pk in zip(ordered, s.save_many(ordered.values()), strict=True):
            memory.save(ordered[key], primary_key=pk)
        assert shadow_fields(path) == ["title"]
        assert unshadowed_fields(path) == ["text", "blob", "tags"]
        with backend.Storage(path=str(path)) as other:
            other.save({"text": "x", "blob": b"", "tags": []}, primary_key="late")
            memory.save({"text": "x", "blob": b"", "tags": []}, primary_key="late")
        assert shadow_fields(path) == ["title"]  # the table's decision, not the writer's
        queries: list[Callable[[Any], Any]] = [
            lambda q: q.where(text=records["k03"]["text"]),
            lambda q: q.where(text__startswith="2 "),
            lambda q: q.where(text__gt="3").order_by("-text", "title"),
            lambda q: q.where(blob=records["k05"]["blob"]),
            lambda q: q.where(blob__lt=bytes([9])).order_by("blob"),
            lambda q: q.where(tags__contains="w40", title="t3"),
            lambda q: q.where(tags=["a"]).order_by("-title")[:4],
        ]
        for index in (None, "text", "blob"):
            if index is not None:
                s.create_index(index)
                assert index in (shadow_fields(path) or [])  # asked for: columns after all
            for make in queries:
                assert pks(make(s.query())) == pks(make(memory.query())), index
                assert make(s.query()).count() == make(memory.query()).count(), index
        assert_shadow_columns_hold_their_expressions(s)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=pst.query_cases())
def test_differential_with_fields_kept_out_by_their_first_value(
    tmp_path: Path, case: tuple[dict[str, dict[str, Any]], dict[str, Any]]
) -> None:
    """Any records, any query, with the length limit at 3 characters, so that most fields
    keep out of the columns by their first value and the rest have them: the oracle's
    answer (queries mix columns and expressions over one table)."""
    records, spec = case
    path = tmp_path / f"w-{uuid.uuid4().hex}.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_storage, "SHADOW_VALUE_MAX", 3)
        with backend.Storage(path=str(path)) as storage:
            check_query_case(storage, records, spec)
            assert_shadow_columns_hold_their_expressions(storage)
    fields, unshadowed = shadow_fields(path), unshadowed_fields(path)
    assert fields is not None and not set(fields) & set(unshadowed)
    wanted = {f for r in records.values() for f in r}
    assert wanted <= set(fields) | set(unshadowed) or len(fields) == backend.SHADOW_MAX


def test_a_legacy_table_keeps_its_format_and_works_alike(path: Path) -> None:
    legacy_file(path)
    with backend.Storage(path=str(path)) as s:
        s.create_index(("city", "-age"))
        s.save_many({"city": c, "age": a, "name": f"n{a}"} for c in "ab" for a in range(20))
        k = s.save({"city": "a", "age": 99.5, "when": dt.date(2024, 5, 1)})
        s.update(k, age__inc=1, extra=[1])
        assert s.query().where(age__gt=15).count() == 9
        assert pks(s.query().where(age=100.5, extra__contains=1)) == [k]
        assert [d["age"] for d in s.query().where(city="a").order_by("-age")[:2]] == [100.5, 19]
        assert "json_extract(body" in s.query().where(name="n3").explain()
    with sqlite3.connect(path) as raw:
        columns = [row[1] for row in raw.execute("PRAGMA table_info(documents)")]
        meta = dict(
            raw.execute("SELECT name, value FROM pymodels_meta WHERE name NOT LIKE '%.index.%'")
        )
    assert columns == ["pk", "body"] and meta["documents.format"] == "1"
    assert "documents.columns" not in meta


def test_copying_a_legacy_table_gives_a_table_with_shadow_columns(tmp_path: Path) -> None:
    # The documented way from format 1 to format 2: `pymodels copy` into a new file.
    old = backend.Storage(path=str(legacy_file(tmp_path / "old.db")))
    old.create_index(("city", "-age"))
    old.create_index("email", unique=True)
    records = {f"k{i:03}": {"city": f"c{i % 5}", "age": i, "email": f"e{i}"} for i in range(50)}
    for pk, record in records.items():
        old.save(record, primary_key=pk)
    indexes = sorted(map(str, old.indexes()))
    old.close()
    assert shadow_fields(tmp_path / "old.db") is None
    status = cli_main(
        ["copy", f"sqlite:///{tmp_path / 'old.db'}", f"sqlite:///{tmp_path / 'new.db'}"]
    )
    assert status == 0
    assert shadow_fields(tmp_path / "new.db") == ["city", "age", "email"]
    new = backend.Storage(path=str(tmp_path / "new.db"))
    try:
        assert {d.pk: dict(d) for d in new.query()} == records
        assert sorted(map(str, new.indexes())) == indexes
        with new._db() as conn:
            ddl = [
                sql
                for (sql,) in conn.execute(
                    "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
                )
            ]
        assert len(ddl) == 2 and all("json_" not in sql for sql in ddl), ddl
        assert_shadow_columns_hold_their_expressions(new)
    finally:
        new.close()


def test_an_unknown_format_is_refused(path: Path) -> None:
    # As builds reading only formats 1 and 2 refuse the tables this one makes (format 3).
    pymodels.get_storage(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE pymodels_meta SET value = '4' WHERE name = 'documents.format'")
    with pytest.raises(ConfigurationError, match="format 4"):
        pymodels.get_storage(f"sqlite:///{path}")


def test_two_storages_on_one_file_keep_every_column_right(path: Path) -> None:
    a = backend.Storage(path=str(path))
    b = backend.Storage(path=str(path))
    try:
        a.save({"x": 1, "y": "keep"}, primary_key="k")  # a adds x and y; b knows neither
        b.save({"y": "new"}, primary_key="k")  # an overwrite must reset x: b learns it first
        assert a.query().where(x=1).count() == 0 and b.query().where(x=1).count() == 0
        assert pks(a.query().where(y="new")) == ["k"]
        b.save({"z": 5}, primary_key="m")  # b adds z; a does not know it
        a.update("m", z__inc=2)  # in SQL: a learns z under the write lock
        a.save({"z": 1, "w": 2}, primary_key="k")
        b.update("k", w=3)
        assert pks(b.query().where(z=7)) == ["m"] and pks(b.query().where(w=3)) == ["k"]
        b.create_index("v")
        a.save_many([{"v": i, "x": i} for i in range(5)])
        assert a.query().where(v__gte=3).count() == b.query().where(v__gte=3).count() == 2
        assert shadow_fields(path) == ["x", "y", "z", "w", "v"]
        assert_shadow_columns_hold_their_expressions(a)
    finally:
        a.close()
        b.close()


def test_a_compare_and_swap_retries_when_another_storage_added_columns(path: Path) -> None:
    class Item(Document):
        name: str = ""

        class Meta:
            version_field = "version"

    a = backend.Storage(path=str(path))
    b = backend.Storage(path=str(path))
    try:
        item = Item(name="one")
        item.save(a)
        b.save({"late": 1}, primary_key="z")  # b adds "late"; a does not know it
        item.name = "two"
        item.save(a)  # the guarded statement writes nothing, a learns "late", writes again
        assert pks(b.query().where(name="two")) == [item.pk]
        stale = Item.object(b, item.pk)  # type: ignore[arg-type]
        item.name = "three"
        item.save(a)
        a.save({"later": 1}, primary_key="y")  # b does not know "later"
        stale.name = "lost"
        with pytest.raises(ConflictError):
            stale.save(b)  # learns "later", then finds the version changed
        assert pks(b.query().where(name="three")) == [item.pk]
        assert_shadow_columns_hold_their_expressions(a)
    finally:
        a.close()
        b.close()


def test_columns_added_in_a_rolled_back_transaction_are_forgotten(storage: Any) -> None:
    with pytest.raises(RuntimeError), storage.transaction():
        storage.save({"new": 1}, primary_key="k")
        raise RuntimeError
    assert shadow_fields(storage.settings.path) == []
    assert storage.query().where(new=1).count() == 0
    storage.save({"new": 2}, primary_key="k")
    assert storage.query().where(new=2).count() == 1
    assert shadow_fields(storage.settings.path) == ["new"]


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_columns_added_in_a_transaction_stay_its_own_until_it_commits(
    storage: Any, outcome: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another thread's connection cannot see a column added in an open transaction:
    # naming it there fails ("no column named ..."), so other threads keep querying
    # and writing through the columns already committed.
    monkeypatch.setattr(_storage, "SHADOW_RECHECK", 3600.0)  # no re-reading of the list
    storage.save({"t": 1}, primary_key="old")
    assert storage.query().where(t=1).count() == 1
    inside, queried = threading.Event(), threading.Event()
    seen: list[Any] = []

    def other_thread() -> None:
        inside.wait(10)
        try:
            seen.append(storage.query().where(tx=True).count())
            seen.append(storage.query().where(t=1).count())
            queried.set()
            storage.save({"t": 2}, primary_key="new")  # waits for the write lock
            seen.append("saved")
        except Exception as e:  # the assertion below shows it
            seen.append(e)
        queried.set()

    t = threading.Thread(target=other_thread)
    t.start()
    with contextlib.suppress(RuntimeError), storage.transaction():
        storage.save({"t": 1, "tx": True}, primary_key="in-tx")
        assert "tx" in storage._shadow.fields
        inside.set()
        queried.wait(10)
        if outcome == "rollback":
            raise RuntimeError
    t.join(30)
    assert seen == [0, 1, "saved"], seen
    assert shadow_fields(storage.settings.path) == (["t", "tx"] if outcome == "commit" else ["t"])
    assert storage.query().where(tx=True).count() == (outcome == "commit")
    assert storage.query().where(t=2).count() == 1
    assert_shadow_columns_hold_their_expressions(storage)


def test_threads_adding_fields_in_and_out_of_transactions_lose_nothing(path: Path) -> None:
    # Four threads on one storage and two on another storage of the same file, each
    # writing fields no one wrote before, inside transactions (committed or rolled
    # back) and out of them, with partial updates and queries in between. Afterwards:
    # every acknowledged write is there, nothing rolled back is, and every shadow
    # column equals its expression.
    a = backend.Storage(path=str(path))
    b = backend.Storage(path=str(path))
    kept: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def work(t: int) -> None:
        storage = a if t < 4 else b
        for i in range(25):
            pk = f"{t}-{i}"
            fresh = f"f{t}_{i % 7}"
            record: dict[str, Any] = {"t": t, "i": i, fresh: i}
            if i % 3 == 0:
                with contextlib.suppress(RuntimeError), storage.transaction():
                    storage.save(record, primary_key=pk)
                    storage.save({"t": t, f"g{t}_{i}": True}, primary_key=f"{pk}-tx")
                    if i % 2:
                        raise RuntimeError  # rolled back: neither record
                if i % 2 == 0:
                    with lock:
                        kept[pk] = record
                        kept[f"{pk}-tx"] = {"t": t, f"g{t}_{i}": True}
            else:
                storage.save(record, primary_key=pk)
                if i % 2:
                    storage.update(pk, **{f"h{t}": i})
                else:
                    assert storage.query().where(t=t, i=i).update(**{f"h{t}": i}) == 1
                with lock:
                    kept[pk] = {**record, f"h{t}": i}
            assert storage.query().where(t=t).where(**{fresh: i}).count() >= 1 or (
                i % 3 == 0 and i % 2
            )

    try:
        run_in_threads(work, 6)
        assert {d.pk: dict(d) for d in a.query()} == kept
        assert {d.pk: dict(d) for d in b.query()} == kept
        assert_shadow_columns_hold_their_expressions(a)
        for storage in (a, b):
            for field in ("t", "f0_3", "h5"):
                expected = sum(1 for r in kept.values() if field in r)
                assert storage.query().where(**{f"{field}__exists": True}).count() == expected
    finally:
        a.close()
        b.close()


def test_an_index_made_in_a_transaction_is_counted_from_once_committed(storage: Any) -> None:
    # Counting reads the schema's indexes once and keeps them: not while a
    # transaction has made one another connection cannot see yet, and afresh after.
    storage.save_many([{"a": {"x": i % 3, "y": i}} for i in range(20)])
    counts: list[Any] = []

    def count() -> None:
        counts.append(storage.query().where(a__y__gt=5).count())
        counts.append(storage.query().where(a__x=1).count())

    with storage.transaction():
        storage.create_index(("a__x", "a__y"))
        count()
        other = threading.Thread(target=count)
        other.start()
        other.join(30)
    count()
    assert counts == [14, 7] * 3
    assert [i.lead for i in storage._schema_indexes()] == [("a", "x")]


def test_fields_past_the_cap_are_queried_through_expressions(
    storage: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_storage, "SHADOW_MAX", 2)
    storage.save_many([{"a": i, "b": i, "c": i, "d": i} for i in range(6)])
    assert shadow_fields(storage.settings.path) == ["a", "b"]
    assert '"v1:a"' in storage.query().where(a=1).explain()
    assert "json_extract(body" in storage.query().where(c=1).explain()
    assert storage.query().where(a__gt=2, c__lt=5).count() == 2
    assert_shadow_columns_hold_their_expressions(storage)


def test_a_count_on_shadow_columns_reads_a_covering_index(storage: Any) -> None:
    storage.create_index(("city", "-age"))
    storage.save_many({"city": c, "age": a, "name": "x" * a} for c in "abc" for a in range(80))
    assert storage.query().where(age__gt=50).count() == 3 * 29
    where = storage.query().where(age__gt=50)._compiled.native
    text, params = storage._dialect.render(storage._dialect.count(storage._table, where))
    with storage._db() as conn:
        plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + text, params))
    assert "COVERING INDEX pm_documents_" in plan, plan
    # A condition on the second key alone walks the first key's values (three cities).
    assert where is not None and storage._count_by_column_prefix(where) == 3 * 29
    assert storage.query().where_not(age__gt=50).count() == 3 * 51
    assert storage.query().where(age__gt=50, city="b").count() == 29
    # Equality and order on the index's columns: one search, no sort.
    explained = storage.query().where(city="b").order_by("-age").explain()
    assert "USING INDEX pm_documents_" in explained and "TEMP B-TREE" not in explained


def test_foreign_bodies_get_their_columns_from_a_rebuild(tmp_path: Path) -> None:
    # Programs writing body with plain SQL leave the columns at their defaults;
    # _rebuild_columns computes them (the library's own writes never need it).
    shadow = backend.Storage(path=str(tmp_path / "shadow.db"))
    legacy = backend.Storage(path=str(legacy_file(tmp_path / "legacy.db")))
    shadow.create_index(("city", "-age"))
    _insert_tricky_bodies(shadow, legacy)
    assert shadow._rebuild_columns() == len(_tricky_bodies())
    assert_shadow_columns_hold_their_expressions(shadow)
    for lookups in _COUNTED:
        for way in ("where", "where_not"):
            counts = [getattr(s.query(), way)(**lookups).count() for s in (shadow, legacy)]
            assert counts[0] == counts[1], (way, lookups)
    shadow.close()
    legacy.close()


def test_a_container_equality_beside_strings_of_the_same_field_answers(tmp_path: Path) -> None:
    """SQLite may test a list's canonical form on a row holding a string (found by the soak)."""
    storage = pymodels.get_storage({"backend": "sqlite", "path": str(tmp_path / "db.sqlite")})
    records: dict[str, dict[str, Any]] = {
        "00": {"name": "", "age": False},
        "0": {"name": []},
        "1": {"name": "[]", "age": False},
        "2": {"name": [], "age": False},
        "3": {"name": "[" * 5000, "age": False},
        "4": {"name": '{"$": "nonsense"}', "age": False},
    }
    for pk, record in records.items():
        storage.save(record, primary_key=pk)
    spec = {
        "where": [
            ("lookup", "age", False),
            ("or", [("lookup", "name", ""), ("lookup", "name", [])]),
            ("lookup", "name", []),
        ]
    }
    q = storage.query().where(age=False).where(Q(name="") | Q(name=[])).where(name=[])
    assert [d.pk for d in q] == oracle.run(records, spec) == ["2"]
    storage.close()


@settings(max_examples=2000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_sqlite_reads_every_stored_float_as_the_same_double(value: float) -> None:
    # Conditions bind the Python float and compare it with what SQLite reads from the
    # stored JSON text (json_extract, as the shadow columns hold it): a SQLite build
    # whose text-to-double conversion rounded differently from Python's would make
    # `where(x=value)` miss the record, so this build's conversion is checked, over
    # hypothesis' edge-seeking floats (subnormals, the largest, near powers of ten).
    conn = sqlite3.connect(":memory:")
    try:
        text = dumps({"x": value})
        (read,) = conn.execute("SELECT json_extract(?, '$.x')", (text,)).fetchone()
    finally:
        conn.close()
    assert isinstance(read, float) and read == value

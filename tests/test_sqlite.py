"""SQLite backend: what only SQLite needs checking (the conformance suite covers the contract).

Every engine trap the backend works around has a test here: ``json_extract`` gives 1 for
true, text compares greater than numbers, ``LIKE`` ignores ASCII case, ``DISTINCT`` merges
1, 1.0 and true, and ``lower()`` folds ASCII only. Then the file layout, URLs, indexes and
plans, optimistic concurrency in one statement, and a SIGKILL in the middle of a bulk save.
Threads, fork, four processes writing one file, transactions seen from another connection,
unique indexes and partial updates in SQL are the conformance suite's (by capability).
"""

from __future__ import annotations

import datetime as dt
import gc
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
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

import pymodels
from pymodels import Document, Q
from pymodels.errors import (
    ConfigurationError,
    ConflictError,
    LockTimeout,
    NotSupported,
    PyModelsError,
)
from pymodels.ext import sqlite as backend
from pymodels.ext._sql.encoding import dumps
from pymodels.testing import oracle
from pymodels.testing import strategies as pst


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
        assert type(s).__module__ == "pymodels.ext.sqlite"
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
    # The library's own data is in another table, never in the namespace.
    assert raw.execute("SELECT value FROM pymodels_meta").fetchall() == [("1",)]
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


def test_counts_read_only_the_index_and_give_the_tables_answer(tmp_path: Path) -> None:
    indexed = backend.Storage(path=str(tmp_path / "indexed.db"))
    plain = backend.Storage(path=str(tmp_path / "plain.db"))
    indexed.create_index(("city", "-age"))
    for s in (indexed, plain):
        with s._db() as conn:
            for i, body in enumerate(_tricky_bodies()):
                conn.execute('INSERT INTO "documents" (pk, body) VALUES (?, ?)', (f"k{i:02}", body))
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
    with backend.Storage(path=str(tmp_path / "walk.db")) as s:
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


def test_a_count_survives_its_index_being_dropped(storage: Any, path: Path) -> None:
    storage.create_index(("city", "age"))
    storage.save_many([{"city": "a", "age": i} for i in range(10)])
    assert storage.query().where(age__gte=5).count() == 5  # learns the index
    with sqlite3.connect(path) as other:
        (name,) = other.execute("SELECT name FROM sqlite_master WHERE name LIKE 'pm_%'").fetchone()
        other.execute(f'DROP INDEX "{name}"')
    assert storage.query().where(age__gte=5).count() == 5


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

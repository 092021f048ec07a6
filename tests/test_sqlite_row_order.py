"""SQLite row order: a table whose rowids ascend as its pks do reads in pk order by rowid.

docs/sqlite.md, "Row order". A table this build makes is in row order while every new
pk is above those it holds; its view ``<table>@rowid`` exists exactly then, ordered reads
go through it, and its non-unique indexes end in the rowid alone. The first lower pk
drops the view and closes those indexes with the pk again. Every answer is the oracle's
before, during and after, in the writer and in a reader that learns it late.
"""

from __future__ import annotations

import dbm
import random
import sqlite3
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings

import pymodels
from pymodels.cli.app import main as cli_main
from pymodels.ext import sqlite as backend
from pymodels.testing import oracle, suite
from pymodels.testing import strategies as pst

VIEW = "documents@rowid"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


def in_row_order(path: Path) -> bool:
    """Whether the table's row-order view exists."""
    with sqlite3.connect(path) as raw:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ?"
        return raw.execute(sql, (VIEW,)).fetchone() is not None


def pks_by_rowid(path: Path) -> list[str]:
    with sqlite3.connect(path) as raw:
        return [pk for (pk,) in raw.execute("SELECT pk FROM documents ORDER BY rowid")]


def index_sql(path: Path) -> list[str]:
    """The SQL of the library's indexes on the table."""
    with sqlite3.connect(path) as raw:
        rows = raw.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name LIKE 'pm_%'"
        ).fetchall()
    return [sql for (sql,) in rows]


def check(storage: Any, records: dict[str, dict[str, Any]], spec: dict[str, Any]) -> None:
    """The oracle's pks, count and first record for ``spec`` over ``records``."""
    expected = oracle.run(records, spec)
    q = pst.to_query(storage.query(), spec)
    assert [d.pk for d in q] == expected
    assert q.count() == len(expected)
    first = q.first()
    assert (None if first is None else first.pk) == (expected[0] if expected else None)


def index_for(storage: Any, spec: dict[str, Any]) -> None:
    """An index on the query's order keys (the pk aside), as an application would make."""
    keys = tuple(k for k in spec.get("order_by", ()) if k.lstrip("-") != "pk")
    if keys:
        storage.create_index(keys)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=pst.query_cases())
def test_differential_in_row_order_and_after_leaving_it(
    tmp_path: Path, case: tuple[dict[str, dict[str, Any]], dict[str, Any]]
) -> None:
    """Any records, any query: the oracle's answer while the table is in row order (the
    upper half of the pks written ascending, one overwritten), from a reader that read in
    row order when the lower half arrives, and from the writer afterwards."""
    records, spec = case
    path = tmp_path / f"o-{uuid.uuid4().hex}.db"
    ascending = sorted(records)
    half = len(ascending) // 2
    upper = {pk: records[pk] for pk in ascending[half:]}
    with backend.Storage(path=str(path)) as writer, backend.Storage(path=str(path)) as reader:
        index_for(writer, spec)
        for pk, record in upper.items():
            writer.save(record, primary_key=pk)
        if upper:
            # An overwrite keeps the row (and its rowid): still in row order.
            writer.save(upper[ascending[half]], primary_key=ascending[half])
        assert in_row_order(path) and pks_by_rowid(path) == sorted(upper)
        assert all(", pk)" not in sql for sql in index_sql(path))
        check(reader, upper, spec)
        check(writer, upper, spec)
        for pk in ascending[:half]:
            writer.save(records[pk], primary_key=pk)
        assert in_row_order(path) == (half == 0)
        check(reader, records, spec)
        check(writer, records, spec)


def test_a_new_table_reads_by_rowid_without_sorting(path: Path) -> None:
    with backend.Storage(path=str(path)) as s:
        s.create_index(("city", "-age"))
        keys = s.save_many({"name": f"n{i}", "city": f"c{i % 3}", "age": i % 7} for i in range(300))
        assert keys == sorted(keys) and pks_by_rowid(path) == keys
        unindexed = s.query().where(name="n150").explain()
        ordered = s.query().where(city="c1").order_by("-age")[:5].explain()
        for plan in (unindexed, ordered):
            assert '"documents@rowid"' in plan and '"pm:rowid"' in plan
            assert "TEMP B-TREE" not in plan, plan
        assert [sql.endswith(':age" DESC)') for sql in index_sql(path)] == [True]
        found = s.query().where(name="n150").first()
        assert found is not None and found["name"] == "n150"


def test_a_lower_pk_leaves_row_order_and_the_indexes_end_in_the_pk_again(path: Path) -> None:
    memory = pymodels.get_storage({"backend": "memory"})
    with backend.Storage(path=str(path)) as s:
        s.create_index(("city", "-age"))
        s.create_index("email", unique=True)
        for i in range(60):
            record = {"city": f"c{i % 3}", "age": i % 5, "email": f"e{i}"}
            memory.save(record, primary_key=s.save(record))
        assert in_row_order(path)
        s.save({"city": "c1", "age": 4, "email": "low"}, primary_key="0")
        memory.save({"city": "c1", "age": 4, "email": "low"}, primary_key="0")
        assert not in_row_order(path)
        unique, ordered = sorted(index_sql(path), key=lambda sql: "UNIQUE" not in sql)
        assert ordered.endswith(", pk)") and not unique.endswith(", pk)")
        q = s.query().where(city="c1").order_by("-age")[:7]
        assert "TEMP B-TREE" not in q.explain() and '"pm:rowid"' not in q.explain()
        assert [d.pk for d in q] == [
            d.pk for d in memory.query().where(city="c1").order_by("-age")[:7]
        ]
        assert [d.pk for d in s.query()] == sorted(str(d.pk) for d in memory.query())


def test_save_many_below_the_greatest_pk_leaves_row_order(path: Path) -> None:
    # Generated pks from another process may be below those the table holds: here a
    # pk above every generated one stands in for them.
    with backend.Storage(path=str(path)) as s:
        s.save({"n": -1}, primary_key="~top")
        keys = s.save_many({"n": i} for i in range(2500))
        assert not in_row_order(path)
        assert [d.pk for d in s.query().order_by("pk")] == [*keys, "~top"]
        assert [d["n"] for d in s.query().where(n__lt=3)] == [0, 1, 2, -1]


def test_save_many_of_an_unsorted_batch_keeps_row_order(path: Path) -> None:
    # One batch's pks in any order, all above the table's: written in pk order.
    with backend.Storage(path=str(path)) as s:
        s.save({"n": 0}, primary_key="a")
        s._store_many([("d", {"n": 3}), ("b", {"n": 1}), ("c", {"n": 2})])
        assert in_row_order(path) and pks_by_rowid(path) == ["a", "b", "c", "d"]
        assert [d["n"] for d in s.query()] == [0, 1, 2, 3]


def test_a_copy_from_a_storage_in_key_hash_order_keeps_row_order(tmp_path: Path) -> None:
    # `pymodels copy` reads its source in pk order: a source whose file keeps its
    # keys in a hash's order (shelve over dbm) still gives a destination whose rowids
    # ascend with its pks, batch after batch.
    pks = [f"k{i:04}" for i in range(300)]
    random.Random(5).shuffle(pks)
    src = tmp_path / "src.shelf"
    with pymodels.get_storage(f"shelve:///{src}") as shelf:
        for i, pk in enumerate(pks):
            shelf.save({"n": i}, primary_key=pk)
    with dbm.open(str(src), "r") as raw:
        stored = cast("list[bytes]", raw.keys())  # dbm.gnu objects are not iterable
    own = [k.decode() for k in stored if not k.startswith(b"\x00")]
    assert sorted(own) == sorted(pks) and own != sorted(pks)  # the file's order is not pk order
    dst = tmp_path / "dst.db"
    assert cli_main(["copy", "--batch-size", "7", f"shelve:///{src}", f"sqlite:///{dst}"]) == 0
    assert in_row_order(dst)
    assert pks_by_rowid(dst) == sorted(pks)


def test_leaving_row_order_in_a_rolled_back_transaction_keeps_it(path: Path) -> None:
    with backend.Storage(path=str(path)) as s:
        s.save({"n": 1}, primary_key="m")
        with pytest.raises(RuntimeError), s.transaction():
            s.save({"n": 0}, primary_key="a")
            assert not s._rowid_order
            raise RuntimeError
        # The departure rolled back with the write that caused it.
        assert in_row_order(path) and pks_by_rowid(path) == ["m"]
        # This storage reads in pk order now (always right); its writes still keep the
        # table's order: a lower pk leaves it again, a higher one does not.
        s.save({"n": 2}, primary_key="z")
        assert in_row_order(path)
        s.save({"n": 0}, primary_key="a")
        assert not in_row_order(path)
        assert [d.pk for d in s.query()] == ["a", "m", "z"]


def test_an_overwrite_refused_by_the_order_writes_when_another_left_it_meanwhile(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save of a new pk below the greatest is refused while the table is in row order;
    another connection leaving row order right after must not turn that into an error
    (the refusal's cause is read again, and the view is gone by then)."""
    with backend.Storage(path=str(path)) as s, backend.Storage(path=str(path)) as other:
        s.save({"n": 1}, primary_key="m")
        meta_columns = s._meta_columns
        moved: list[bool] = []

        def leave_meanwhile(conn: sqlite3.Connection) -> str | None:
            if not moved:
                moved.append(True)
                other.save({"n": 2}, primary_key="b")  # below "m": drops the view, commits
            return meta_columns(conn)

        monkeypatch.setattr(s, "_meta_columns", leave_meanwhile)
        s.save({"n": 0}, primary_key="a")  # refused by the order, then written
        assert moved and not in_row_order(path)
        assert [(d.pk, d["n"]) for d in s.query()] == [("a", 0), ("b", 2), ("m", 1)]


def test_an_index_is_made_in_one_transaction_with_its_check_of_the_order(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another connection cannot leave row order between create_index's check of it and
    the CREATE INDEX (which would end the index in the rowid on a table out of order)."""
    with (
        backend.Storage(path=str(path)) as s,
        backend.Storage(path=str(path), timeout=0.2) as other,
    ):
        s.save({"city": "x"}, primary_key="m")
        view_exists = s._view_exists
        tried: list[str] = []

        def leave_meanwhile(conn: sqlite3.Connection) -> bool:
            found = view_exists(conn)
            if not tried:
                try:
                    other.save({"city": "y"}, primary_key="b")  # below "m": leaves row order
                    tried.append("left")
                except pymodels.LockTimeout:
                    tried.append("waited")
            return found

        monkeypatch.setattr(s, "_view_exists", leave_meanwhile)
        s.create_index("city")
        assert tried == ["waited"]
        other.save({"city": "y"}, primary_key="b")
        assert not in_row_order(path)
        assert index_sql(path) and all(sql.endswith(", pk)") for sql in index_sql(path))
        assert [d.pk for d in s.query().where(city="y")] == ["b"]


def test_a_reader_learns_the_order_is_gone_in_every_read(path: Path) -> None:
    with backend.Storage(path=str(path)) as writer:
        writer.save_many({"n": i % 4, "s": f"v{i}"} for i in range(1200))
        readers = [backend.Storage(path=str(path)) for _ in range(3)]
        try:
            for r in readers:
                assert r._rowid_order and r.query().where(n=1).first() is not None
            writer.save({"n": 1, "s": "low"}, primary_key="0")
            assert not in_row_order(path)
            first, page, stream = readers
            found = first.query().where(n=1).first()
            assert found is not None and found.pk == "0"
            assert next(d.pk for d in page.query().where(n=1)[:3]) == "0"
            assert [d.pk for d in stream.query().where(n=1)][:1] == ["0"]  # beyond a page
            assert not any(r._rowid_order for r in readers)
        finally:
            for r in readers:
                r.close()


def test_after_in_the_pk_order_seeks_by_rowid_then_by_pk_once_the_order_is_gone(
    path: Path,
) -> None:
    with backend.Storage(path=str(path)) as writer:
        pks = writer.save_many({"i": i} for i in range(1200))
        reader = backend.Storage(path=str(path))
        try:
            q = reader.query()
            plan = q.after(pks[600])[:5].explain()
            assert "USING INTEGER PRIMARY KEY (rowid>?)" in plan, plan
            assert [d.pk for d in q.after(pks[600])[:5]] == pks[601:606]
            assert [d.pk for d in q.order_by("-pk").after(pks[600])[:2]] == pks[599:597:-1]
            # Another connection leaves row order: the reader's statement, bound by the
            # rowid of the anchor, is written again in pk order (and its bound with it).
            writer.save({"i": -1}, primary_key="0")
            assert not in_row_order(path) and reader._rowid_order
            assert [d.pk for d in q.after(pks[600])[:5]] == pks[601:606]
            assert not reader._rowid_order
            assert [d.pk for d in q.after("0")][:2] == pks[:2]
            assert "pk >= ?" in q.after(pks[600]).explain()
        finally:
            reader.close()


def test_a_table_of_format_2_stays_in_pk_order(path: Path) -> None:
    # As the builds before row order made it: no view, and format 2.
    backend.Storage(path=str(path)).close()
    with sqlite3.connect(path) as raw:
        raw.execute(f'DROP VIEW "{VIEW}"')
        raw.execute("UPDATE pymodels_meta SET value = '2' WHERE name = 'documents.format'")
    memory = pymodels.get_storage({"backend": "memory"})
    with backend.Storage(path=str(path)) as s:
        assert not s._rowid_order and not s._shadow.ordered
        s.create_index("n")
        for pk in ("m", "c", "x", "a"):
            s.save({"n": len(pk)}, primary_key=pk)
            memory.save({"n": len(pk)}, primary_key=pk)
        assert [d.pk for d in s.query().where(n=1)] == ["a", "c", "m", "x"]
        assert index_sql(path)[0].endswith(", pk)")
    with sqlite3.connect(path) as raw:
        meta = dict(raw.execute("SELECT name, value FROM pymodels_meta"))
    assert meta["documents.format"] == "2" and not in_row_order(path)


def test_vacuum_keeps_the_rowids_in_pk_order(path: Path) -> None:
    # VACUUM may renumber the rowids of a table without an INTEGER PRIMARY KEY; it
    # copies the rows in rowid order, so the order (all that row order needs) stays.
    with backend.Storage(path=str(path)) as s:
        keys = s.save_many({"n": i % 5} for i in range(700))
        s.query().where(n__lt=2).delete()
        s.save({"n": 1}, primary_key="~last")
    with sqlite3.connect(path) as raw:
        raw.execute("VACUUM")
    with backend.Storage(path=str(path)) as s:
        assert s._rowid_order and in_row_order(path)
        kept = [k for i, k in enumerate(keys) if i % 5 >= 2]
        assert pks_by_rowid(path) == [*kept, "~last"]
        assert [d.pk for d in s.query().where(n__gte=1)] == [*kept, "~last"]


def test_clear_puts_an_empty_table_back_in_row_order(path: Path) -> None:
    with backend.Storage(path=str(path)) as s, backend.Storage(path=str(path)) as reader:
        s.create_index(("city", "-age"))
        s.save({"city": "a", "age": 1}, primary_key="m")
        s.save({"city": "a", "age": 2}, primary_key="b")
        assert not in_row_order(path) and index_sql(path)[0].endswith(", pk)")
        assert [d.pk for d in reader.query().where(city="a")] == ["b", "m"]
        s.clear()
        assert in_row_order(path) and s._rowid_order
        assert not index_sql(path)[0].endswith(", pk)")
        keys = s.save_many({"city": "a", "age": i % 3} for i in range(9))
        assert in_row_order(path) and pks_by_rowid(path) == keys
        expected = sorted(keys, key=lambda k: (-(keys.index(k) % 3), k))
        # The reader left pk order for good; it answers alike, as the writer does.
        for storage in (s, reader):
            assert [d.pk for d in storage.query().where(city="a").order_by("-age")] == expected
        with pytest.raises(RuntimeError), s.transaction():
            s.save({"city": "a", "age": 0}, primary_key="0")
            s.clear()
            raise RuntimeError
        assert in_row_order(path) and pks_by_rowid(path) == keys


def test_sigkill_while_writing_leaves_row_order_true_or_gone(path: Path) -> None:
    # The conformance crash test's writer (saves, pks below every generated one, bulk
    # saves, clears, an index) killed at random points: after each kill the view
    # exists only over rowids in pk order, and the indexes end as its presence says.
    settings = {"backend": "sqlite", "path": str(path)}
    backend.Storage(path=str(path)).close()
    rng = random.Random(0x0DE7)
    left = kept = 0
    for kill in range(25):
        suite._run_and_kill(settings, seed=kill, rng=rng)
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        by_rowid = pks_by_rowid(path)
        if in_row_order(path):
            kept += 1
            assert by_rowid == sorted(by_rowid), f"kill {kill}"
            assert not any(sql.endswith(", pk)") for sql in index_sql(path))
        else:
            left += 1
            assert all(sql.endswith(", pk)") for sql in index_sql(path))
        with backend.Storage(path=str(path)) as s:
            assert [d.pk for d in s.query()] == sorted(by_rowid)
    assert kept and left  # both states were reached and checked

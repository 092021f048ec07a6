"""Tests of the Tokyo Cabinet table-database binding alone, against real files.

Skipped as a whole when libtokyocabinet9 cannot be loaded; the interop tests also need
Debian's ``tctmgr`` (package tokyocabinet-bin).
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# TokyoCabinetUnavailable subclasses ImportError (not ModuleNotFoundError), so say so.
binding = pytest.importorskip(
    "pymodels.ext.tokyo_cabinet._binding",
    reason="libtokyocabinet.so.9 cannot be loaded (apt-get install libtokyocabinet9)",
    exc_type=ImportError,
)

from pymodels.ext.tokyo_cabinet._binding import (  # noqa: E402  (after the importorskip)
    Cond,
    ErrorCode,
    IndexType,
    OpenMode,
    Order,
    SetOp,
    TableDB,
    TCError,
    TokyoCabinetUnavailable,
    TuneOpt,
    library_version,
    live_pointer_kinds,
    live_pointers,
    metasearch,
    open_handles,
)
from pymodels.testing.suite import run_in_threads  # noqa: E402

TCTMGR = shutil.which("tctmgr")
needs_tctmgr = pytest.mark.skipif(
    TCTMGR is None, reason="tctmgr not installed (apt-get install tokyocabinet-bin)"
)

ROWS: dict[bytes, dict[bytes, bytes]] = {
    b"1": {
        b"name": b"alice",
        b"city": b"Paris",
        b"age": b"30",
        b"tags": b"red blue",
        b"text": b"the quick brown fox",
    },
    b"2": {
        b"name": b"bob",
        b"city": b"Berlin",
        b"age": b"25",
        b"tags": b"blue",
        b"text": b"lazy dog sleeps",
    },
    b"3": {
        b"name": b"carol",
        b"city": b"Paris",
        b"age": b"41",
        b"tags": b"green",
        b"text": b"quick thinking",
    },
    b"4": {
        b"name": b"dave",
        b"city": b"Rome",
        b"age": b"7",
        b"tags": b"red",
        b"text": b"brown bread",
    },
    # No city and no tags: missing columns fail positive conditions.
    b"5": {b"name": b"Alicia", b"age": b"30.5", b"text": b"fox and dog"},
    b"6": {
        b"name": "émile".encode(),
        b"city": b"Paris",
        b"age": b"-3",
        b"tags": b"",
        b"text": "café crème".encode(),
    },
}


@pytest.fixture(autouse=True)
def _nothing_leaks() -> Iterator[None]:
    """Every test must leave no owned pointer and no open handle behind."""
    assert live_pointers() == 0, live_pointer_kinds()
    yield
    gc.collect()  # run finalisers of anything a failing test dropped
    assert live_pointers() == 0, live_pointer_kinds()
    assert open_handles() == {}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "t.tct"


@pytest.fixture
def db(path: Path) -> Iterator[TableDB]:
    with TableDB().open(path) as tdb:
        yield tdb


@pytest.fixture(params=[False, True], ids=["scan", "indexed"])
def people(request: pytest.FixtureRequest, db: TableDB) -> TableDB:
    for pk, cols in ROWS.items():
        db.put(pk, cols)
    if request.param:
        db.setindex("name", IndexType.LEXICAL)
        db.setindex("city", IndexType.LEXICAL)
        db.setindex("age", IndexType.DECIMAL)
        db.setindex("tags", IndexType.TOKEN)
        db.setindex("text", IndexType.QGRAM)
    return db


def run(db: TableDB, *conds: tuple[str, int, str]) -> list[int]:
    with db.query() as q:
        for col, op, expr in conds:
            q.addcond(col, op, expr)
        return sorted(int(pk) for pk in q.search())


def ordered(db: TableDB, col: str, otype: Order) -> list[bytes]:
    with db.query() as q:
        return q.setorder(col, otype).search()


# -- loading ---------------------------------------------------------------------------------


def test_library_version() -> None:
    assert library_version().startswith("1.4.")


def test_missing_library_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(name: str, *args: object, **kwargs: object) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(binding.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(binding.ctypes, "CDLL", refuse)
    with pytest.raises(TokyoCabinetUnavailable, match="apt-get install libtokyocabinet9") as info:
        binding._load_library()
    assert isinstance(info.value, ImportError)


# -- records ---------------------------------------------------------------------------------


def test_round_trip_is_binary_safe(db: TableDB) -> None:
    cols = {
        b"nul": b"a\x00b\x00",
        b"ff": b"\xff\xfe\x00\xff",
        b"utf8": "żółw ☃ 𝄞".encode(),
        b"empty": b"",
        b"long": bytes(range(256)) * 100,  # sizes past one and two varint bytes
        b"col\x00\xff": b"binary column names are fine in records",
    }
    db.put(b"k\x00\xff", cols)
    assert db.get(b"k\x00\xff") == cols
    assert db.get(b"k") is None
    assert db.getcol(b"k\x00\xff", b"nul") == b"a\x00b\x00"
    assert db.getcol(b"k\x00\xff", b"absent") is None
    assert db.getcol(b"absent", b"nul") is None


def test_put_replaces_whole_record(db: TableDB) -> None:
    db.put(b"k", {b"a": b"1", b"b": b"2"})
    db.put(b"k", {b"c": b"3"})
    assert db.get(b"k") == {b"c": b"3"}


def test_record_without_columns_exists(db: TableDB) -> None:
    db.put(b"k", {})
    assert db.get(b"k") == {}
    assert db.rnum() == 1


def test_putkeep_semantics(db: TableDB) -> None:
    assert db.putkeep(b"k", {b"a": b"1"}) is True
    assert db.putkeep(b"k", {b"a": b"2"}) is False
    assert db.get(b"k") == {b"a": b"1"}


def test_putcat_keeps_existing_columns(db: TableDB) -> None:
    db.put(b"k", {b"a": b"1"})
    db.putcat(b"k", {b"a": b"2", b"b": b"3"})
    assert db.get(b"k") == {b"a": b"1", b"b": b"3"}


def test_out_and_vsiz(db: TableDB) -> None:
    db.put(b"k", {b"a": b"1", b"c": b"3"})
    assert db.vsiz(b"k") == len(b"a\x001\x00c\x003") + 1  # NUL-joined form, plus one
    assert db.out(b"k") is True
    assert db.out(b"k") is False
    assert db.vsiz(b"k") == -1


def test_invalid_arguments_are_refused_before_the_library(db: TableDB) -> None:
    # An empty key would abort() the whole process inside the library.
    for call in (
        lambda: db.put(b"", {b"a": b"1"}),
        lambda: db.putkeep(b"", {}),
        lambda: db.get(b""),
        lambda: db.out(b""),
        lambda: db.vsiz(b""),
        lambda: db.getcol(b"", b"a"),
        lambda: db.addint(b"", 1),
    ):
        with pytest.raises(ValueError, match="primary key"):
            call()
    with pytest.raises(ValueError, match="column names"):
        db.put(b"k", {b"": b"1"})
    with pytest.raises(TypeError, match="bytes"):
        db.put(b"k", {b"a": "text"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="NUL"):
        db.query().addcond("a\x00b", Cond.STREQ, "x")
    assert db.rnum() == 0


def test_keys_iteration_and_prefix(db: TableDB) -> None:
    for pk in (b"a1", b"a2", b"b1", b"a\x003"):
        db.put(pk, {b"v": pk})
    assert sorted(db.keys()) == sorted([b"a1", b"a2", b"b1", b"a\x003"])
    assert sorted(db.iterkeys()) == sorted(db.keys())
    db.iterinit()
    assert db.iternext() is not None
    assert sorted(db.fwmkeys(b"a")) == [b"a\x003", b"a1", b"a2"]
    assert len(db.fwmkeys(b"a", 2)) == 2
    assert db.fwmkeys(b"zz") == []


def test_counts_sizes_sync_vanish(db: TableDB) -> None:
    for i in range(100):
        db.put(b"%d" % i, {b"x": b"y" * 50})
    assert db.rnum() == 100
    db.sync()
    assert db.fsiz() > 100 * 50
    db.vanish()
    assert db.rnum() == 0


def test_addint_adddouble(db: TableDB) -> None:
    assert db.addint(b"n", 5) == 5
    assert db.addint(b"n", -7) == -2
    assert db.get(b"n") == {b"_num": b"-2"}
    assert db.adddouble(b"d", 1.5) == 1.5
    assert db.adddouble(b"d", 1.25) == 2.75


def test_genuid_counts_up_and_ignores_existing_keys(db: TableDB) -> None:
    db.put(b"1", {b"a": b"kept?"})
    assert [db.genuid(), db.genuid(), db.genuid()] == [1, 2, 3]  # "1" exists: not skipped


# -- queries ---------------------------------------------------------------------------------

CONDITIONS = [
    ("city", Cond.STREQ, "Paris", [1, 3, 6]),
    ("name", Cond.STREQ, "émile", [6]),
    ("tags", Cond.STREQ, "", [6]),  # empty value, not a missing column
    ("name", Cond.STRINC, "li", [1, 5]),
    ("name", Cond.STRBW, "a", [1]),  # case-sensitive
    ("name", Cond.STREW, "ol", [3]),
    ("tags", Cond.STRAND, "red blue", [1]),
    ("tags", Cond.STROR, "red,green", [1, 3, 4]),
    ("city", Cond.STROREQ, "Rome Berlin", [2, 4]),
    ("name", Cond.STRRX, "^[ab]", [1, 2]),
    ("name", Cond.STRRX, "*^a", [1, 5]),  # leading '*': case-insensitive
    ("city", Cond.STRRX, "", [1, 2, 3, 4, 6]),  # "has the column"
    ("age", Cond.NUMEQ, "30", [1]),
    ("age", Cond.NUMGT, "30", [3, 5]),
    ("age", Cond.NUMGE, "30", [1, 3, 5]),
    ("age", Cond.NUMLT, "25", [4, 6]),
    ("age", Cond.NUMLE, "25", [2, 4, 6]),
    ("age", Cond.NUMBT, "7 30", [1, 2, 4]),  # inclusive
    ("age", Cond.NUMOREQ, "7,41", [3, 4]),
    ("text", Cond.FTSPH, "quick brown", [1]),
    ("text", Cond.FTSPH, "CAFE", [6]),  # full-text search folds case and accents
    ("text", Cond.FTSAND, "quick fox", [1]),
    ("text", Cond.FTSOR, "dog bread", [2, 4, 5]),
    ("text", Cond.FTSEX, '"quick brown" || sleeps', [1, 2]),
    ("text", Cond.FTSEX, "quick && fox", [1]),
    ("", Cond.STREQ, "3", [3]),  # "" is the primary key
    ("", Cond.NUMGE, "4", [4, 5, 6]),
]


@pytest.mark.parametrize(
    ("col", "op", "expr", "expected"),
    CONDITIONS,
    ids=[f"{c[1].name}-{c[0] or 'pk'}-{c[2]}" for c in CONDITIONS],
)
def test_condition(people: TableDB, col: str, op: Cond, expr: str, expected: list[int]) -> None:
    assert run(people, (col, op, expr)) == expected


def test_conditions_combine_with_and(people: TableDB) -> None:
    assert run(people, ("city", Cond.STREQ, "Paris"), ("age", Cond.NUMGE, "30")) == [1, 3]


def test_negation_and_missing_columns(people: TableDB) -> None:
    # A record without the column fails a positive condition and passes a negated one.
    assert run(people, ("city", Cond.STREQ | Cond.NEGATE, "Paris")) == [2, 4, 5]
    with people.query() as q:
        q.addcond("city", Cond.STREQ, "Paris", negate=True)
        assert sorted(q.search()) == [b"2", b"4", b"5"]
    assert run(people, ("tags", Cond.STRRX | Cond.NEGATE, "")) == [5]


def test_orders(people: TableDB) -> None:
    assert ordered(people, "age", Order.NUMASC) == [b"6", b"4", b"2", b"1", b"5", b"3"]
    assert ordered(people, "age", Order.NUMDESC) == [b"3", b"5", b"1", b"2", b"4", b"6"]
    # Byte order: upper case before lower case, UTF-8 after ASCII.
    assert ordered(people, "name", Order.STRASC) == [b"5", b"1", b"2", b"3", b"4", b"6"]
    assert ordered(people, "", Order.NUMDESC) == [b"6", b"5", b"4", b"3", b"2", b"1"]
    # Records lacking the order column come last in both directions.
    assert ordered(people, "city", Order.STRASC)[-1] == b"5"
    assert ordered(people, "city", Order.STRDESC)[-1] == b"5"


def test_limit_skip_and_count(people: TableDB) -> None:
    with people.query() as q:
        assert q.count() == 0  # nothing searched yet
        q.setorder("age", Order.NUMASC).setlimit(2, 1)
        assert q.search() == [b"4", b"2"]
        assert q.count() == 2  # the count is after the limit
        q.setlimit(-1, 4)  # negative max: no limit
        assert q.search() == [b"5", b"3"]
    with people.query() as q:
        q.addcond("city", Cond.STREQ, "Paris")
        assert q.searchcount() == 3
        assert q.count() == 3


def test_searchout(people: TableDB) -> None:
    with people.query() as q:
        q.addcond("city", Cond.STREQ, "Paris").searchout()
    assert sorted(people.keys()) == [b"2", b"4", b"5"]


def test_metasearch(people: TableDB) -> None:
    with (
        people.query() as paris,
        people.query() as rome,
        people.query() as old,
    ):
        paris.addcond("city", Cond.STREQ, "Paris")
        rome.addcond("city", Cond.STREQ, "Rome")
        old.addcond("age", Cond.NUMGE, "30")
        assert sorted(metasearch([paris, rome])) == [b"1", b"3", b"4", b"6"]
        assert sorted(metasearch([paris, old], SetOp.ISECT)) == [b"1", b"3"]
        assert metasearch([paris, old], SetOp.DIFF) == [b"6"]
        # The first query's order and limit apply to the combined result.
        paris.setorder("age", Order.NUMASC).setlimit(3)
        assert paris.metasearch([rome]) == [b"6", b"4", b"1"]
    assert metasearch([]) == []


def test_metasearch_needs_one_database(tmp_path: Path) -> None:
    with (
        TableDB().open(tmp_path / "a.tct") as a,
        TableDB().open(tmp_path / "b.tct") as b,
        a.query() as qa,
        b.query() as qb,
        pytest.raises(ValueError, match="same database"),
    ):
        metasearch([qa, qb])


HINTS = [
    ("city", Cond.STREQ, "Paris", 'using an index: "city" asc (STREQ)'),
    ("name", Cond.STRBW, "a", 'using an index: "name" asc (STRBW)'),
    ("age", Cond.NUMGE, "30", 'using an index: "age" asc (NUMGT/NUMGE)'),
    ("age", Cond.NUMBT, "7 30", 'using an index: "age" asc (NUMBT)'),
    ("tags", Cond.STRAND, "red blue", 'using an index: "tags" inverted (STRAND)'),
    ("text", Cond.FTSPH, "quick", 'using an index: "text" inverted (FTS)'),
]


@pytest.mark.parametrize(("col", "op", "expr", "hint"), HINTS, ids=[h[1].name for h in HINTS])
def test_index_used_per_hint(db: TableDB, col: str, op: Cond, expr: str, hint: str) -> None:
    for pk, cols in ROWS.items():
        db.put(pk, cols)
    with db.query() as q:
        q.addcond(col, op, expr).search()
        assert "scanning the whole table" in q.hint()
    kind = {"age": IndexType.DECIMAL, "tags": IndexType.TOKEN, "text": IndexType.QGRAM}
    assert db.setindex(col, kind.get(col, IndexType.LEXICAL))
    with db.query() as q:
        q.addcond(col, op, expr).search()
        assert hint in q.hint()
    with db.query() as q:  # NOIDX forces a scan, with the same result
        q.addcond(col, op, expr, noidx=True).search()
        assert "scanning the whole table" in q.hint()


def test_index_files_keep_and_void(db: TableDB, path: Path) -> None:
    db.put(b"1", {b"email": b"a@x"})
    assert db.setindex("email", IndexType.LEXICAL) is True
    assert (path.parent / "t.tct.idx.email.lex").exists()
    assert db.setindex("email", IndexType.LEXICAL, keep=True) is False
    assert db.setindex("email", IndexType.OPT) is True
    assert db.setindex("email", IndexType.VOID) is True
    assert not (path.parent / "t.tct.idx.email.lex").exists()
    with pytest.raises(TCError) as info:
        db.setindex("email", 77)
    assert info.value.ecode == ErrorCode.INVALID


def test_index_survives_reopen(path: Path) -> None:
    with TableDB().open(path) as db:
        db.put(b"1", {b"email": b"a@x"})
        db.setindex("email", IndexType.LEXICAL)
    with TableDB().open(path, OpenMode.READER) as db, db.query() as q:
        assert q.addcond("email", Cond.STREQ, "a@x").search() == [b"1"]
        assert 'using an index: "email"' in q.hint()


# -- transactions ----------------------------------------------------------------------------


def test_transaction_commit_and_abort(db: TableDB) -> None:
    db.setindex("v", IndexType.LEXICAL)
    db.tranbegin()
    db.put(b"a", {b"v": b"1"})
    db.trancommit()
    db.tranbegin()
    db.put(b"b", {b"v": b"2"})
    db.out(b"a")
    db.tranabort()
    assert db.keys() == [b"a"]
    with db.query() as q:  # the index entries were rolled back too
        assert q.addcond("v", Cond.STRBW, "").search() == [b"a"]
        assert 'using an index: "v"' in q.hint()
    with db.transaction():
        db.put(b"c", {b"v": b"3"})
    with pytest.raises(RuntimeError), db.transaction():
        db.put(b"d", {b"v": b"4"})
        raise RuntimeError("roll back")
    assert sorted(db.keys()) == [b"a", b"c"]


def test_transaction_misuse_raises_instead_of_hanging(db: TableDB) -> None:
    with pytest.raises(TCError, match="no transaction"):
        db.trancommit()
    db.tranbegin()
    with pytest.raises(TCError, match="already open"):
        db.tranbegin()  # the library itself would wait for itself forever
    db.tranabort()


def test_close_aborts_open_transaction(path: Path) -> None:
    db = TableDB().open(path)
    db.put(b"a", {b"v": b"1"})
    db.tranbegin()
    db.put(b"b", {b"v": b"2"})
    db.close()
    with TableDB().open(path) as again:
        assert again.keys() == [b"a"]
        with again.transaction():  # not left locked
            pass


def test_atomically_commits_aborts_and_joins_an_open_transaction(db: TableDB) -> None:
    db.setindex("v", IndexType.LEXICAL)
    assert db.atomically(db.putdump, b"a", b"\x01v\x011", keep=True) is True
    assert not db.in_transaction()

    def put_then_fail() -> None:
        db.put(b"b", {b"v": b"2"})
        raise RuntimeError("undo")

    with pytest.raises(RuntimeError):
        db.atomically(put_then_fail)
    assert db.keys() == [b"a"] and not db.in_transaction()
    with db.transaction():
        assert db.in_transaction()
        db.atomically(db.put, b"c", {b"v": b"3"})  # joins: the abort below undoes it
        db.tranabort()
        db.tranbegin()
    assert sorted(db.keys()) == [b"a"]
    with db.query() as q:
        assert q.addcond("v", Cond.STRBW, "").search() == [b"a"]


def test_a_process_killed_inside_a_transaction_leaves_the_state_before_it(path: Path) -> None:
    """Tokyo's write-ahead log (``<file>.wal``, one per index file) is played back by the
    next open: the records and index entries of the killed transaction are gone."""
    with TableDB().open(path) as db:
        db.setindex("v", IndexType.DECIMAL)
        db.put(b"before", {b"v": b"1", b"p": b"x" * 5000})
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child kills itself mid-transaction
        try:
            db = TableDB().open(path)
            db.tranbegin()
            for i in range(200):
                db.put(b"k%d" % i, {b"v": b"2", b"p": b"y" * 3000})
            db.put(b"before", {b"v": b"3"})  # an overwrite moves the record
            db.out(b"k7")
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert os.path.getsize(f"{path}.wal") > 0  # the log the child left behind
    assert path.read_bytes()[binding.FLAGS_OFFSET] & binding.FLAG_OPEN
    with TableDB().open(path) as db:
        assert db.keys() == [b"before"] and db.rnum() == 1
        assert db.get(b"before") == {b"v": b"1", b"p": b"x" * 5000}
        with db.query() as q:
            assert q.addcond("v", Cond.NUMEQ, "1").search() == [b"before"]
            assert "using an index" in q.hint()
        with db.query() as q:
            assert q.addcond("v", Cond.NUMEQ, "2").search() == []
    assert not os.path.exists(f"{path}.wal")  # a clean close removes it


def test_transactions_of_threads_wait_for_each_other(path: Path) -> None:
    events: list[str] = []
    began = threading.Event()
    with TableDB().open(path) as db:

        def second() -> None:
            began.wait()
            with db.transaction():
                events.append("second began")
                db.put(b"b", {b"v": b"2"})

        worker = threading.Thread(target=second)
        worker.start()
        with db.transaction():
            began.set()
            time.sleep(0.2)
            events.append("first commits")
            db.put(b"a", {b"v": b"1"})
        worker.join(10)
        assert events == ["first commits", "second began"]
        assert sorted(db.keys()) == [b"a", b"b"]


# -- handles, registry, errors ---------------------------------------------------------------


def test_same_file_shares_one_handle(path: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.tct"
    a = TableDB().open(path)
    b = TableDB().open(path, OpenMode.READER)
    a.put(b"k", {b"v": b"1"})
    link.symlink_to(path)
    c = TableDB().open(link)  # same real path: same handle
    assert open_handles() == {os.path.realpath(path): 3}
    assert live_pointer_kinds() == {"TCTDB": 1}
    assert b.get(b"k") == c.get(b"k") == {b"v": b"1"}
    a.close()
    a.close()  # idempotent
    assert b.get(b"k") == {b"v": b"1"}
    b.close()
    c.close()
    assert open_handles() == {}
    with pytest.raises(TCError, match="not open"):
        a.get(b"k")


def test_shared_handle_refuses_conflicting_modes(path: Path) -> None:
    with TableDB().open(path) as db:
        db.put(b"k", {b"v": b"1"})
        with pytest.raises(TCError, match="truncate"):
            TableDB().open(path, OpenMode.WRITER | OpenMode.TRUNC)
    with TableDB().open(path, OpenMode.READER) as reader:
        with pytest.raises(TCError, match="read-only"):
            TableDB().open(path, OpenMode.WRITER)
        assert reader.get(b"k") == {b"v": b"1"}
    with TableDB().open(path, OpenMode.WRITER | OpenMode.TRUNC) as db:
        assert db.rnum() == 0


def test_open_errors_carry_code_message_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.tct"
    with pytest.raises(TCError) as info:
        TableDB().open(missing, OpenMode.READER)
    err = info.value
    assert err.ecode == ErrorCode.NOFILE
    assert err.message == "file not found"
    assert err.path == str(missing)
    assert str(missing) in str(err)
    with pytest.raises(ValueError, match="READER or"):
        TableDB().open(missing, OpenMode.CREAT)


def test_tuning_before_open(path: Path) -> None:
    db = TableDB()
    db.tune(bnum=1000, apow=4, fpow=10, opts=TuneOpt.LARGE | TuneOpt.DEFLATE)
    db.setcache(rcnum=100, lcnum=64, ncnum=32)
    db.setxmsiz(1 << 20)
    with db.open(path):
        db.put(b"k", {b"v": b"x" * 1000})
        assert db.get(b"k") == {b"v": b"x" * 1000}
        with pytest.raises(TCError, match="already open"):
            db.tune(bnum=1)


def test_query_after_close_raises_instead_of_crashing(path: Path) -> None:
    db = TableDB().open(path)
    q = db.query().addcond("a", Cond.STREQ, "x")
    db.close()
    with pytest.raises(TCError, match="closed"):
        q.search()
    q.close()
    q.close()
    with pytest.raises(TCError, match="closed"):
        q.addcond("a", Cond.STREQ, "x")


def test_live_pointer_count_returns_to_zero(path: Path) -> None:
    with TableDB().open(path) as db:
        assert live_pointers() == 1  # the handle
        db.setindex("g", IndexType.LEXICAL)
        for i in range(500):
            db.put(b"%d" % i, {b"g": b"%d" % (i % 7), b"v": b"\x00" * (i % 300)})
        for i in range(600):
            db.get(b"%d" % i)
            db.getcol(b"%d" % i, b"v")
        db.putkeep(b"1", {})
        db.iterkeys().__next__()
        list(db.iterkeys())
        db.fwmkeys(b"1")
        with db.transaction():
            db.out(b"2")
        for g in range(7):
            with db.query() as q:
                q.addcond("g", Cond.STREQ, str(g)).setorder("v", Order.STRDESC).search()
                q.searchcount()
                assert live_pointers() == 2  # the handle and the query
        a, b = db.query(), db.query()
        a.addcond("g", Cond.NUMLE, "3")
        b.addcond("g", Cond.NUMGE, "3")
        metasearch([a, b], SetOp.ISECT)
        a.close()
        del b  # the finaliser frees a query nobody closed
        gc.collect()
        with pytest.raises(TCError):
            TableDB().open(path, OpenMode.WRITER | OpenMode.TRUNC)
        assert live_pointers() == 1
    assert live_pointers() == 0


def test_dropped_table_is_released_by_finaliser(path: Path) -> None:
    TableDB().open(path).put(b"k", {b"v": b"1"})
    gc.collect()
    assert open_handles() == {}
    with TableDB().open(path, OpenMode.READER) as db:
        assert db.get(b"k") == {b"v": b"1"}


def test_threads_writing_through_one_handle_lose_nothing(path: Path) -> None:
    n_threads, per_thread = 4, 3000
    views = [TableDB().open(path) for _ in range(2)]  # two users of one shared handle

    def writer(t: int) -> None:
        db = views[t % 2]
        for i in range(per_thread):
            db.put(b"%d-%d" % (t, i), {b"t": b"%d" % t, b"i": b"%d" % i, b"pad": b"x" * (i % 200)})
            if i % 10 == 0:
                assert db.get(b"%d-%d" % (t, i)) is not None

    try:
        run_in_threads(writer, n_threads)
        db = views[0]
        assert db.rnum() == n_threads * per_thread
        for t in range(n_threads):
            for i in range(0, per_thread, 97):
                assert db.get(b"%d-%d" % (t, i)) == {
                    b"t": b"%d" % t,
                    b"i": b"%d" % i,
                    b"pad": b"x" * (i % 200),
                }
    finally:
        for view in views:
            view.close()


LOCK_HOLDER = textwrap.dedent(
    """
    import sys
    from pymodels.ext.tokyo_cabinet._binding import OpenMode, TableDB
    db = TableDB().open(sys.argv[1], OpenMode.WRITER | OpenMode.CREAT)
    db.put(b"held", {b"by": b"child"})
    db.sync()
    print("ready", flush=True)
    sys.stdin.read()
    db.close()
    """
)


def test_other_process_holding_write_lock(path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for mode in (OpenMode.WRITER | OpenMode.LCKNB, OpenMode.READER | OpenMode.LCKNB):
            started = time.monotonic()
            with pytest.raises(TCError) as info:
                TableDB().open(path, mode)
            assert time.monotonic() - started < 1.0  # at once, not after waiting
            assert info.value.ecode == ErrorCode.LOCK
            assert "lock error" in str(info.value) and str(path) in str(info.value)
        assert open_handles() == {}
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    with TableDB().open(path, OpenMode.READER | OpenMode.LCKNB) as db:
        assert db.get(b"held") == {b"by": b"child"}


# -- interop with Debian's tctmgr ------------------------------------------------------------


def tctmgr(*args: str | Path) -> str:
    assert TCTMGR is not None
    done = subprocess.run([TCTMGR, *map(str, args)], capture_output=True, check=True, timeout=30)
    return done.stdout.decode("utf-8", "surrogateescape")  # "bin" holds 0xFF


@needs_tctmgr
def test_tctmgr_reads_what_the_binding_writes(path: Path) -> None:
    with TableDB().open(path) as db:
        for pk, cols in ROWS.items():
            db.put(pk, cols)
        db.put(b"bin", {b"v": b"a\x00\xff"})
        db.setindex("city", IndexType.LEXICAL)
    # The file must be closed (unlocked) before another process opens it.
    listed: dict[str, dict[str, str]] = {}
    for line in tctmgr("list", "-pv", path).splitlines():
        key, *fields = line.split("\t")
        listed[key] = dict(zip(fields[::2], fields[1::2], strict=True))
    assert listed["6"] == {k.decode(): v.decode() for k, v in ROWS[b"6"].items()}
    assert len(listed) == len(ROWS) + 1
    assert tctmgr("get", "-px", path, "bin") == "76\t61 00 FF\n"  # hex: the NUL survived
    found = tctmgr("search", "-pv", "-ph", "-ord", "age", "NUMASC", path, "city", "STREQ", "Paris")
    rows = [line.split("\t")[0] for line in found.splitlines() if not line.startswith("\t")]
    assert rows == ["6", "1", "3"]
    assert 'using an index: "city" asc (STREQ)' in found
    assert "record number: 7" in tctmgr("inform", path)


@needs_tctmgr
def test_binding_reads_what_tctmgr_writes(path: Path) -> None:
    tctmgr("create", path)
    tctmgr("put", path, "k1", "name", "émile", "age", "41")
    tctmgr("put", path, "k2", "name", "bob")
    tctmgr("setindex", "-it", "dec", path, "age")
    with TableDB().open(path, OpenMode.READER) as db:
        assert db.get(b"k1") == {b"name": "émile".encode(), b"age": b"41"}
        assert sorted(db.keys()) == [b"k1", b"k2"]
        with db.query() as q:
            assert q.addcond("age", Cond.NUMGT, "40").search() == [b"k1"]
            assert 'using an index: "age"' in q.hint()

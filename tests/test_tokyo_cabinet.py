"""Tests of the Tokyo Cabinet backend itself: column format, interop with ``tctmgr``, kind
traps, the query compiler's plans and hints, indexes, locking, transactions and memory.

The conformance suite runs in test_conformance_tokyo_cabinet.py; these tests cover what is
particular to this engine. Skipped as a whole when libtokyocabinet9 cannot be loaded; the
interop tests also need Debian's ``tctmgr`` (package tokyocabinet-bin).
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pymodels
from pymodels import Document, Q
from pymodels.errors import (
    BackendUnavailable,
    ConfigurationError,
    CorruptData,
    LockTimeout,
    NotSupported,
)
from pymodels.storage import BaseStorage
from pymodels.testing import oracle
from pymodels.testing import strategies as pst
from pymodels.testing.suite import (
    EVERY_KIND,
    Person,
    check_query_case,
    identical,
    run_in_threads,
    stored_form,
)

try:
    from pymodels.ext._tokyo._columns import decode_dump, dump_types, encode_dump
    from pymodels.ext._tokyo._compiler import (
        TCCond,
        case_insensitive_regex,
        compile_condition,
        gates_hold,
    )
    from pymodels.ext._tokyo._format import parse_map, vnum
    from pymodels.ext.tokyo_cabinet import Storage, features
    from pymodels.ext.tokyo_cabinet._binding import (
        Cond,
        IndexType,
        OpenMode,
        TableDB,
        live_pointer_kinds,
        live_pointers,
        open_handles,
    )
except BackendUnavailable as e:
    pytest.skip(f"Tokyo Cabinet backend unavailable: {e}", allow_module_level=True)

TCTMGR = shutil.which("tctmgr")
needs_tctmgr = pytest.mark.skipif(
    TCTMGR is None, reason="tctmgr not installed (apt-get install tokyocabinet-bin)"
)
UTC = dt.UTC


@pytest.fixture(autouse=True)
def _nothing_leaks() -> Iterator[None]:
    """Every test leaves no pointer the binding owns and no open file behind."""
    yield
    gc.collect()
    assert live_pointers() == 0, live_pointer_kinds()
    assert open_handles() == {}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "storage.tct"


@pytest.fixture
def open_storage(path: Path) -> Iterator[Callable[..., Storage]]:
    opened: list[Storage] = []

    def factory(**settings: Any) -> Storage:
        s = pymodels.get_storage({"backend": "tokyo_cabinet", "path": str(path), **settings})
        assert isinstance(s, Storage)
        opened.append(s)
        return s

    yield factory
    for s in opened:
        s.close()


@pytest.fixture
def storage(open_storage: Callable[..., Storage]) -> Storage:
    return open_storage()


def raw_columns(path: Path, pk: str) -> dict[bytes, bytes] | None:
    with TableDB().open(path, OpenMode.READER) as db:
        return db.get(pk.encode())


def tctmgr(*args: str | Path) -> str:
    assert TCTMGR is not None
    done = subprocess.run([TCTMGR, *map(str, args)], capture_output=True, check=True, timeout=30)
    return done.stdout.decode("utf-8", "surrogateescape")


def pks(query: Any) -> list[str]:
    return [d.pk for d in query]


# ============================================================================ the format


def test_the_storage_is_named_by_its_package(storage: Storage) -> None:
    assert storage.backend == "pymodels.ext.tokyo_cabinet"
    assert repr(storage) == f"<pymodels.ext.tokyo_cabinet.Storage at {storage.location!r}>"
    with pytest.raises(NotSupported, match=r"^pymodels\.ext\.tokyo_cabinet has no compound"):
        storage.create_index(("a", "b"))


def test_columns_are_plain_text_with_types_aside(storage: Storage, path: Path) -> None:
    storage.save(
        {
            "name": "Émile",
            "age": 42,
            "score": 0.5,
            "big": 1e16,
            "flag": True,
            "price": Decimal("2.50"),
            "round": Decimal("1E+5"),
            "raw": b"\x00\xff",
            "born": dt.date(1999, 12, 31),
            "at": dt.datetime(2024, 5, 1, 12, 30, 0, 1),
            "utc": dt.datetime(2024, 5, 1, 14, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "tags": ["red", "blue"],
            "spaced": ["a b", 1],
            "doc": {"k": [Decimal("1.0")]},
            "empty": "",
        },
        primary_key="p",
    )
    storage.close()
    cols = raw_columns(path, "p")
    assert cols is not None
    types = set(cols.pop(b"_types").decode().split())
    assert cols == {
        b"name": "Émile".encode(),
        b"age": b"42",
        b"score": b"0.5",
        b"big": b"10000000000000000.0",  # positional: Tokyo's number parser has no exponents
        b"flag": b"true",
        b"price": b"2.50",
        b"round": b"100000",
        b"raw": b"\x00\xff",
        b"born": b"19991231",
        b"at": b"20240501123000.000001",
        b"utc": b"20240501123000.000000",
        b"tags": b"red blue",
        b"spaced": b'[ "a b", 1 ]',
        b"doc": b'{ "k": [ { "$decimal": "1.0" } ] }',
        b"empty": b"\x00",  # never an empty column (see test_empty_values_...)
    }
    assert types == {
        "age:i",
        "score:f",
        "big:f",
        "flag:b",
        "price:d",
        "round:d",
        "round:x5",
        "raw:y",
        "born:D",
        "at:t",
        "utc:z",
        "tags:w",
        "spaced:l",
        "doc:m",
        "empty:e",
    }


def test_plain_str_records_have_no_types_column(storage: Storage, path: Path) -> None:
    storage.save({"a": "x", "b": "y"}, primary_key="p")
    storage.close()
    assert raw_columns(path, "p") == {b"a": b"x", b"b": b"y"}


@given(record=pst.records(big_floats=True))
@settings(max_examples=pst.examples(300), deadline=None)
def test_codec_round_trips_every_record(record: dict[str, Any]) -> None:
    expected = stored_form(record)
    encoded = encode_dump(pymodels.values.validate_record(record))
    assert identical(decode_dump(encoded), expected)


def _dump(columns: dict[bytes, bytes]) -> bytes:
    """Columns in ``tcmapdump`` form, in their order (as another client may write them)."""
    return b"".join(vnum(len(c)) + c + vnum(len(v)) + v for c, v in columns.items())


@given(
    records=st.lists(pst.records(big_floats=True), min_size=1, max_size=8),
    rnd=st.randoms(use_true_random=False),
)
@settings(max_examples=pst.examples(300), deadline=None)
def test_dumps_decoded_in_a_row_each_decode_as_alone(
    records: list[dict[str, Any]], rnd: random.Random
) -> None:
    # decode_dump matches a record's columns against those of records read before it
    # (a layout per shape): whatever came before, each dump decodes to its own record,
    # fields in its own order. Each record comes as saved, with its fields in another
    # order, without one field, and with a column records leave out (another client's)
    # among its columns.
    cases: list[tuple[bytes, dict[str, Any]]] = []
    for record in records:
        valid = pymodels.values.validate_record(record)
        items = list(valid.items())
        shuffled = dict(rnd.sample(items, len(items)))
        fewer = dict(items[1:])
        columns = parse_map(encode_dump(valid))
        hidden = list(columns.items())
        hidden.insert(rnd.randint(0, len(hidden)), (b"_num", b"7"))
        for variant, dump in [
            (valid, encode_dump(valid)),
            (shuffled, encode_dump(shuffled)),
            (fewer, encode_dump(fewer)),
            (valid, _dump(dict(hidden))),
        ]:
            cases.append((dump, stored_form(variant)))
    for _ in range(3):
        rnd.shuffle(cases)
        for dump, expected in cases:
            decoded = decode_dump(dump)
            assert identical(decoded, expected)
            assert list(decoded) == list(expected)


def test_field_names_with_separators_round_trip(storage: Storage) -> None:
    record = {"x y": 1, "a,b": 2.5, "it's 100%": True, "a:b": Decimal("1"), "名前": b""}
    pk = storage.save(record)
    assert identical(dict(storage.get(None, pk)), record)
    assert pks(storage.query().where(**{"x y": 1})) == [pk]
    assert pks(storage.query().where(**{"a,b__gt": 2})) == [pk]
    assert pks(storage.query().where(**{"a:b": Decimal("1.00")})) == [pk]


def test_metadata_lives_in_the_file_header(storage: Storage, path: Path) -> None:
    assert len(storage) == 0
    storage.save({"a": "1"}, primary_key="only")
    storage.close()
    with TableDB().open(path, OpenMode.READER) as db:
        assert db.keys() == [b"only"] and db.rnum() == 1
    assert path.read_bytes()[192 : 192 + 14] == b"pymodels-tct 1"  # tctdbopaque: header + 64


def test_a_newer_format_is_refused(open_storage: Callable[..., Storage], path: Path) -> None:
    open_storage().close()
    data = bytearray(path.read_bytes())
    data[192 : 192 + 14] = b"pymodels-tct 9"
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigurationError, match="newer pymodels"):
        open_storage()


def test_clearing_a_large_file_keeps_indexes_and_stamp(storage: Storage, path: Path) -> None:
    storage.create_index("n", kind="decimal")
    storage.save_many({"n": i} for i in range(10_050))
    storage.clear()
    assert len(storage) == 0
    storage.save({"n": 5}, primary_key="k")
    assert "using an index" in storage.query().where(n__gte=3).explain()
    storage.close()
    assert path.read_bytes()[192 : 192 + 14] == b"pymodels-tct 1"


# ============================================================== interop with tctmgr


@needs_tctmgr
def test_tctmgr_lists_and_searches_what_pymodels_writes(storage: Storage, path: Path) -> None:
    storage.create_index("age", kind="decimal")
    storage.save({"name": "ann", "age": 31, "born": dt.date(1993, 4, 1)}, primary_key="p1")
    storage.save({"name": "bob", "age": 25.5, "tags": ["x", "y"]}, primary_key="p2")
    storage.save({"name": "émile", "age": "40"}, primary_key="p3")  # a str: no type token
    storage.close()  # releases the lock for the other process
    listed = {}
    for line in tctmgr("list", "-pv", path).splitlines():
        key, *fields = line.split("\t")
        listed[key] = dict(zip(fields[::2], fields[1::2], strict=True))
    assert listed == {
        "p1": {"name": "ann", "age": "31", "born": "19930401", "_types": "age:i born:D"},
        "p2": {"name": "bob", "age": "25.5", "tags": "x y", "_types": "age:f tags:w"},
        "p3": {"name": "émile", "age": "40"},
    }
    found = tctmgr("search", "-ph", "-ord", "age", "NUMDESC", path, "age", "NUMGE", "26")
    assert [line for line in found.splitlines() if not line.startswith("\t")] == ["p3", "p1"]
    assert 'using an index: "age"' in found
    assert tctmgr("search", path, "tags", "STRAND", "y").split() == ["p2"]
    assert tctmgr("search", path, "born", "NUMBT", "19930101 19931231").split() == ["p1"]
    assert "record number: 3" in tctmgr("inform", path)


@needs_tctmgr
def test_pymodels_reads_what_tctmgr_writes(
    open_storage: Callable[..., Storage], path: Path, tmp_path: Path
) -> None:
    tctmgr("create", path)
    tctmgr("put", path, "k1", "name", "émile", "age", "41")
    tctmgr("put", path, "k2", "name", "bob", "city", "")
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("k3\tname\tcarol\tage\t7\n")
    tctmgr("importtsv", path, tsv)
    tctmgr("setindex", "-it", "lex", path, "name")
    s = open_storage()
    assert dict(s.get(None, "k1")) == {"name": "émile", "age": "41"}  # no type info: str
    assert dict(s.get(None, "k2")) == {"name": "bob", "city": ""}
    assert sorted(s) == ["k1", "k2", "k3"]
    assert pks(s.query().where(age="41")) == ["k1"]
    assert pks(s.query().where(age=41)) == []  # "41" is a str, never the number 41
    assert pks(s.query().where(city="")) == ["k2"]  # an empty value another client wrote
    assert pks(s.query().where(name__startswith="é")) == ["k1"]
    assert 'using an index: "name"' in s.query().where(name="bob").explain()
    assert s.index_kinds() == {"name": "lexical"}


def test_foreign_columns_that_are_not_field_names_are_left_out(
    open_storage: Callable[..., Storage], path: Path
) -> None:
    with TableDB().open(path) as db:
        db.addint(b"counter", 5)  # Tokyo keeps it in a column named "_num"
        db.put(b"odd", {b"a.b": b"1", b"ok": b"caf\xe9\x00!", b"\xff": b"x"})
    s = open_storage()
    assert dict(s.get(None, "counter")) == {}
    assert dict(s.get(None, "odd")) == {"ok": "caf\ufffd\ufffd!"}
    assert len(s) == 2


# ==================================================================== kind traps


@pytest.fixture
def kinds(storage: Storage) -> Storage:
    rows: dict[str, Any] = {
        "int": 7,
        "float": 7.0,
        "str": "7",
        "decimal": Decimal("7.00"),
        "bool": True,
        "bytes": b"7",
        "date": dt.date(2020, 1, 1),
        "dateint": 20200101,
        "datestr": "20200101",
        "list": [7],
        "words": ["7"],
        "dict": {"v": 7},
        "empty": "",
    }
    for pk, value in rows.items():
        storage.save({"v": value}, primary_key=pk)
    storage.save({"other": 1}, primary_key="absent")
    return storage


@pytest.mark.parametrize("indexed", [None, "lexical", "decimal", "token"])
@pytest.mark.parametrize(
    ("lookup", "expected"),
    [
        ({"v": 7}, ["float", "int"]),
        ({"v": "7"}, ["str"]),
        ({"v": Decimal("7")}, ["decimal"]),
        ({"v": True}, ["bool"]),
        ({"v": 1}, []),  # True is not 1
        ({"v": b"7"}, ["bytes"]),
        ({"v": dt.date(2020, 1, 1)}, ["date"]),
        ({"v": 20200101}, ["dateint"]),
        ({"v": "20200101"}, ["datestr"]),
        ({"v": [7]}, ["list"]),
        ({"v": [7.0]}, ["list"]),
        ({"v": ["7"]}, ["words"]),
        ({"v": ""}, ["empty"]),
        ({"v__gt": 6}, ["dateint", "float", "int"]),
        ({"v__lte": 7.0}, ["float", "int"]),
        ({"v__between": (7, 7)}, ["float", "int"]),
        ({"v__gte": Decimal("6.999")}, ["decimal"]),
        ({"v__gt": dt.date(2019, 12, 31)}, ["date"]),
        ({"v__in": [7, "7", b"7"]}, ["bytes", "float", "int", "str"]),
        ({"v__startswith": "2020"}, ["datestr"]),
        ({"v__startswith": ""}, ["datestr", "empty", "str"]),
        ({"v__contains": 7}, ["list"]),
        ({"v__contains": "7"}, ["str", "words"]),
        ({"v__year": 2020}, ["date"]),
        ({"v__exists": False}, ["absent"]),
        ({"v__iequals": ""}, ["empty"]),
    ],
)
def test_numeric_looking_text_keeps_its_kind(
    kinds: Storage, indexed: str | None, lookup: dict[str, Any], expected: list[str]
) -> None:
    if indexed:
        kinds.create_index("v", kind=indexed)
    q = kinds.query().where(**lookup)
    assert sorted(pks(q)) == expected
    assert q.count() == len(expected)
    everyone = sorted(kinds)
    assert sorted(pks(kinds.query().where_not(**lookup))) == sorted(set(everyone) - set(expected))


# Bytes Tokyo's token operators treat specially, and the pieces of type tokens.
TOKEN_PIECES = [b"v:e", b"v:i", b"v", b":", b"e", b" ", b",", b"\t", b"\x00", b"\xff", b"w:e"]
TOKEN_BYTES = st.binary(max_size=12) | st.lists(st.sampled_from(TOKEN_PIECES), max_size=5).map(
    b"".join
)


@settings(
    max_examples=pst.examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    types=st.none() | TOKEN_BYTES,
    gates=st.lists(st.tuples(TOKEN_BYTES, st.booleans()), min_size=1, max_size=3),
)
def test_kind_gates_checked_in_python_agree_with_tokyo(
    tmp_path_factory: pytest.TempPathFactory,
    types: bytes | None,
    gates: list[tuple[bytes, bool]],
) -> None:
    """gates_hold decides a record's kind gates as Tokyo's STROR would, on any _types."""
    conds = tuple(TCCond(b"_types", Cond.STROR, e.split(b"\x00")[0], n) for e, n in gates)
    path = tmp_path_factory.mktemp("gates") / "g.tct"
    with TableDB().open(path, OpenMode.WRITER | OpenMode.CREAT | OpenMode.TRUNC) as db:
        db.put(b"k", {b"v": b"x"} if types is None else {b"v": b"x", b"_types": types})
        with db.query() as q:
            for c in conds:
                q.addcond(c.col, c.op, c.expr, negate=c.negate)
            in_tokyo = q.search() == [b"k"]
        dump = db.getdump(b"k")
    assert dump is not None
    assert gates_hold(conds, dump_types(dump)) == in_tokyo


def test_kind_gates_of_fetched_records_hold_for_foreign_types_columns(
    open_storage: Callable[..., Storage], path: Path
) -> None:
    """A full fetch over an indexed column checks kinds on the loaded records: wherever
    the _types column is (or is not), and whatever else holds its bytes."""
    with TableDB().open(path) as db:
        db.setindex("v", IndexType.LEXICAL)
        db.put(b"last", {b"v": b"x", b"_types": b"v:i"})  # an int, types after the value
        db.put(b"none", {b"v": b"x"})  # no types at all: a str
        db.put(b"lookalike", {b"w": b"\x06_types", b"v": b"x"})  # a str too
        db.put(b"cut", {b"_types": b"w:i\x00v:y", b"v": b"x"})  # a str: C strings end at NUL
    s = open_storage()
    s.save({"v": "x"}, primary_key="ours")
    s.save({"v": b"x"}, primary_key="bytes")
    s.save({"v": ["x"]}, primary_key="words")
    s.save({"v": "xy"}, primary_key="longer")
    plan, residual = compile_condition(Q(v="x"), s._index_map())
    assert plan.deferred is not None and residual is None
    expected = ["cut", "lookalike", "none", "ours"]
    assert pks(s.query().where(v="x")) == expected
    assert pks(s.query().where(v="x")[:10]) == expected  # a limit keeps the gates in Tokyo
    assert s.query().where(v="x").count() == len(expected)
    assert pks(s.query().where(v__startswith="x")) == [expected[0], "longer", *expected[1:]]
    assert pks(s.query().where(v="x").order_by("-pk")) == expected[::-1]
    assert "documents: tctdbqry: v STREQ 'x' (then checked in Python: _types !STROR" in (
        s.query().where(v="x").explain()
    )
    assert "documents:" not in s.query().where(v="x")[:10].explain()
    assert dict(s.get(None, "last")) == {"v": "x"}  # not an int after all: loads as text


@settings(max_examples=pst.examples(200), deadline=None)
@given(
    name=pst.field_names() | st.sampled_from(["a b", "名前", "x,y"]),
    op=st.sampled_from(["equals", "startswith", "endswith"]),
    values=st.lists(st.text(max_size=6).filter(lambda t: "\x00" not in t), min_size=2),
    kind=st.sampled_from(["", "lexical", "decimal", "token", "qgram"]),
)
def test_queries_of_one_shape_compile_as_if_compiled_afresh(
    name: str, op: str, values: list[str], kind: str
) -> None:
    """compile_condition reuses the plan of a lookup shape with the operand substituted:
    the plans are the ones a full compile gives."""
    from pymodels.conditions import Lookup
    from pymodels.ext._tokyo import _compiler

    indexes = {name.encode(): kind} if kind else {}
    for value in values:
        lookup = Lookup((name,), op, value)
        assert compile_condition(lookup, indexes) == _compiler._compile(lookup, indexes)


def test_numbers_beyond_tokyo_precision(storage: Storage) -> None:
    # Tokyo's parser keeps 16 digits and rounds in a long double: these compare equal there.
    values = {"a": 0.3, "b": 0.30000000000000004, "c": 2**63 - 1, "d": 2**63 - 2, "e": 2**53 + 1}
    for pk, v in values.items():
        storage.save({"n": v}, primary_key=pk)
    storage.create_index("n", kind="decimal")
    assert pks(storage.query().where(n=0.3)) == ["a"]
    assert pks(storage.query().where(n__gt=0.3)) == ["b", "c", "d", "e"]
    assert pks(storage.query().where(n__lt=0.30000000000000004)) == ["a"]
    assert pks(storage.query().where(n=2**63 - 2)) == ["d"]
    assert pks(storage.query().where(n__gt=2**63 - 2)) == ["c"]
    assert pks(storage.query().where(n=float(2**53))) == []
    assert pks(storage.query().where(n__in=[2**53 + 1, 0.3])) == ["a", "e"]
    assert pks(storage.query().order_by("-n")[:2]) == ["c", "d"]


def test_decimals_keep_digits_and_compare_by_value(storage: Storage) -> None:
    texts = {"a": "2.50", "b": "2.5", "c": "1E+5", "d": "100000.0", "e": "-0", "f": "0E-7"}
    for pk, v in texts.items():
        storage.save({"d": Decimal(v)}, primary_key=pk)
    assert storage.get(None, "a")["d"].as_tuple() == Decimal("2.50").as_tuple()
    assert storage.get(None, "c")["d"].as_tuple() == Decimal("1E+5").as_tuple()
    assert storage.get(None, "f")["d"].as_tuple() == Decimal("0E-7").as_tuple()
    assert pks(storage.query().where(d=Decimal("2.500"))) == ["a", "b"]
    assert pks(storage.query().where(d=Decimal("1E+5"))) == ["c", "d"]
    assert pks(storage.query().where(d=Decimal("0"))) == ["e", "f"]
    assert pks(storage.query().where(d__in=[Decimal("2.5"), Decimal("100000")])) == [
        "a",
        "b",
        "c",
        "d",
    ]
    assert "python filter: none" in storage.query().where(d=Decimal("2.5")).explain()


def test_empty_values_never_reach_a_column(storage: Storage, path: Path) -> None:
    # Tokyo Cabinet 1.4.48 aborts the process when an empty value meets a lexical or
    # decimal index: this save would have killed the interpreter.
    storage.create_index("s", kind="lexical")
    storage.create_index("b", kind="decimal")
    storage.save({"s": "", "b": b"", "l": []}, primary_key="p")
    assert identical(dict(storage.get(None, "p")), {"s": "", "b": b"", "l": []})
    assert pks(storage.query().where(s="")) == ["p"]
    assert pks(storage.query().where(s__startswith="", b=b"", l=[])) == ["p"]
    assert pks(storage.query().where(s__gt="")) == []
    storage.close()
    assert raw_columns(path, "p") == {
        b"s": b"\x00",
        b"b": b"\x00",
        b"l": b"[]",
        b"_types": b"s:e b:E l:l",
    }


FOREIGN_EMPTY = textwrap.dedent(
    """
    import sys
    import pymodels
    from pymodels.ext.tokyo_cabinet._binding import TableDB
    with TableDB().open(sys.argv[1]) as db:
        db.put(b"k", {b"name": b""})
    s = pymodels.get_storage({"backend": "tokyo_cabinet", "path": sys.argv[1]})
    try:
        s.create_index("name")
    except pymodels.PyModelsError as e:
        print("refused:", e)
    s.create_index("name", kind="token")
    s.close()
    print("alive")
    """
)


def test_an_index_over_foreign_empty_values_is_refused_not_fatal(path: Path) -> None:
    # In a child process: if the guard failed, Tokyo would abort the test run itself.
    done = subprocess.run(
        [sys.executable, "-c", FOREIGN_EMPTY, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "empty value" in done.stdout
    assert done.stdout.strip().endswith("alive")


# ================================================================ case-insensitive ops


@pytest.mark.parametrize(
    ("value", "lookup", "hit"),
    [
        ("\u212aelvin", {"v__iequals": "kelvin"}, True),  # KELVIN SIGN lowers to "k"
        ("İstanbul", {"v__istartswith": "i"}, True),  # "İ".lower() is "i" + U+0307
        ("İstanbul", {"v__iequals": "istanbul"}, False),
        ("xİ", {"v__iendswith": "i"}, False),
        ("xİ", {"v__icontains": "xi"}, True),
        ("ΑΣ", {"v__iequals": "ας"}, True),  # final sigma
        ("ΑΣ", {"v__iequals": "ασ"}, False),
        ("Straße", {"v__icontains": "SS"}, False),  # lower(), not casefold()
        ("a.b*c", {"v__iequals": "A.B*C"}, True),
        ("axbyc", {"v__iequals": "A.B*C"}, False),  # regex characters are data
        ("(a|b)", {"v__icontains": "A|B"}, True),
        ("CAFÉ", {"v__iequals": "café"}, True),
        ("Émile Zola", {"v__like": "zola ÉMILE"}, True),
        ("Émile Zola", {"v__like": "zol"}, False),
    ],
)
def test_case_insensitive_ops_follow_python_lower(
    storage: Storage, value: str, lookup: dict[str, Any], hit: bool
) -> None:
    storage.save({"v": value}, primary_key="p")
    assert pks(storage.query().where(**lookup)) == (["p"] if hit else [])
    assert pks(storage.query().where_not(**lookup)) == ([] if hit else ["p"])


def test_case_insensitive_regexes_are_locale_independent() -> None:
    pattern, exact = case_insensitive_regex("a.k", "iequals") or ("", False)
    # Only literals, ASCII brackets and alternations: glibc gives "." and case folding a
    # locale-dependent meaning, so neither may appear unescaped.
    assert pattern == "^[aA]\\.(k|K|\u212a)$" and exact
    assert case_insensitive_regex("i\u0307", "iequals") is None


# ====================================================================== the planner


def test_explain_shows_the_split_and_tokyo_hint(storage: Storage) -> None:
    storage.create_index("name")
    storage.create_index("age", kind="decimal")
    for i in range(30):
        storage.save({"name": f"n{i}", "age": i}, primary_key=f"k{i:02}")
    # A float among the ints: Tokyo's reading of numbers is no longer provably exact.
    storage.save({"name": "float", "age": 2.5}, primary_key="k99")
    plan = storage.query().where(name="n3").explain()
    assert "name STREQ 'n3'" in plan and 'using an index: "name" asc (STREQ)' in plan
    assert "python filter: none" in plan
    plan = storage.query().where(age__gte=10, name__matches="^n1").explain()
    assert 'using an index: "age" asc (NUMGT/NUMGE)' in plan
    # Only the records Tokyo finds equal to the bound are checked; regexes run in Python.
    assert "age NUMGT '10'" in plan
    assert "age NUMBT '9.99999999999999 10.00000000000001' AND age +NUMLE '10'" in plan
    assert "(then checked in Python: Q(age__gte=10))" in plan
    assert "python filter: Q(name__matches='^n1')" in plan
    plan = storage.query().where(Q(name="n1") | Q(age=3)).explain()
    assert "tctdbmetasearch UNION" in plan and "python filter: none" in plan
    plan = storage.query().where(name__startswith="n").order_by("-name")[:3].explain()
    assert "tctdbqrysetorder: name STRDESC" in plan and "order: -name, pk (engine)" in plan
    plan = storage.query().order_by("-age")[:3].explain()
    assert "order: -age, pk (python)" in plan  # a float: numbers do not order in Tokyo


def test_facts_about_columns_let_tokyo_order_and_count(storage: Storage) -> None:
    storage.create_index("city")
    storage.create_index("age", kind="decimal")
    for i in range(60):
        storage.save({"city": f"c{i % 3}", "age": i % 7}, primary_key=f"k{i:02}")
    q = storage.query()
    # Every age is a small int and every city a str: no kind gate, no tie check, and
    # the order by age runs in Tokyo (ties in pk order, as the contract says).
    plan = q.where(age__gt=3).explain()
    assert "_types" not in plan and "checked in Python" not in plan
    assert "age NUMBT" not in plan
    assert q.where(age__gt=3).count() == sum(1 for i in range(60) if i % 7 > 3)
    assert q.where(age__gte=3).count() == sum(1 for i in range(60) if i % 7 >= 3)
    top = q.where(city="c1").order_by("-age")
    assert "tctdbqrysetorder: age NUMDESC" in top[:5].explain()
    want = sorted((-(i % 7), f"k{i:02}") for i in range(60) if i % 3 == 1)[:5]
    assert [(-d["age"], d.pk) for d in top[:5]] == want
    assert [(-d["age"], d.pk) for d in top[2:5]] == want[2:5]
    # A write that breaks a fact takes it back: the answers stay the reference's.
    storage.save({"city": "c1", "age": "9"}, primary_key="k00a")
    storage.save({"city": "c1", "age": 6.5}, primary_key="k00b")
    assert "tctdbqrysetorder" not in top[:5].explain()
    assert [d.pk for d in top[:3]] == ["k00a", "k00b", want[0][1]]
    assert q.where(age__gt=3).count() == sum(1 for i in range(60) if i % 7 > 3) + 1
    assert "_types" in q.where(age__gt=3).explain()


def test_a_fact_is_proved_by_looking_for_one_record_that_breaks_it(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proof needs one breaking record, not how many: a count makes Tokyo list every
    # matching key first (58 MB for `where(age__gt=50)` over 1M records, whose plan
    # asks whether every age is a float). So proofs search with a limit of one.
    from pymodels.ext.tokyo_cabinet import _binding

    ages = {f"k{i:02}": i % 9 if i % 5 else i + 0.5 for i in range(40)}
    for pk, age in ages.items():
        storage.save({"age": age}, primary_key=pk)
    matching = [pk for pk, age in ages.items() if age > 5]
    asked: list[int] = []
    searchcount = _binding.Query.searchcount

    def counting(self: _binding.Query) -> int:
        asked.append(1)
        return searchcount(self)

    monkeypatch.setattr(_binding.Query, "searchcount", counting)
    storage._file.facts.clear()
    q = storage.query().where(age__gt=5)
    assert [d.pk for d in q] == matching
    assert storage._file.facts and not asked
    assert storage._file.facts[("int", "age")] is False  # the floats break it
    assert q.count() == len(matching)


def test_first_of_a_lookup_follows_the_facts_it_was_refined_with(storage: Storage) -> None:
    # first() of a one-field lookup reuses the shape's refined plan (no kind gate while
    # every email is a str); a write breaking that fact must bring the gate back.
    storage.create_index("email")
    for i in range(5):
        storage.save({"email": f"{i}"}, primary_key=f"k{i}")
    q = storage.query()
    for _ in range(3):
        found = q.where(email="3").first()
        assert found is not None and found.pk == "k3"
    assert "_types" not in q.where(email="3").explain()
    storage.save({"email": 7}, primary_key="a7")  # the column text "7", an int
    assert q.where(email="7").first() is None
    assert q.where(email="3").first().pk == "k3"  # type: ignore[union-attr]
    storage.save({"email": "7"}, primary_key="b7")
    assert [d.pk for d in q.where(email="7")[:5]] == ["b7"]
    assert q.where(email="7").order_by("-pk").first().pk == "b7"  # type: ignore[union-attr]
    assert q.where(email__startswith="").order_by("-pk")[1:3].first().pk == "k3"  # type: ignore[union-attr]


def test_a_bytes_value_breaks_the_facts_it_contradicts(storage: Storage) -> None:
    # Proved while no age was bytes: "no age carries the bytes codes" spares the kind
    # gate of a negated bytes lookup. Saving bytes must take the fact back (it did not:
    # found by the scratch-walk differential test, which reuses one storage).
    storage.save({"age": 1}, primary_key="a")
    assert [d.pk for d in storage.query().where_not(age=b"\x01")] == ["a"]
    storage.clear()
    storage.save({"age": b"\x01"}, primary_key="0")
    storage.save({"age": b""}, primary_key="1")
    q = storage.query().where_not(age=b"\x01")
    assert [d.pk for d in q] == ["1"]
    assert q.count() == 1
    assert [d.pk for d in storage.query().where(age=b"")] == ["1"]


def test_binding_search_blocks_is_queries_and_metasearch(path: Path) -> None:
    from pymodels.ext.tokyo_cabinet._binding import (
        Cond,
        OpenMode,
        Order,
        TableDB,
        live_pointers,
        metasearch,
        search_blocks,
    )

    with TableDB() as db:
        db.open(str(path), OpenMode.WRITER | OpenMode.CREAT)
        for i in range(20):
            db.put(f"k{i:02}".encode(), {b"n": str(i % 4).encode(), b"m": str(i % 3).encode()})
        one = [(b"n", int(Cond.STREQ), b"1", False, False)]
        two = [(b"m", int(Cond.STREQ), b"0", True, True)]
        with db.query() as q:
            q.addcond(b"n", Cond.STREQ, b"1").setorder(b"", Order.STRDESC).setlimit(3, 1)
            assert search_blocks(db, [one], (b"", Order.STRDESC), 3, 1) == q.search()
        with db.query() as a, db.query() as b:
            a.addcond(b"n", Cond.STREQ, b"1").setorder(b"", Order.STRASC)
            b.addcond(b"m", Cond.STREQ | Cond.NEGATE | Cond.NOIDX, b"0")
            assert search_blocks(db, [one, two], (b"", Order.STRASC)) == metasearch([a, b])
        assert search_blocks(db, []) == []
        with pytest.raises(ValueError, match="NUL"):
            search_blocks(db, [[(b"n", int(Cond.STREQ), b"a\0b", False, False)]])
        assert live_pointers() == 1  # only the handle: every query freed


def test_each_index_kind_serves_the_planner(storage: Storage) -> None:
    storage.create_index("age", kind="decimal")
    storage.create_index("tags", kind="token")
    storage.create_index("born", kind="decimal")
    for i in range(40):
        storage.save(
            {"age": i % 7, "tags": [f"t{i % 3}", "x"], "born": dt.date(2000 + i % 5, 1, 2)},
            primary_key=f"k{i:02}",
        )
    # Equality of numbers and dates gets a NUMEQ superset the decimal index serves.
    plan = storage.query().where(age=3).explain()
    assert 'using an index: "age" asc (NUMEQ)' in plan and "python filter: none" in plan
    assert storage.query().where(age=3).count() == 6
    plan = storage.query().where(born__year=2002).explain()
    assert 'using an index: "born" asc (NUMBT)' in plan
    assert storage.query().where(born__year=2002).count() == 8
    # Word lists: equality and contains of non-str values through the token index.
    plan = storage.query().where(tags=["t1", "x"]).explain()
    assert 'using an index: "tags" inverted (STRAND)' in plan
    assert storage.query().where(tags=["t1", "x"]).count() == 13
    plan = storage.query().where(tags__contains=5).explain()
    assert 'using an index: "tags" inverted (STROR)' in plan


def test_in_over_words_and_spaced_strs(storage: Storage) -> None:
    for i, name in enumerate(["ann", "bob", "a b", "c,d", "", "bob "]):
        storage.save({"name": name}, primary_key=f"k{i}")
    q = storage.query().where(name__in=["ann", "bob", "a b", "c,d", ""])
    assert pks(q) == ["k0", "k1", "k2", "k3", "k4"]
    assert "STROREQ 'ann bob'" in q.explain() and "python filter: none" in q.explain()


def test_count_and_delete_run_in_the_engine(storage: Storage) -> None:
    storage.save_many({"n": i % 3, "s": str(i)} for i in range(30))
    q = storage.query().where(n=1)
    assert "python filter: none" in q.explain()
    assert q.count() == 10 and q[2:].count() == 8
    assert q.delete() == 10 and len(storage) == 20
    assert storage.query().where(Q(n=0) | Q(s="2")).delete() == 11  # s="2" has n=2
    assert sorted(storage.query().values("n")) == [2]


def test_ordered_slices_with_ties(storage: Storage) -> None:
    for i in range(40):
        storage.save({"name": f"n{i % 4}", "i": i}, primary_key=f"k{39 - i:02}")
    q = storage.query().where(name__startswith="n").order_by("-name")
    assert "order: -name, pk (engine)" in q.explain()
    expected = sorted((d for d in storage.query()), key=lambda d: (-ord(d["name"][1]), d.pk))
    assert pks(q) == [d.pk for d in expected]
    for a, b in [(0, 1), (0, 5), (3, 12), (9, 11), (38, 45), (10, 10)]:
        assert pks(q[a:b]) == [d.pk for d in expected[a:b]], (a, b)
    anchor = expected[13]
    assert pks(q.after(anchor)[:6]) == [d.pk for d in expected[14:20]]
    q2 = storage.query().where(name__in=["n1", "n2"]).order_by("name", "-pk")[:7]
    want = sorted((d for d in expected if d["name"] in ("n1", "n2")), key=lambda d: str(d.pk))
    want = sorted(want, key=lambda d: str(d.pk), reverse=True)
    want = sorted(want, key=lambda d: d["name"])
    assert pks(q2) == [d.pk for d in want[:7]]


ORDERED_NAMES = st.sampled_from(["", "a", "a", "ab", "b", "é", "Z", "名", "a b", "\U0001d11e"])
ORDERED_VALUES = st.one_of(
    ORDERED_NAMES,
    st.sampled_from([7, b"", b"\x00", b"a", dt.date(2020, 1, 1), ["a"], True]),
    st.dates(dt.date(1999, 12, 30), dt.date(2000, 1, 2)),
    st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2000, 1, 1, 0, 0, 1)),
)


@settings(
    max_examples=pst.examples(200),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    records=st.dictionaries(
        st.text("abc", min_size=1, max_size=2),
        st.dictionaries(st.just("v"), ORDERED_VALUES, max_size=1),
        max_size=12,
    ),
    where=st.sampled_from(
        [
            ("lookup", "v__startswith", ""),
            ("lookup", "v__startswith", "a"),
            ("lookup", "v__in", ["a", "ab", "", "名"]),
            ("lookup", "v__gte", "a"),
            ("lookup", "v__gte", dt.date(2000, 1, 1)),
            ("lookup", "v__lt", dt.datetime(2000, 1, 1, 0, 0, 0, 500000)),
            ("lookup", "v__gte", b""),
            ("or", [("lookup", "v", "a"), ("lookup", "v", "b")]),
        ]
    ),
    direction=st.sampled_from(["", "-"]),
    second=st.sampled_from([[], ["pk"], ["-pk"]]),
    offset=st.integers(0, 4),
    limit=st.none() | st.integers(0, 5),
)
def test_engine_ordering_matches_the_oracle(
    storage: Storage,
    records: dict[str, dict[str, Any]],
    where: tuple[Any, ...],
    direction: str,
    second: list[str],
    offset: int,
    limit: int | None,
) -> None:
    spec: dict[str, Any] = {"where": [where], "order_by": [direction + "v", *second]}
    spec["offset"], spec["limit"] = offset, limit
    check_query_case(storage, records, spec)


@pytest.mark.parametrize("kind", ["lexical", "decimal", "token", "qgram"])
def test_queries_match_the_oracle_over_indexed_columns(path: Path, kind: str) -> None:
    """The differential test again, with every field indexed: index-driven searches
    take other code paths inside Tokyo than table scans, and the planner adds conditions
    for them."""
    s = pymodels.get_storage({"backend": "tokyo_cabinet", "path": str(path)})
    try:
        for name in pst.FIELD_NAMES:
            s.create_index(name, kind=kind)

        @settings(max_examples=pst.examples(150), deadline=None)
        @given(case=pst.query_cases())
        def check(case: tuple[dict[str, dict[str, Any]], dict[str, Any]]) -> None:
            q, expected = check_query_case(s, *case)
            assert q.delete() == len(expected)

        check()
    finally:
        s.close()


def test_a_scratch_walk_without_a_temporary_directory_raises_and_leaves_nothing(
    open_storage: Callable[..., Storage], small_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage()
    storage.save_many({"n": i} for i in range(30))
    monkeypatch.setattr(tempfile, "tempdir", str(small_runs / "missing"))
    with pytest.raises(pymodels.PyModelsError, match=r"scratch table.*TMPDIR"):
        list(storage.query().where(n__gte=3))
    monkeypatch.setattr(tempfile, "tempdir", str(small_runs))
    assert len(list(storage.query().where(n__gte=3))) == 27
    assert list(small_runs.iterdir()) == []


@pytest.mark.parametrize("kind", [None, "lexical"])
def test_queries_through_the_scratch_walk_match_the_oracle(
    path: Path, monkeypatch: pytest.MonkeyPatch, kind: str | None
) -> None:
    """The differential test again with pages of 2 keys and chunks of 3 records: every
    unsliced pk-ordered query with more than a page of matches walks the records
    through the scratch table (see Storage._filtered_walk), sorted in spilled runs; a
    one-field lookup too from 3 matches on (below, one short page)."""
    from pymodels import spill
    from pymodels.ext._tokyo import _engine
    from pymodels.ext.tokyo_cabinet import _storage

    monkeypatch.setattr(spill, "RUN_SIZE", 2)
    monkeypatch.setattr(spill, "RUN_BLOCK", 2)
    monkeypatch.setattr(_storage, "_SCRATCH_RECORDS", 3)
    monkeypatch.setattr(_engine, "_PAGE_MAX", 2)
    monkeypatch.setattr(_engine, "BATCH_SIZE", 2)  # records checked and loaded 2 at a time
    s = pymodels.get_storage({"backend": "tokyo_cabinet", "path": str(path)})
    try:
        if kind is not None:
            for name in pst.FIELD_NAMES:
                s.create_index(name, kind=kind)

        @settings(deadline=None)  # examples: the profile's (soak: 20,000)
        @given(case=pst.query_cases())
        def check(case: tuple[dict[str, dict[str, Any]], dict[str, Any]]) -> None:
            check_query_case(s, *case)

        check()
    finally:
        s.close()


# ======================================================================= indexes


def test_index_kinds_and_meta_defaults(storage: Storage, path: Path) -> None:
    storage.ensure_indexes(Person)
    # Person.Meta.indexes = ["last_name", ("tags", "-birth_date")]: no compound indexes
    # in Tokyo, so the compound entry indexes its first field, with the kind for a list.
    assert storage.index_kinds() == {"last_name": "lexical", "tags": "token"}

    class Stats(Document):
        score: float | None = None
        when: dt.date | None = None
        note: str = ""

        class Meta:
            indexes = ["score", "-when", {"fields": "note", "kind": "qgram"}]

    storage.ensure_indexes(Stats)
    assert storage.index_kinds()["score"] == "decimal"
    assert storage.index_kinds()["when"] == "decimal"
    assert storage.index_kinds()["note"] == "qgram"
    storage.create_index("note")  # any existing index satisfies a plain request
    assert storage.index_kinds()["note"] == "qgram"
    storage.create_index("note", kind="lexical")  # an explicit kind replaces it
    assert storage.index_kinds()["note"] == "lexical"
    assert (path.parent / "storage.tct.idx.note.lex").exists()
    storage.create_index("deep__path")  # nested paths live inside a JSON column: no-op
    with pytest.raises(NotSupported):
        storage.create_index("email", unique=True)
    with pytest.raises(NotSupported):
        storage.create_index(("a", "b"))
    with pytest.raises(NotSupported):
        storage.create_index("a", kind="btree")
    assert features.index_kinds == {"lexical", "decimal", "token", "qgram"}


def test_index_is_not_built_inside_a_transaction(storage: Storage) -> None:
    with storage.transaction():
        with pytest.raises(NotSupported):
            storage.create_index("x")
        Person(first_name="A", tags=["t"]).save(storage)  # its indexes wait
    assert storage.index_kinds() == {}
    Person(first_name="B").save(storage)
    assert storage.index_kinds() == {"last_name": "lexical", "tags": "token"}


# ============================================================ settings and opening


def test_settings_and_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pymodels.get_storage("tokyo-cabinet:///data.tct?bnum=1000&compression=deflate") as s:
        assert isinstance(s, Storage) and s.settings.bnum == 1000
        s.save({"a": "1"}, primary_key="k")
    assert (tmp_path / "data.tct").exists()
    for kind in ("HASH", "BTREE"):
        with pytest.raises(ConfigurationError, match="only 'TABLE'"):
            pymodels.get_storage({"backend": "tokyo_cabinet", "path": "x.tct", "kind": kind})
    with pytest.raises(ConfigurationError, match="unknown setting 'nope'"):
        pymodels.get_storage({"backend": "tokyo_cabinet", "path": "x.tct", "nope": 1})
    with pytest.raises(ConfigurationError, match="missing setting 'path'"):
        pymodels.get_storage({"backend": "tokyo-cabinet"})


def test_read_only_skips_indexes_and_needs_the_file(
    open_storage: Callable[..., Storage], path: Path
) -> None:
    # Reads and refused writes are the conformance suite's.
    with pytest.raises(ConfigurationError, match="does not exist"):
        open_storage(read_only=True)
    open_storage().close()
    reader = open_storage(read_only=True)
    with pytest.warns(UserWarning, match="read-only"):
        reader.ensure_indexes(Person)


def test_not_a_table_database(path: Path) -> None:
    path.write_bytes(b"not a database at all" * 20)
    with pytest.raises(CorruptData, match="not a Tokyo Cabinet table database"):
        pymodels.get_storage({"backend": "tokyo_cabinet", "path": str(path)})


LOCK_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pymodels.ext.tokyo_cabinet._binding import OpenMode, TableDB
    db = TableDB().open(sys.argv[1], OpenMode.WRITER | OpenMode.CREAT)
    print("ready", flush=True)
    time.sleep(float(sys.argv[2]))
    db.close()
    """
)


def test_a_file_locked_by_another_process(open_storage: Callable[..., Storage], path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(path), "1.0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        started = time.monotonic()
        with pytest.raises(LockTimeout, match="locked by another process") as info:
            open_storage()
        assert time.monotonic() - started < 0.5  # at once, not after waiting
        assert "lock_timeout" in str(info.value)
        s = open_storage(lock_timeout=20)  # waits until the child closes the file
        assert time.monotonic() - started >= 0.5
        s.save({"a": "1"})
    finally:
        child.wait(20)


# =========================================================== transactions, threads


def test_transactions_are_isolated_from_other_threads(open_storage: Callable[..., Storage]) -> None:
    a, b = open_storage(), open_storage()  # two storages on one file share one handle
    seen: list[bool] = []
    started, release = threading.Event(), threading.Event()

    def inside() -> None:
        with pytest.raises(RuntimeError), a.transaction():
            a.save({"n": 1}, primary_key="tx")
            started.set()
            release.wait(5)
            raise RuntimeError("roll back")

    def other() -> None:
        started.wait(5)
        seen.append("tx" in b)  # waits for the transaction: never sees uncommitted data
        b.save({"n": 2}, primary_key="outside")

    t1 = threading.Thread(target=inside)
    t2 = threading.Thread(target=other)
    t1.start()
    t2.start()
    time.sleep(0.2)
    assert t2.is_alive()  # blocked behind the transaction
    release.set()
    t1.join(5)
    t2.join(5)
    assert seen == [False]
    assert "tx" not in a and "outside" in a  # the other thread's write was not rolled back


def test_threads_share_a_storage(storage: Storage) -> None:
    def work(t: int) -> None:
        for i in range(200):
            storage.save({"t": t, "i": i}, primary_key=f"{t}-{i}")
            assert storage.query().where(t=t, i=i).count() == 1
        with storage.transaction():
            storage.save_many({"t": t, "bulk": j} for j in range(50))

    run_in_threads(work, 4)
    assert len(storage) == 4 * 250


def test_generated_pks_never_replace_records(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.save({"who": "first"}, primary_key="TAKEN")
    fresh = iter(["TAKEN", "TAKEN", "NEW1", "TAKEN", "NEW2", "NEW3", "NEW4"])
    monkeypatch.setattr(Storage, "_new_pk", lambda self: next(fresh))
    assert storage.save({"who": "second"}) == "NEW1"
    # The bulk batch clashes on TAKEN and is redone one by one with fresh pks.
    assert storage.save_many([{"who": "bulk"}, {"who": "bulk2"}]) == ["NEW3", "NEW4"]
    assert "NEW2" not in storage
    assert dict(storage.get(None, "TAKEN")) == {"who": "first"}


# ======================================================================== memory


def test_live_pointers_return_to_zero_after_a_workload(path: Path) -> None:
    s = pymodels.get_storage({"backend": "tokyo_cabinet", "path": str(path)})
    s.create_index("n", kind="decimal")
    s.save_many({"n": i, "s": f"x{i}", "l": [i, "a b"]} for i in range(500))
    list(s.query().where(Q(n__lt=10) | Q(s__startswith="x4")).order_by("s")[3:9])
    s.query().where(s__startswith="x1").order_by("-s")[:5].values("n")
    s.query().where(l__contains="a b").count()
    s.query().where(n__gte=400).delete()
    s.query().where_not(s__icontains="X1").explain()
    with pytest.raises(RuntimeError), s.transaction():
        s.save({"n": -1})
        raise RuntimeError
    s.get_many(None, ["missing", *list(s)[:3]])
    assert live_pointers() == 1  # just the database handle
    s.close()
    gc.collect()
    assert live_pointers() == 0


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_resident_size_of_a_long_read_loop_stays_flat(path: Path) -> None:
    s = pymodels.get_storage({"backend": "tokyo_cabinet", "path": str(path)})
    try:
        s.create_index("s")
        s.create_index("n", kind="decimal")
        pks_ = s.save_many({"n": i, "s": f"x{i % 100}", "t": ["a", "b"]} for i in range(2000))

        def loop() -> None:
            for i in range(0, 2000, 20):
                s.get(None, pks_[i])
                list(s.query().where(s=f"x{i % 100}")[:5])
                s.query().where(n__gte=i).count()
                s.query().where(t__contains="a", n__lt=i % 50).values("n")

        for _ in range(3):  # warm-up: caches, interned strings, allocator arenas
            loop()
        gc.collect()
        before = _rss()
        for _ in range(10):
            loop()
        gc.collect()
        after = _rss()
        assert after <= before * 1.05, (before, after)
        assert live_pointers() == 1  # only the handle
    finally:
        s.close()


def test_any_records_stay_exact_after_reopen(open_storage: Callable[..., Storage]) -> None:
    s = open_storage()
    pk = s.save(EVERY_KIND)
    s.close()
    again = open_storage(read_only=True)
    assert identical(dict(again.get(None, pk)), stored_form(EVERY_KIND))


def test_storage_is_a_base_storage() -> None:
    assert issubclass(Storage, BaseStorage)
    assert features.transactions and not features.compound_indexes
    assert features.op("matches") == "python" and features.op("startswith") == "native"


def test_binding_getdump_is_get_without_the_dict(path: Path) -> None:
    from pymodels.ext._tokyo._format import _parse_map

    with TableDB().open(path) as db:
        db.put(b"k", {b"a": b"\x00\xff", b"long": b"x" * 300})
        dump = db.getdump(b"k")
        assert dump is not None and _parse_map(dump) == db.get(b"k")
        assert db.getdump(b"missing") is None
        with pytest.raises(ValueError, match="primary key"):
            db.getdump(b"")


NEAR_NUMBERS = st.sampled_from(
    [
        0,
        -0.0,
        0.3,
        0.30000000000000004,
        0.29999999999999993,
        7,
        7.0,
        2**53,
        2**53 + 1,
        float(2**53),
        2**63 - 1,
        2**63 - 2,
        -(2**63),
        float(-(2**63)),  # equal to the int: both must be found by either (issue 14)
        -(2**63) + 1,
        float(2**63),
        Decimal(-(2**63)),
        -1e20,
        1e16,
        10**16 + 1,
        -1.5,
        123456789.12345678,
        123456789.12345679,
        Decimal("0.3"),
        Decimal("0.30000000000000000000000000001"),
        Decimal("2.50"),
        Decimal("2.5"),
        Decimal("-0"),
        Decimal("1E+5"),
        Decimal("99999.99999999999999"),
        dt.datetime(2020, 1, 1, 0, 0, 0, 1),
        dt.datetime(2020, 1, 1, 0, 0, 0, 2),
        dt.datetime(2020, 1, 1, 0, 0, 0, 2, tzinfo=UTC),
        dt.date(2020, 1, 1),
        "7",
        True,
    ]
)


@settings(
    max_examples=pst.examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    records=st.dictionaries(
        st.text("abcd", min_size=1, max_size=2),
        st.dictionaries(st.just("n"), NEAR_NUMBERS, max_size=1),
        max_size=10,
    ),
    op=st.sampled_from(["gt", "gte", "lt", "lte", "equals", "between", "in"]),
    value=NEAR_NUMBERS,
    other=NEAR_NUMBERS,
    negate=st.booleans(),
    indexed=st.booleans(),
)
def test_numbers_at_tokyo_precision_match_the_oracle(
    storage: Storage,
    records: dict[str, dict[str, Any]],
    op: str,
    value: Any,
    other: Any,
    negate: bool,
    indexed: bool,
) -> None:
    """Values that Tokyo's 16-digit number parser confuses, under every comparison."""
    from pymodels.testing.oracle import kind as oracle_kind

    if op in ("gt", "gte", "lt", "lte", "between") and oracle_kind(value) in ("bool",):
        return
    if op == "between":
        if oracle_kind(value) != oracle_kind(other):
            return
        operand: Any = (value, other)
    elif op == "in":
        operand = [value, other]
    else:
        operand = value
    storage.clear()
    if indexed and "n" not in storage.index_kinds():
        storage.create_index("n", kind="decimal")
    for pk, record in records.items():
        storage.save(record, primary_key=pk)
    cond = ("lookup", f"n__{op}", operand)
    spec: dict[str, Any] = {"where_not" if negate else "where": [cond]}
    q = pst.to_query(storage.query(), spec)
    expected = oracle.run(records, spec)
    assert pks(q) == expected
    assert q.count() == len(expected)


def test_numbers_beyond_int64_keep_a_decimal_index_consistent(storage: Storage) -> None:
    # Tokyo's decimal index reads integer parts into an int64: past 2**63 it would place
    # keys anywhere and index walks would miss them, so such numbers are written as the
    # bound followed by the exact value.
    values: dict[str, Any] = {
        "a": 5,
        "b": 6,
        "c": 1e20,
        "d": -1e20,
        "e": 5e19,
        "g": 9.3e18,
        "h": Decimal("12345678901234567890123.5"),
        "i": 2**63 - 1,
    }
    for pk, v in values.items():
        storage.save({"n": v}, primary_key=pk)
    storage.create_index("n", kind="decimal")
    assert identical(storage.get(None, "h")["n"], Decimal("12345678901234567890123.5"))
    assert pks(storage.query().where(n__gt=5)) == ["b", "c", "e", "g", "i"]
    assert pks(storage.query().where(n__between=(1, 2e20))) == ["a", "b", "c", "e", "g", "i"]
    assert pks(storage.query().where(n__lt=-1e19)) == ["d"]
    assert pks(storage.query().where(n=1e20)) == ["c"]
    assert pks(storage.query().where(n__in=[1e20, 6])) == ["b", "c"]
    assert pks(storage.query().where(n__gte=Decimal("1"))) == ["h"]


def test_numbers_compare_by_value_at_the_int64_bounds(open_storage: Callable[..., Storage]) -> None:
    """-2**63 and float(-2**63) are equal: every query finds both, with or without an index,
    as the memory reference does (issue 14)."""
    values = {
        "a": -(2**63),
        "b": float(-(2**63)),
        "c": -(2**63) + 1,
        "d": -1e20,
        "e": 2**63 - 1,
        "f": float(2**63),
        "g": Decimal(-(2**63)),
    }
    memory = pymodels.get_storage({"backend": "memory"})
    tokyo = open_storage()
    for pk, v in values.items():
        memory.save({"v": v}, primary_key=pk)
        tokyo.save({"v": v}, primary_key=pk)
    lookups: list[dict[str, Any]] = [
        {"v": -(2**63)},
        {"v": float(-(2**63))},
        {"v__in": [float(-(2**63)), 2**63 - 1]},
        {"v__lt": -(2**63) + 1},
        {"v__lte": float(-(2**63))},
        {"v__gte": -(2**63)},
        {"v__gt": float(-(2**63))},
        {"v__between": (-1e20, float(-(2**63)))},
        {"v": 2**63 - 1},
        {"v__gt": 2**63 - 1},
    ]
    for indexed in (False, True):
        if indexed:
            tokyo.create_index("v", kind="decimal")
        for lookup in lookups:
            expected = sorted(pks(memory.query().where(**lookup)))
            assert sorted(pks(tokyo.query().where(**lookup))) == expected, (lookup, indexed)
            assert tokyo.query().where(**lookup).count() == len(expected), (lookup, indexed)
    assert identical(tokyo.get(None, "b")["v"], float(-(2**63)))
    assert raw_columns_of(tokyo, "b")[b"v"] == b"-9223372036854775808.0"


def raw_columns_of(storage: Storage, pk: str) -> dict[bytes, bytes]:
    columns = storage._db.get(pk.encode())
    assert columns is not None
    return columns


# Characters str.split() splits at that Tokyo does not (issue 14), and Tokyo's own
# separators (bytes up to 0x20, commas), which type tokens escape.
_SPACES = (
    "\u00a0\u1680\u2000\u2007\u200a\u2028\u2029\u202f\u205f\u3000"
    "\x1c\x1d\x1e\x1f\x85\x0b\x0c \t\n\r,:%"
)


@settings(
    max_examples=pst.examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    names=st.lists(
        st.text(
            st.sampled_from(_SPACES + "ab1é名") | st.characters(exclude_categories=["Cs"]),
            min_size=1,
            max_size=8,
        ).filter(oracle.valid_field_name),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    value=st.sampled_from([5, 1.5, True, Decimal("2.50"), b"x", "", dt.date(2020, 1, 2), [1]]),
)
def test_field_names_round_trip_exactly_with_their_types(
    storage: Storage, names: list[str], value: Any
) -> None:
    """Every field name the value domain allows keeps its name and its value's type."""
    record = {name: value for name in names}
    pk = storage.save(record)
    loaded = storage._load(pk)
    assert loaded is not None
    assert set(loaded) == set(names)
    for name in names:
        assert identical(loaded[name], value), name
        assert pks(storage.query().where(**{name: value})) == [pk], name
    storage.delete(pk)


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for i in range(depth - 1):
        value = {"k": value} if i % 2 else [value]
    return value


@pytest.mark.parametrize("depth", [1, 2, 50, 100])
def test_records_nested_to_the_value_domains_limit_save_and_load(
    storage: Storage, depth: int
) -> None:
    """The shared nesting limit is 100 levels: Tokyo encodes and decodes without recursion,
    so neither Python's recursion limit nor the caller's stack depth matters (issue 14)."""
    value = _nested(depth, Decimal("2.50"))
    pk = storage.save({"deep": value, "n": 1})
    assert identical(storage.get(None, pk)["deep"], value)
    assert pks(storage.query().where(deep=value)) == [pk]

    # Saved and loaded from a stack already deep: no RecursionError either way.
    def at_depth(n: int) -> Any:
        return storage.get(None, pk)["deep"] if n == 0 else at_depth(n - 1)

    limit = sys.getrecursionlimit()
    assert identical(at_depth(limit - 200), value)


def test_json_columns_are_written_and_read_without_recursion() -> None:
    from pymodels.ext._tokyo._columns import _decode_dict, json_text

    deep = _nested(5000, 1)
    deep = {"k": deep}
    text = json_text(deep)
    assert text.count("[") + text.count("{") == 5000
    # Deeper than json's own parser goes: another client wrote it; it loads as text.
    from pymodels.ext._tokyo._columns import decode_record

    record = decode_record({b"_types": b"d:m", b"d": text.encode()})
    assert record["d"] == text
    assert _decode_dict(json_text(_nested(99, {"a": [1, "b c"]})).encode()) is not None


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("nodir/x.tct", "directory nodir does not exist"),
        ("adir", "adir is a directory"),
        ("afile/x.tct", "afile is not a directory"),
    ],
)
def test_file_errors_name_the_path_and_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, cause: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    with pytest.raises(pymodels.PyModelsError, match=f"cannot open {name}: {cause}"):
        pymodels.get_storage(f"tokyo-cabinet:///{name}")


def test_repr_shows_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pymodels.get_storage("tokyo-cabinet:///storage.tct") as s:
        assert repr(s) == "<pymodels.ext.tokyo_cabinet.Storage at 'storage.tct'>"
        Person(first_name="A").save(s)
        # has_index reads Tokyo's own index files, which Person's Meta.indexes made.
        assert s.has_index("last_name", kind="lexical") and s.has_index("tags", kind="token")
        assert not s.has_index("last_name", kind="decimal")
        index_files = tmp_path.glob("storage.tct.idx.*")
        assert sorted(p.name for p in index_files if p.suffix != ".wal") == [
            "storage.tct.idx.last_name.lex",
            "storage.tct.idx.tags.tok",
        ]


_AGES = st.one_of(
    st.integers(-5, 5),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([2.5, -0.5, 1e16, Decimal("3"), "4", "", True, dt.date(2000, 1, 1), [1]]),
)


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", ""]),
            # Mostly small ints, so that the facts often hold; sometimes anything.
            st.one_of(st.integers(-3, 3), st.integers(-3, 3), st.none(), _AGES),
        ),
        max_size=25,
    ),
    later=st.lists(st.tuples(st.sampled_from(["a", "b"]), _AGES), max_size=3),
    bound=st.integers(-4, 4),
    desc=st.booleans(),
    start=st.integers(0, 4),
    size=st.integers(0, 6),
)
def test_fact_driven_plans_agree_with_the_reference(
    storage: Storage,
    rows: list[tuple[str, Any]],
    later: list[tuple[str, Any]],
    bound: int,
    desc: bool,
    start: int,
    size: int,
) -> None:
    """Ordering and counting that rely on facts about a column (proved by a scan, then
    kept by writes) answer as the memory backend does, facts holding or not."""
    storage.clear()
    storage._file.facts.clear()  # proved afresh from this example's records
    reference = pymodels.get_storage({"backend": "memory"})

    def save(i: int, city: str, age: Any) -> None:
        record = {"city": city} if age is None else {"city": city, "age": age}
        for s in (storage, reference):
            s.save(record, primary_key=f"k{i:03}")

    def queries(s: BaseStorage) -> list[Any]:
        q = s.query()
        order = "-age" if desc else "age"
        lookups: list[dict[str, Any]] = [
            {"age__gt": bound},
            {"age__gte": bound},
            {"age__lt": bound},
            {"age__lte": bound},
            {"age__between": (bound, bound + 2)},
        ]
        return [
            [d.pk for d in q.where(city="a").order_by(order)[start : start + size]],
            [d.pk for d in q.order_by(order)[start : start + size]],
            [d.pk for d in q.where(city="a").order_by(order)],
            *[q.where(**lk).count() for lk in lookups],
            *[[d.pk for d in q.where(**lk)[:3]] for lk in lookups],
        ]

    for i, (city, age) in enumerate(rows):
        save(i, city, age)
    assert queries(storage) == queries(reference)
    # Writes after the facts were proved: each one they break is taken back.
    for j, (city, age) in enumerate(later):
        save(100 + j, city, age)
    assert queries(storage) == queries(reference)
    reference.close()


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)
@given(
    # Long runs of few values; now and then a record lacking the field (which keeps
    # the ascending order out of Tokyo: it puts such records last).
    ages=st.lists(
        st.integers(0, 3) | st.integers(0, 3) | st.integers(0, 3) | st.none(),
        min_size=20,
        max_size=60,
    ),
    ahead=st.integers(0, 8),
    desc=st.booleans(),
    pk_desc=st.booleans(),
    slices=st.lists(st.tuples(st.integers(0, 20), st.integers(1, 8)), min_size=1, max_size=4),
)
def test_ordered_slices_over_long_tie_runs_agree_with_the_reference(
    storage: Storage,
    ages: list[int | None],
    ahead: int,
    desc: bool,
    pk_desc: bool,
    slices: list[tuple[int, int]],
) -> None:
    """Slices cut inside runs of ties longer than the look-ahead (so the ties come from a
    second search, and the look-ahead grows and shrinks between slices) answer as the
    memory backend does; so do records lacking the order field."""
    storage.clear()
    storage._file.facts.clear()
    storage.create_index("age", kind="decimal")
    reference = pymodels.get_storage({"backend": "memory"})
    for i, age in enumerate(ages):
        record: dict[str, Any] = {"city": "a" if i % 5 else "b"}
        if age is not None:
            record["age"] = age
        for s in (storage, reference):
            s.save(record, primary_key=f"k{(i * 37) % 101:03}")
    order = ("-age" if desc else "age", "-pk" if pk_desc else "pk")
    storage._aheads = {b"age": ahead}
    for start, size in slices:
        for where in ({"city": "a"}, {}):
            got = [
                d.pk for d in storage.query().where(**where).order_by(*order)[start : start + size]
            ]
            expected = reference.query().where(**where).order_by(*order)[start : start + size]
            assert got == [d.pk for d in expected], (where, start, size)
    reference.close()


# ---------------------------------------------------------------- streaming in pk order


@pytest.fixture
def small_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pages and runs of 7 pks in blocks of 3 (a few dozen records spill), scratch chunks
    of 5 records, in a watched dir."""
    from pymodels import spill
    from pymodels.ext._tokyo import _engine
    from pymodels.ext.tokyo_cabinet import _storage

    monkeypatch.setattr(spill, "RUN_SIZE", 7)
    monkeypatch.setattr(spill, "RUN_BLOCK", 3)
    monkeypatch.setattr(_storage, "_SCRATCH_RECORDS", 5)  # several chunks per walk
    # A one-field lookup of more than 2 matches streams too (not one short page).
    monkeypatch.setattr(_engine, "_PAGE_MAX", 2)
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


@pytest.mark.parametrize("seed", range(5))
def test_pk_order_paged_and_spilled_answers_as_the_memory_backend(
    open_storage: Callable[..., Storage], small_runs: Path, seed: int
) -> None:
    rng = random.Random(seed)
    alphabet = "abAB09_-é€\U0001f600 z,"
    records: dict[str, dict[str, object]] = {}
    while len(records) < 5 + seed * 23:  # 5 (one page, no spill) up to 97 (fourteen runs)
        pk = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
        records[pk] = {"age": rng.randint(0, 9), "name": rng.choice(["x", "y", "z"])}
    storage = open_storage()
    if seed % 2:
        storage.create_index("age")  # pages walked through an index
    reference = pymodels.get_storage({"backend": "memory"})
    for pk, record in records.items():
        storage.save(record, primary_key=pk)
        reference.save(record, primary_key=pk)
    pks = sorted(records)
    mid = pks[len(pks) // 2]
    queries: list[Callable[[BaseStorage], Any]] = [
        lambda st: st.query(),
        lambda st: st.query()[2:6],  # a short slice: Tokyo sorts it
        lambda st: st.query().order_by("-pk")[3:],
        lambda st: st.query().where(age__gt=4),
        lambda st: st.query().where(age__gt=4)[5:],
        lambda st: st.query().order_by("-pk"),
        lambda st: st.query().where(name="y").order_by("-pk")[2:9],
        lambda st: st.query().where(Q(name="x") | Q(age__lt=3)),  # a metasearch
        lambda st: st.query()[6:],
        lambda st: st.query()[:100],
        lambda st: st.query().order_by("pk").after(mid),
        lambda st: st.query().order_by("age", "-pk"),  # not by pk: Tokyo's order
    ]
    for make in queries:
        got = [(d.pk, d["age"]) for d in make(storage)]
        assert got == [(d.pk, d["age"]) for d in make(reference)]
    assert [d.pk for d in storage.query()] == pks
    reference.close()
    assert list(small_runs.iterdir()) == []


@pytest.mark.parametrize("seed", range(4))
def test_a_long_column_order_is_sorted_in_spilled_runs_as_the_memory_backend(
    open_storage: Callable[..., Storage],
    small_runs: Path,
    monkeypatch: pytest.MonkeyPatch,
    seed: int,
) -> None:
    # Orders Tokyo runs itself (ints and strs, proved by the storage's facts), unsliced
    # and past more than a run of matches: walked, sorted in spilled runs and loaded
    # again (never Tokyo's ordered search, which lists every match first); a result of
    # fewer than a run is sorted in memory. Both answer as the memory backend.
    from pymodels.backend import pks_in_order
    from pymodels.ext.tokyo_cabinet import _storage

    rng = random.Random(seed)
    records = {
        f"k{i:03}": {"age": rng.randint(0, 9), "name": rng.choice(["x", "y", "Z", "é"])}
        for i in range(rng.randint(20, 60))
    }
    storage = open_storage()
    if seed % 2:
        storage.create_index("age", kind="decimal")
    reference = pymodels.get_storage({"backend": "memory"})
    for pk, record in records.items():
        storage.save(record, primary_key=pk)
        reference.save(record, primary_key=pk)
    sorted_long: list[int] = []

    def counting(*args: Any) -> Any:
        sorted_long.append(1)
        return pks_in_order(*args)

    monkeypatch.setattr(_storage, "pks_in_order", counting)
    queries: list[tuple[Callable[[BaseStorage], Any], bool]] = [
        (lambda st: st.query().order_by("-age"), True),
        (lambda st: st.query().order_by("age")[3:], True),
        (lambda st: st.query().order_by("name"), True),
        (lambda st: st.query().where(age__gt=4).order_by("-name"), True),
        (lambda st: st.query().where(age=3).order_by("name"), False),  # a few: in memory
    ]
    for make, long in queries:
        assert "(engine)" in make(storage).explain()
        sorted_long.clear()
        got = [(d.pk, d["age"], d["name"]) for d in make(storage)]
        assert got == [(d.pk, d["age"], d["name"]) for d in make(reference)]
        assert long == (len(got) >= 7)  # the premise: more than a run (7) or fewer
        assert bool(sorted_long) == long, make(storage).explain()
    reference.close()
    assert list(small_runs.iterdir()) == []


def test_spilled_runs_are_removed_when_iteration_ends_or_stops(
    open_storage: Callable[..., Storage], small_runs: Path
) -> None:
    storage = open_storage()
    storage.save_many({"n": i} for i in range(40))
    it = iter(storage.query())
    first = next(it)
    assert list(small_runs.iterdir()) != []  # spilled while the iterator lives
    assert len(list(it)) == 39 and first.pk == min(storage.query().values("pk"))
    assert list(small_runs.iterdir()) == []
    abandoned = iter(storage.query().where(n__gte=0))
    next(abandoned)
    assert list(small_runs.iterdir()) != []
    del abandoned  # a dropped iterator is closed: its generator's finally runs
    gc.collect()
    assert list(small_runs.iterdir()) == []
    storage.save({"n": 99}, primary_key="zz")  # the file's lock was released
    assert storage.query().where(n=99).first().pk == "zz"  # type: ignore[union-attr]


@pytest.mark.parametrize("indexed", [False, True])
def test_where_stream_walks_chunks_and_yields_every_match_once_in_pk_order(
    open_storage: Callable[..., Storage],
    small_runs: Path,
    monkeypatch: pytest.MonkeyPatch,
    indexed: bool,
) -> None:
    # A full first page (7 keys) sends the stream to the walk: records copied 5 at a
    # time into a scratch table where Tokyo tests the conditions. Pks with spaces and
    # commas (which would split a token list), records per kind and per chunk boundary.
    from pymodels.ext._tokyo import _engine
    from pymodels.ext.tokyo_cabinet import _storage

    monkeypatch.setattr(_storage, "_SCRATCH_RECORDS", 5)
    monkeypatch.setattr(_engine, "BATCH_SIZE", 3)  # records loaded 3 at a time
    monkeypatch.setattr(_engine, "_PAGE_MAX", 2)  # lookups of more than 2 matches stream
    walks: list[int] = []
    walk = Storage._filtered_walk

    def counted(self: Storage, blocks: Any) -> Any:
        walks.append(len(blocks))
        return walk(self, blocks)

    monkeypatch.setattr(Storage, "_filtered_walk", counted)
    storage = open_storage()
    if indexed:
        storage.create_index("age", kind="decimal")
    records: dict[str, dict[str, Any]] = {}
    for i in range(40):  # 8 chunks exactly: the last copy finds the iterator's end
        pk = f"k {i:02}" if i % 3 == 0 else f"k,{i:02}" if i % 3 == 1 else f"k{i:02}é"
        name: Any = ("x" if i % 2 else "y") if i % 7 else 0  # some names are ints: gates
        records[pk] = {"age": i % 10, "name": name}
    for pk, r in records.items():
        storage.save(r, primary_key=pk)

    def expected(test: Callable[[dict[str, Any]], bool]) -> list[str]:
        return sorted(pk for pk, r in records.items() if test(r))

    cases: list[tuple[Any, Callable[[dict[str, Any]], bool]]] = [
        (Q(age__gt=2), lambda r: r["age"] > 2),
        (Q(name="x") | Q(age__lt=2), lambda r: r["name"] == "x" or r["age"] < 2),  # metasearch
        (Q(age__in=[8, 9]), lambda r: r["age"] in (8, 9)),  # 8 matches
        (Q(name__startswith="x"), lambda r: r["name"] == "x"),
    ]
    for condition, test in cases:
        walks.clear()
        got = [d.pk for d in storage.query().where(condition)]
        assert got == expected(test)
        assert walks, condition
        got_desc = [d.pk for d in storage.query().where(condition).order_by("-pk")]
        assert got_desc == expected(test)[::-1]
    walks.clear()
    assert [d.pk for d in storage.query().where(age=9)] == expected(
        lambda r: r["age"] == 9
    )  # 3 matches: the first page is the answer, nothing walked
    assert walks == []
    assert list(small_runs.iterdir()) == []  # the scratch tables are gone

    # Written meanwhile by this process: the keys are walked (under the file's lock)
    # before the first record comes; records are read as the merge reaches them, so a
    # record deleted meanwhile is skipped, a changed one comes as it is now, and one
    # added meanwhile is not in this stream.
    matches = expected(lambda r: r["age"] > 2)
    it = iter(storage.query().where(age__gt=2))
    first = next(it)
    assert first.pk == matches[0]
    storage.delete(matches[-1])
    storage.save({"age": 100, "name": "changed"}, primary_key=matches[-2])
    storage.save({"age": 5, "name": "new"}, primary_key="k 99 new")
    rest = [(d.pk, d["name"]) for d in it]
    assert [pk for pk, _ in rest] == matches[1:-1]
    assert rest[-1] == (matches[-2], "changed")
    assert list(small_runs.iterdir()) == []

    # In a transaction the walk sees its writes, as Tokyo's own search does.
    with storage.transaction():
        storage.save({"age": 9, "name": "tx"}, primary_key="k tx")
        in_tx = [str(d.pk) for d in storage.query().where(age__gt=2)]
    assert "k tx" in in_tx and in_tx == sorted(in_tx)
    assert in_tx == [d.pk for d in storage.query().where(age__gt=2)]

"""The ``pymodels`` console script, run as a user runs it: a subprocess per command.

Every test runs on each backend CI has whose data outlives a process (the
in-memory backend is not reachable from a second process): SQLite, shelve and
Tokyo Cabinet files, tables of a throwaway PostgreSQL server and collections
of a throwaway MongoDB server. Where a test
needs a capability (indexes), it asks the backend's ``features``.
"""

from __future__ import annotations

import datetime
import decimal
import itertools
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pymodels
from pymodels import codec
from pymodels.errors import BackendUnavailable
from pymodels.testing.mongodb import mongodb_skip_reason, mongodb_url_for_tests
from pymodels.testing.postgresql import postgres_skip_reason, postgres_url_for_tests

EXE = Path(sys.executable).with_name("pymodels")
REQUIRED = bool(os.environ.get("PYMODELS_REQUIRE_ENGINES"))
_tables = itertools.count()

#: One record holding every kind of the value domain (docs/guide.md, "Values").
EVERY_KIND = {
    "text": 'Ünïcode ✓ "quoted" $ % _',
    "big": 2**63 - 1,
    "negative": -(2**63),
    "float": 1.0,
    "tiny": 5e-324,
    "flag": False,
    "price": decimal.Decimal("2.50"),
    "exp": decimal.Decimal("1E+3"),
    "raw": b"\x00\xff bytes",
    "day": datetime.date(2024, 2, 29),
    "naive": datetime.datetime(2024, 5, 1, 12, 30, 0, 1),
    "aware": datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.UTC),
    "list": [1, "two", [3.0], {"four": decimal.Decimal("4")}],
    "nested": {"a": {"b": {"c": datetime.date(2000, 1, 1)}}},
}


def _tokyo_reason() -> str | None:
    try:
        import pymodels.ext.tokyo_cabinet  # noqa: F401
    except BackendUnavailable as e:
        return str(e)
    return None


def _unavailable(reason: str | None) -> str | None:
    if reason is not None and REQUIRED:
        raise RuntimeError(f"an engine is required (PYMODELS_REQUIRE_ENGINES is set): {reason}")
    return reason


def _mongodb_reason() -> str | None:
    try:
        import pymongo  # noqa: F401 - the backend's driver
    except ImportError as e:
        return f"pymongo is not installed ({e})"
    return mongodb_skip_reason()


_PG_REASON = _unavailable(postgres_skip_reason())
_MONGO_REASON = _unavailable(_mongodb_reason())
_TC_REASON = _unavailable(_tokyo_reason())


@pytest.fixture(scope="module")
def postgresql_url() -> Iterator[str]:
    if _PG_REASON is not None:
        pytest.skip(_PG_REASON)
    with postgres_url_for_tests() as url:
        yield url


@pytest.fixture(scope="module")
def mongodb_url() -> Iterator[str]:
    if _MONGO_REASON is not None:
        pytest.skip(_MONGO_REASON)
    with mongodb_url_for_tests() as url:
        yield url


URLMaker = Callable[[str], str]


@pytest.fixture(
    params=[
        "sqlite",
        "shelve",
        pytest.param(
            "tokyo_cabinet",
            marks=pytest.mark.skipif(_TC_REASON is not None, reason=str(_TC_REASON)),
        ),
        "postgresql",
        "mongodb",
    ]
)
def make_url(request: pytest.FixtureRequest, tmp_path: Path) -> URLMaker:
    """A function giving a fresh storage URL of one backend for a name."""
    return _maker(request.param, request, tmp_path)


def _maker(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> URLMaker:
    run_id = f"{os.getpid()}_{next(_tables)}"
    if backend == "postgresql":
        server = request.getfixturevalue("postgresql_url")
        return lambda name: f"{server}?table=cli_{name}_{run_id}"
    if backend == "mongodb":
        server = request.getfixturevalue("mongodb_url")
        sep = "&" if "?" in server else "?"
        return lambda name: f"{server}{sep}collection=cli_{name}_{run_id}"
    scheme, suffix = {
        "sqlite": ("sqlite", "db"),
        "shelve": ("shelve", "shelf"),
        "tokyo_cabinet": ("tokyo-cabinet", "tct"),
    }[backend]
    # Three slashes then an absolute path: scheme:////tmp/... (SQLAlchemy's rule).
    return lambda name: f"{scheme}:///{tmp_path}/{name}.{suffix}"


@pytest.fixture
def url(make_url: URLMaker) -> str:
    return make_url("store")


def pymodels_cli(
    *args: str, stdin: str | None = None, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the console script; never a shell."""
    assert EXE.exists(), f"{EXE}: the console script is not installed (pip install -e .)"
    return subprocess.run(
        [str(EXE), *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def ok(*args: str, stdin: str | None = None) -> str:
    proc = pymodels_cli(*args, stdin=stdin)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def seed(url: str) -> None:
    ok("put", url, "--pk", "ann", '{"name": "Ann", "year": 1990, "born": {"$date": "1990-05-01"}}')
    ok("put", url, '{"name": "Bob", "year": 1985, "country": "FI"}', "--pk", "bob")
    ok("put", url, '{"name": "Cid", "year": 2001, "country": "SE"}', "--pk=cid")


# ---------------------------------------------------------------- basic commands


def test_put_get_find_delete_as_a_user_types_them(url: str) -> None:
    seed(url)
    assert lines(ok("get", url, "ann")) == [
        {"$pk": "ann", "name": "Ann", "year": 1990, "born": {"$date": "1990-05-01"}}
    ]
    # Options before or after positionals; a value starting with '-'.
    newest = lines(ok("find", "--order-by", "-year", url, "--limit", "2"))
    assert [r["$pk"] for r in newest] == ["cid", "ann"]
    assert [r["$pk"] for r in lines(ok("find", url, "--where", "year__gte=1990"))] == ["ann", "cid"]
    # A generated pk is printed whole and works with get.
    pk = ok("put", url, '{"name": "Dee"}').strip()
    assert pk and lines(ok("get", url, pk))[0]["name"] == "Dee"
    assert ok("delete", url, "bob", pk) == ""
    missing = pymodels_cli("get", url, "bob")
    assert missing.returncode == 1
    assert missing.stderr == f"pymodels: {url}: no record with pk 'bob'\n"
    assert pymodels_cli("delete", url, "bob").returncode == 1


def test_where_values_become_the_kinds_they_spell(tmp_path: Path) -> None:
    # Parsing is the command line's own: one backend shows it (the conformance
    # suite proves every backend answers a query alike).
    url = f"sqlite:///{tmp_path}/where.db"
    seed(url)
    added = ok("put", url, '{"added": {"$datetime": "2024-03-01T10:00:00.000000"}}').strip()

    def pks(*conditions: str) -> list[object]:
        args = [a for c in conditions for a in ("--where", c)]
        return [r.get("$pk") for r in lines(ok("find", url, *args))]

    assert pks("born__gte=1990-01-01") == ["ann"]  # a date, not the text "1990-01-01"
    assert pks("born='1990-05-01'", "year=1990") == []  # quoted: the text
    assert pks("added__lt=2024-03-01T10:00:01", "added__gt=2024-03-01T09:59") == [added]
    assert pks('country__in=["FI", "SE"]', "year__lt=2000") == ["bob"]
    not_fi = [r["$pk"] for r in lines(ok("find", url, "--where-not", "country=FI"))]
    assert not_fi == sorted([added, "ann", "cid"])


def test_unknown_and_foreign_ops_say_what_pymodels_calls_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ops.db"
    seed(url)
    typo = pymodels_cli("find", url, "--where", "year__gtee=1")
    assert typo.returncode == 2
    assert "'gtee' is not an op; did you mean 'gte'?" in typo.stderr
    assert typo.stderr.startswith(f"pymodels: {url}: ")
    for where, advice in [
        ('country__ne="FI"', '--where-not country="FI"'),
        ("country__nin=[1]", "--where-not country__in=[1]"),
        ("name__iexact=ann", "name__iequals=ann"),
        ("born__isnull=true", "born__exists=false"),
        ("name__regex=^A", "name__matches=^A"),
    ]:
        proc = pymodels_cli("find", url, "--where", where)
        assert proc.returncode == 2, where
        assert advice in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_find_prints_json_lines_to_a_pipe_and_tables_on_request(tmp_path: Path) -> None:
    url = f"shelve:///{tmp_path}/find.shelf"
    seed(url)
    pk = ok("put", url, '{"name": "Eve", "price": {"$decimal": "12.50"}}').strip()
    assert lines(ok("find", url, "--where", "name=Eve"))[0] == {
        "$pk": pk,
        "name": "Eve",
        "price": {"$decimal": "12.50"},
    }
    table = ok("find", url, "--format", "table")
    assert pk in table  # whole, never cut
    assert '{"$decimal": "12.50"}' in table and "Decimal(" not in table
    array = json.loads(ok("find", url, "--format", "json"))
    assert [r["$pk"] for r in array][:3] == sorted(r["$pk"] for r in array)[:3]


def test_find_on_a_terminal_is_a_table_with_whole_pks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    note = "x" * 120
    pk = ok("put", url, '{"name": "Ann", "day": {"$date": "2024-05-01"}, "note": "' + note + '"}')
    out = _on_terminal([str(EXE), "find", url], columns=80)
    assert pk.strip() in out  # whole, although the table is wider than the terminal
    assert "$date" in out and '"Ann"' in out  # values as tagged JSON text
    assert not out.lstrip().startswith("{")  # not JSON Lines


def _on_terminal(argv: list[str], columns: int, stderr_only: bool = False) -> str:
    """Run ``argv`` with standard output (or error) on a pseudo-terminal; return what it showed."""
    main, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "40", "TERM": "xterm"}
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if stderr_only else secondary,
        stderr=secondary,
        env=env,
    )
    os.close(secondary)
    chunks = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # the other end closed (Linux reports EIO)
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(main)
    assert proc.wait(timeout=30) == 0
    return b"".join(chunks).decode("utf-8", "replace")


# ---------------------------------------------------------------- read-only


def test_reading_commands_never_create_a_storage(make_url: URLMaker, tmp_path: Path) -> None:
    missing = make_url("bokks")
    for args in (["info", missing], ["find", missing], ["get", missing, "x"], ["export", missing]):
        proc = pymodels_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith(f"pymodels: {missing}: "), proc.stderr
        assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # no file left behind
    # The source of a copy is read-only too; the destination is not created either.
    proc = pymodels_cli("copy", missing, make_url("dest"))
    assert proc.returncode == 2 and not any(tmp_path.iterdir())


def test_no_url_means_the_embedded_default_and_is_never_created(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(EXE), "get", "PK"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("pymodels: sqlite:///pymodels.db: pymodels.db does not exist")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- export and import


def _put_every_kind(url: str) -> None:
    with pymodels.get_storage(url) as storage:
        storage.save(EVERY_KIND, primary_key="every")
        storage.save({"n": 1}, primary_key="plain")


def test_export_then_import_elsewhere_round_trips_every_value(
    make_url: URLMaker, tmp_path: Path
) -> None:
    source = make_url("source")
    _put_every_kind(source)
    for fmt, name in (("jsonl", "dump.jsonl"), ("json", "dump.json")):
        path = tmp_path / name
        proc = pymodels_cli("export", source, str(path))
        assert proc.returncode == 0 and proc.stdout == ""
        assert proc.stderr == f"exported 2 records from {source} to {path}\n"
        other = f"sqlite:///{tmp_path}/from_{fmt}.db"
        proc = pymodels_cli("import", other, str(path))
        assert proc.stderr.endswith(f"imported 2 records into {other}; 0 refused\n"), proc.stderr
        with pymodels.get_storage(other) as storage:
            assert dict(storage.get(None, "every")) == EVERY_KIND
    # Standard output and input work the same, and exports are byte-identical.
    dump = ok("export", source)
    assert lines(dump)[0] == {"$pk": "every", **codec.encode(EVERY_KIND)}
    third = make_url("third")
    ok("import", third, stdin=dump)
    assert ok("export", third) == dump


CSV_WITH_A_BAD_LINE = (
    "$pk,name,born,score,address__city\n"
    "a,Ann,1990-05-01,1.5,Oulu\n"
    "b,Bob,1985-13-01,2,Turku\n"
    'c,"Cid, Jr.","""2001-01-01""",,\n'
)

ARRAY_WITH_A_BAD_ELEMENT = """\
[
  {"$pk": "a", "name": "Ann"},
  {"$pk": "b", "$bad": 1},
  {"$pk": "c", "name": "Cid", "day": {"$date": "2001-01-01"}}
]
"""

JSONL_WITH_A_BAD_LINE = """\
{"$pk": "a", "name": "Ann"}
{"$pk": "b", "name": "Bob",}
{"$pk": "c", "name": "Cid", "day": {"$date": "2001-01-01"}}
"""


@pytest.mark.parametrize(
    ("filename", "content", "complaint"),
    [
        ("people.csv", CSV_WITH_A_BAD_LINE, "people.csv:3: born: 1985-13-01: month must be"),
        ("people.json", ARRAY_WITH_A_BAD_ELEMENT, "people.json:3: "),
        ("people.jsonl", JSONL_WITH_A_BAD_LINE, "people.jsonl:2: invalid JSON"),
    ],
)
def test_import_with_a_bad_record_in_the_middle(
    make_url: URLMaker, tmp_path: Path, filename: str, content: str, complaint: str
) -> None:
    url = make_url("people")
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    os.chdir(tmp_path)  # the report names the file as given
    try:
        strict = pymodels_cli("import", url, filename)
        assert strict.returncode == 3
        assert strict.stderr.splitlines()[0].startswith(complaint), strict.stderr
        closing = strict.stderr.splitlines()[-1]
        assert closing.startswith(f"imported 0 records into {url}; 1 refused")
        # Nothing was written (for a new storage: not even created).
        assert pymodels_cli("find", url).stdout == ""
        lenient = pymodels_cli("import", url, filename, "--continue-on-error")
        assert lenient.returncode == 3
        assert lenient.stderr.splitlines()[0].startswith(complaint)
        assert lenient.stderr.splitlines()[-1] == f"imported 2 records into {url}; 1 refused"
    finally:
        os.chdir(Path(__file__).parent)
    found = {r["$pk"]: r for r in lines(ok("find", url))}
    assert set(found) == {"a", "c"}
    if filename.endswith(".csv"):
        assert found["a"] == {
            "$pk": "a",
            "name": "Ann",
            "born": {"$date": "1990-05-01"},
            "score": 1.5,
            "address": {"city": "Oulu"},
        }
        assert found["c"] == {"$pk": "c", "name": "Cid, Jr.", "born": "2001-01-01"}
    else:
        assert found["c"]["day"] == {"$date": "2001-01-01"}


def test_import_reports_every_bad_record_and_reads_several_files(
    make_url: URLMaker, tmp_path: Path
) -> None:
    url = make_url("many")
    good = tmp_path / "good.jsonl"
    good.write_text('{"$pk": "g", "n": 1}\n\n{"n": 2}\n', encoding="utf-8")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('[1]\n{"$pk": ""}\n{"n": 18446744073709551616}\n{"$pk": "ok"}\n')
    proc = pymodels_cli("import", url, str(good), str(bad))
    assert proc.returncode == 3
    report = proc.stderr.splitlines()
    assert [line.split(": ")[0] for line in report[:3]] == [f"{bad}:1", f"{bad}:2", f"{bad}:3"]
    assert "expected a JSON object" in report[0] and "primary key" in report[1]
    assert report[-1].startswith(f"imported 0 records into {url}; 3 refused")
    ok("import", url, str(good))
    assert len(lines(ok("find", url))) == 2


# ---------------------------------------------------------------- copy


def test_copy_through_three_backends_keeps_everything(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if _TC_REASON is not None:
        pytest.skip(_TC_REASON)
    chain = [
        _maker("shelve", request, tmp_path)("first"),
        _maker("tokyo_cabinet", request, tmp_path)("second"),
        _maker("sqlite", request, tmp_path)("third"),
    ]
    if _PG_REASON is None:
        chain.append(_maker("postgresql", request, tmp_path)("fourth"))
    if _MONGO_REASON is None:
        chain.append(_maker("mongodb", request, tmp_path)("fifth"))
    _put_every_kind(chain[0])
    rows = "\n".join(
        json.dumps({"$pk": f"r{i:04}", "i": i, "tag": ["x"] * (i % 3)}) for i in range(2500)
    )
    ok("import", chain[0], stdin=rows + "\n")
    for src, dst in itertools.pairwise(chain):
        proc = pymodels_cli("copy", src, dst, "--batch-size", "700")
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.startswith(f"copied 2,502 records from {src} to {dst}; verified: 2,502")
    # A full comparison of the ends, beyond the copy's own check (exports are in
    # pk order; the order of keys inside a record is not part of it).
    first, last = lines(ok("export", chain[0])), lines(ok("export", chain[-1]))
    assert len(first) == 2502 and last == first
    # Copying again is idempotent: same pks, same content.
    again = pymodels_cli("copy", chain[0], chain[-1])
    assert again.returncode == 0 and "verified: 2,502 records" in again.stderr


def test_copy_verification_notices_a_destination_that_differs(
    make_url: URLMaker, tmp_path: Path
) -> None:
    src, dst = make_url("src"), f"sqlite:///{tmp_path}/dst.db"
    seed(src)
    ok("put", dst, '{"stray": true}', "--pk", "zzz")
    proc = pymodels_cli("copy", src, dst)
    assert proc.returncode == 3
    assert "differ" in proc.stderr and "held other records" in proc.stderr
    skipped = pymodels_cli("copy", src, dst, "--no-verify")
    assert skipped.returncode == 0 and skipped.stderr.endswith("(not verified)\n")


def test_copy_builds_the_source_indexes_on_the_destination(
    make_url: URLMaker, tmp_path: Path
) -> None:
    src = make_url("indexed")
    with pymodels.get_storage(src) as storage:
        if not storage.features.indexes:
            pytest.skip("the backend has no indexes")
        storage.save({"city": "Oulu", "age": 3}, primary_key="a")
        storage.create_index("city")
        wanted = ["city"]
        if storage.features.compound_indexes:
            storage.create_index(("city", "-age"))
            wanted.append("city, -age")
    info = ok("info", src)
    for text in wanted:
        assert text in info
    dst = f"sqlite:///{tmp_path}/copy.db"
    ok("copy", src, dst)
    with pymodels.get_storage(dst, read_only=True) as storage:
        made = [", ".join(str(k) for k in spec.keys) for spec in storage.indexes()]
    assert sorted(made) == sorted(wanted)


# ---------------------------------------------------------------- info


def test_info_describes_the_storage_and_its_fields(url: str) -> None:
    seed(url)
    text = ok("info", url)
    assert url in text
    with pymodels.get_storage(url, read_only=True) as storage:
        backend = storage.backend
        has_file = isinstance(getattr(storage.settings, "path", None), str)
    assert backend in text
    assert "records" in text and " 3 " in text
    assert ("file size" in text) == has_file
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert rows["name"] == ["str", "3", "100%"]
    assert rows["country"] == ["str", "2", "67%"]
    assert rows["born"] == ["date", "1", "33%"]
    sampled = ok("info", url, "--sample", "2")
    assert "a random sample of 2 of 3 records" in sampled


# ---------------------------------------------------------------- the way out


def test_a_pipe_closed_early_ends_quietly(url: str) -> None:
    rows = "".join(json.dumps({"$pk": f"p{i:05}", "text": "x" * 200}) + "\n" for i in range(3000))
    ok("import", url, stdin=rows)
    for command in (["export", url], ["find", url]):
        proc = subprocess.Popen(
            [str(EXE), *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stderr is not None
        head = [proc.stdout.readline() for _ in range(2)]
        proc.stdout.close()  # as `| head -2` does
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 141, err
        assert err == b""
        assert [json.loads(line)["$pk"] for line in head] == ["p00000", "p00001"]


def test_ctrl_c_exits_130_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/wait.db"
    proc = subprocess.Popen(
        [str(EXE), "import", url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write('{"$pk": "a"}\n')
    proc.stdin.flush()
    # Interrupt once the command is reading standard input (which stays open):
    # import copies it to a file it names pymodels-stdin-*.
    deadline = time.monotonic() + 60
    while not any("pymodels-stdin-" in _link(fd) for fd in Path(f"/proc/{proc.pid}/fd").iterdir()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err == "pymodels: interrupted\n"


def _link(fd: Path) -> str:
    try:
        return os.readlink(fd)
    except OSError:  # closed meanwhile
        return ""


def test_exit_codes_and_one_line_errors(tmp_path: Path) -> None:
    unknown = pymodels_cli("info", "nosuch:///x")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("pymodels: nosuch:///x: unknown backend")
    assert len(unknown.stderr.splitlines()) == 1
    usage = pymodels_cli("find", "--limit", "many")
    assert usage.returncode == 2 and "invalid int value" in usage.stderr
    condition = pymodels_cli("find", "age__gt=30")
    assert condition.returncode == 2 and "pymodels find --where age__gt=30" in condition.stderr
    debug = pymodels_cli("info", "nosuch:///x", "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    secret = pymodels_cli("info", "postgresql://me:hunter2@127.0.0.1:1/db?connect_timeout=1")
    assert secret.returncode == 3 and "hunter2" not in secret.stderr and "me:***@" in secret.stderr


def test_help_is_plain_text_and_documents_values() -> None:
    top = ok("--help")
    assert "``" not in top and ":mod:" not in top and "copy" in top and "exit codes" in top
    find = ok("find", "--help")
    assert "``" not in find
    for text in ("2024-05-01", "quoted", "true, false", "null", "--where-not"):
        assert text in find


def test_progress_bar_on_a_terminal_and_only_the_result_line_otherwise(tmp_path: Path) -> None:
    src, dst = f"sqlite:///{tmp_path}/a.db", f"shelve:///{tmp_path}/b.shelf"
    rows = "".join(json.dumps({"i": i}) + "\n" for i in range(20000))
    ok("import", src, stdin=rows)
    shown = _on_terminal([str(EXE), "copy", src, dst], columns=100, stderr_only=True)
    assert "copying" in shown and "records/s" in shown and "eta" in shown
    plain = pymodels_cli("copy", src, f"shelve:///{tmp_path}/c.shelf")
    assert plain.stderr.count("\n") == 1 and plain.stderr.startswith("copied 20,000 records")


def test_the_readme_first_command_runs_as_scripts_example_does(tmp_path: Path) -> None:
    # scripts/example without its set-up: the seed app on the embedded default,
    # then the command line copies its records to shelve and queries them there.
    seed_dir = Path(__file__).resolve().parent.parent / "examples" / "seed"
    app = subprocess.run(
        [sys.executable, str(seed_dir / "app.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(seed_dir)},
        timeout=120,
    )
    assert app.returncode == 0 and "2 of 3 people match" in app.stdout, app.stderr
    script = (seed_dir.parent.parent / "scripts" / "example").read_text()
    copy_line = "copy sqlite:///pymodels.db shelve:///people.shelf"
    assert copy_line in script
    copied = subprocess.run(
        [str(EXE), *copy_line.split()], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert copied.returncode == 0 and "verified: 4 records" in copied.stderr
    found = subprocess.run(
        [str(EXE), "find", "shelve:///people.shelf", "--where", "last_name__startswith=Sm"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert [r["first_name"] for r in lines(found.stdout)] == ["John", "Mary"]

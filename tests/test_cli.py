"""The command line, run in-process on shelve files."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from pymodels.cli import main


def run(*argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        status = main(list(argv), out=out)
    finally:
        sys.stdin = old
    return status, out.getvalue()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"shelve:///{tmp_path}/cli.shelf?dbm=dbm.dumb"


def test_put_get_find_delete(url: str) -> None:
    assert run("put", url, '{"name": "Ann", "age": 31}', "--pk", "a")[0] == 0
    run("put", url, '{"name": "Bob", "age": 25, "born": {"$date": "1999-01-02"}}', "--pk", "b")
    status, text = run("get", url, "b")
    assert status == 0
    assert json.loads(text) == {
        "$pk": "b",
        "name": "Bob",
        "age": 25,
        "born": {"$date": "1999-01-02"},
    }
    status, text = run("find", url, "--where", "age__gte=30", "--format", "jsonl")
    assert [json.loads(line)["$pk"] for line in text.splitlines()] == ["a"]
    status, text = run("find", url, "--order-by=-age", "--limit", "1", "--format", "json")
    assert [r["$pk"] for r in json.loads(text)] == ["a"]
    status, text = run("find", url, "--where", "name__startswith=B")
    assert "Bob" in text and "Ann" not in text
    assert run("delete", url, "a")[0] == 0
    assert run("get", url, "a")[0] == 1  # DoesNotExist, reported, not a traceback


def test_export_import_and_copy_keep_every_type(url: str, tmp_path: Path) -> None:
    record = '{"d": {"$decimal": "2.50"}, "b": {"$bytes": "AP8="}, "f": 1.0, "i": 1}'
    run("put", url, record, "--pk", "k")
    status, dump = run("export", url)
    assert status == 0 and json.loads(dump) == {"$pk": "k", **json.loads(record)}
    other = f"shelve:///{tmp_path}/other.shelf?dbm=dbm.dumb"
    assert run("import", other, stdin=dump)[0] == 0
    assert json.loads(run("get", other, "k")[1]) == json.loads(dump)
    third = f"shelve:///{tmp_path}/third.shelf?dbm=dbm.dumb"
    assert run("copy", url, third)[0] == 0
    assert json.loads(run("get", third, "k")[1]) == json.loads(dump)
    status, info = run("info", third)
    assert status == 0 and "records: 1" in info and "pymodels.ext.shelve" in info


def test_bad_where_is_an_error(url: str) -> None:
    assert run("find", url, "--where", "nonsense")[0] == 1
    assert run("find", url, "--where", "a__gtee=1")[0] == 1


def test_a_condition_where_the_url_goes_says_where_it_belongs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run("find", "age__gt=30")[0] == 1
    assert "pymodels find --where age__gt=30" in capsys.readouterr().err

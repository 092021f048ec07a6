"""The command line's reading of values and files, in-process (subprocess tests: test_cli.py)."""

from __future__ import annotations

import datetime
import decimal
from pathlib import Path

import pytest

from pymodels.cli.records import content_digest, guess_format, read_entries
from pymodels.cli.where import parse_value, where_conditions
from pymodels.errors import InvalidQuery, PyModelsError

UTC = datetime.UTC


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42),
        ("-7", -7),
        ("0", 0),
        ("1.5", 1.5),
        ("2e3", 2000.0),
        ("1.0", 1.0),
        ("true", True),
        ("false", False),
        ("null", None),
        ("2024-05-01", datetime.date(2024, 5, 1)),
        ("2024-05-01T12:30", datetime.datetime(2024, 5, 1, 12, 30)),
        ("2024-05-01 12:30:00.5", datetime.datetime(2024, 5, 1, 12, 30, 0, 500000)),
        ("2024-05-01T12:30:00Z", datetime.datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
        (
            "2024-05-01T12:30+02:00",
            datetime.datetime(2024, 5, 1, 10, 30, tzinfo=UTC),
        ),
        ('"2024-05-01"', "2024-05-01"),
        ('"42"', "42"),
        ("'true'", "true"),
        ('"a \\"quoted\\" word"', 'a "quoted" word'),
        ('[1, 2.0, "x"]', [1, 2.0, "x"]),
        ('{"$decimal": "2.50"}', decimal.Decimal("2.50")),
        ('{"a": {"$date": "2024-01-01"}}', {"a": datetime.date(2024, 1, 1)}),
        ("Smith", "Smith"),
        ("a b", "a b"),
        ("007", "007"),  # not a JSON number: text
        ("NaN", "NaN"),
        ("1.", "1."),
        ("", ""),
    ],
)
def test_values_become_the_kinds_they_spell(text: str, value: object) -> None:
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_impossible_dates_are_errors_that_suggest_quoting() -> None:
    with pytest.raises(InvalidQuery, match="quote it"):
        parse_value("2024-02-30")


@pytest.mark.parametrize(
    ("item", "advice"),
    [
        ("a__ne=1", "--where-not a=1"),
        ("a__nin=[1]", "--where-not a__in=[1]"),
        ("a__iexact=x", "--where a__iequals=x"),
        ("a__isnull=true", "a__exists=false"),
        ("a__regex=^x", "--where a__matches=^x"),
        ("a__iregex=^x", "--where a__imatches=^x"),
        ("a__all=[1]", "--where a__contains_all=[1]"),
        ("a__range=[1, 2]", "--where a__between=[1, 2]"),
    ],
)
def test_foreign_op_names_get_the_pymodels_way(item: str, advice: str) -> None:
    with pytest.raises(InvalidQuery, match="is not an op") as caught:
        where_conditions([item], [])
    assert advice in str(caught.value)
    assert "__equals" in str(caught.value)  # how to reach a key named so


def test_conditions_are_checked_like_the_librarys() -> None:
    with pytest.raises(InvalidQuery, match="did you mean 'gte'"):
        where_conditions(["age__gtee=1"], [])
    with pytest.raises(InvalidQuery, match="path__op=value"):
        where_conditions(["nonsense"], [])
    with pytest.raises(InvalidQuery):
        where_conditions(["age__year=x"], [])  # a wrong kind of value for the op
    assert len(where_conditions(["a=1", "b__equals=2"], ["c=3"])) == 3


def test_json_array_lines_are_the_lines_elements_start_on(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('[{"$pk": "a"},\n\n {"n": 1}, {"$x": 1},\n 5]\n', encoding="utf-8")
    got = [(e.where, e.pk, e.record, e.error) for e in read_entries("a.json", path, "json")]
    assert got[0] == ("a.json:1", "a", {}, None)
    assert got[1] == ("a.json:3", None, {"n": 1}, None)
    assert got[2][0] == "a.json:3" and "$x" in str(got[2][3])
    assert got[3][0] == "a.json:4" and got[3][3] == "expected a JSON object, not a number"


def test_a_broken_json_array_reports_where_and_stops(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('[\n{"n": 1},\n{"n": 2,,}\n,{"n": 3}]', encoding="utf-8")
    got = list(read_entries("a.json", path, "json"))
    assert [e.where for e in got] == ["a.json:2", "a.json:3"]
    assert got[1].error is not None and "cannot be read" in got[1].error


def test_csv_cells_quoted_lines_and_nested_headers(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(
        '$pk,name,address__city,n\nx,"two\nlines",Oulu,1\n,,,\ny,Bob,,"""7"""\nz,1,2\n',
        encoding="utf-8",
    )
    got = list(read_entries("p.csv", path, "csv"))
    assert [(e.where, e.pk) for e in got] == [("p.csv:2", "x"), ("p.csv:5", "y"), ("p.csv:6", None)]
    assert got[0].record == {"name": "two\nlines", "address": {"city": "Oulu"}, "n": 1}
    assert got[1].record == {"name": "Bob", "n": "7"}
    assert got[2].error == "3 values for 4 columns"


def test_csv_header_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("a,a\n1,2\n", encoding="utf-8")
    (entry,) = read_entries("p.csv", path, "csv")
    assert entry.where == "p.csv:1" and "twice" in str(entry.error)


def test_format_from_name_or_content(tmp_path: Path) -> None:
    array, lines, text = tmp_path / "x", tmp_path / "y", tmp_path / "z"
    array.write_text(" [ ]")
    lines.write_text('{"a": 1}\n')
    text.write_text("a,b\n")
    assert guess_format("x", array, None) == "json"
    assert guess_format("y", lines, None) == "jsonl"
    assert guess_format("z.csv", text, None) == "csv"
    assert guess_format("z", text, "csv") == "csv"
    with pytest.raises(PyModelsError, match="--format"):
        guess_format("z", text, None)


def test_content_digest_ignores_key_order_but_not_kinds() -> None:
    assert content_digest("a", {"x": 1, "y": 2}) == content_digest("a", {"y": 2, "x": 1})
    assert content_digest("a", {"x": 1}) != content_digest("a", {"x": 1.0})
    assert content_digest("a", {"x": 1}) != content_digest("b", {"x": 1})
    assert content_digest("a", {"x": decimal.Decimal("2.5")}) != content_digest(
        "a", {"x": decimal.Decimal("2.50")}
    )
    assert content_digest("a", {"x": True}) != content_digest("a", {"x": 1})
    assert content_digest("a", {"x": "2.5"}) != content_digest("a", {"x": decimal.Decimal("2.5")})
    assert content_digest("a", {"x": b"\x00"}) != content_digest("a", {"x": "AA=="})
    assert content_digest("a", {"n": {"b": [1, 2], "a": 0.5}}) == content_digest(
        "a", {"n": {"a": 0.5, "b": [1, 2]}}
    )

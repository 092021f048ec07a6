"""The SQL backends' JSON: its writers (C encoder, msgspec) and readers (msgspec, scanner) agree."""

from __future__ import annotations

import datetime
import json
import json.encoder
import sqlite3
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymodels.errors import ValidationError
from pymodels.ext._sql import encoding
from pymodels.testing.strategies import records

_DAY = datetime.date(2024, 5, 1)


def _reference(value: Any, *, sort_keys: bool = False) -> str:
    # What the encoding module wrote before it kept its C encoder.
    return json.JSONEncoder(
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
        default=encoding._tagged,
        sort_keys=sort_keys,
    ).encode(value)


@given(records())
def test_reused_encoder_writes_what_json_writes(record: dict[str, Any]) -> None:
    assert encoding.dumps(record) == _reference(record)
    sorted_keys = encoding._compact_encoder(default=encoding._tagged, sort_keys=True)
    assert sorted_keys(record) == _reference(record, sort_keys=True)


@given(records())
def test_without_the_c_accelerator_the_text_is_the_same(record: dict[str, Any]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(json.encoder, "c_make_encoder", None)
        pure = encoding._compact_encoder(default=encoding._tagged)
    assert pure(record) == encoding.dumps(record)


def _sqlite_reading(conn: sqlite3.Connection, text: str) -> list[tuple[Any, ...]]:
    # Every node as SQLite's JSON functions see it: path, JSON type, SQL value.
    rows = conn.execute("SELECT fullkey, type, atom FROM json_tree(?)", (text,)).fetchall()
    return [(path, kind, repr(atom)) for path, kind, atom in rows]


@given(st.lists(records(), max_size=5))
def test_a_batch_reads_back_as_each_record_alone(batch: list[dict[str, Any]]) -> None:
    # dumps_each is the bulk save's path to the bodies. msgspec writes the plain
    # records: a float's text may differ from dumps' (1e16 for 1e+16), but every
    # reader must see the same values, in Python and in SQLite's JSON functions
    # (the shadow columns, json_each, json_type are SQLite's reading).
    conn = sqlite3.connect(":memory:")
    expected = [_reference(record) for record in batch]
    # The second batch holds a date: the whole batch then takes the C encoder.
    tagged = [*batch, {"d": _DAY}]
    for texts, references in (
        (encoding.dumps_each(batch), expected),
        (encoding.dumps_each(tagged), [*expected, _reference({"d": _DAY})]),
    ):
        assert len(texts) == len(references)
        for text, reference in zip(texts, references, strict=True):
            assert _same(encoding.loads(text), encoding.loads(reference))
            assert _sqlite_reading(conn, text) == _sqlite_reading(conn, reference)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(encoding, "_c_plain", None)
        mp.setattr(encoding, "_plain_json", lambda record: False)
        assert encoding.dumps_each(batch) == expected


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_msgspec_writes_floats_that_read_back_as_floats(value: float) -> None:
    (text,) = encoding.dumps_each([{"x": value, "l": [value]}])
    assert _same(encoding.loads(text), {"x": value, "l": [value]})
    conn = sqlite3.connect(":memory:")
    got = conn.execute("SELECT json_type(?1, '$.x'), json_extract(?1, '$.x')", (text,)).fetchone()
    assert got[0] == "real"
    assert _same(got[1], value)


def test_plain_batches_go_through_msgspec() -> None:
    # The speed is the point of the second writer: say if it stops being used.
    calls: list[Any] = []

    def counted(value: Any) -> bytes:
        calls.append(value)
        return msgspec.json.encode(value)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(encoding, "_encode_plain", counted)
        encoding.dumps_each([{"a": 1.5, "b": ["x", {"c": [True, 2]}]}])
        assert len(calls) == 1
        # A date, a Decimal, bytes: tagged by the C encoder, never msgspec's own form.
        assert encoding.dumps_each([{"a": 1}, {"d": _DAY}]) == [
            '{"a":1}',
            '{"d":{"$":"62024-05-01"}}',
        ]
        assert len(calls) == 1


def test_the_c_encoder_is_the_one_in_use() -> None:
    # The speed is the point: a platform without the accelerator would pass the
    # tests above silently slower, so say it.
    if getattr(json.encoder, "c_make_encoder", None) is None:
        pytest.skip("this Python's json has no C accelerator")
    assert encoding._dumps_plain.__name__ == "encode"
    assert encoding._dumps_plain.__qualname__.startswith("_joined")
    assert encoding._c_plain is not None


def test_non_finite_floats_and_unknown_types_are_refused() -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        encoding.dumps({"x": float("nan")})
    with pytest.raises(TypeError, match="not storable"):
        encoding.dumps({"x": object()})
    for bad in (float("nan"), float("inf"), [float("-inf")], {"y": float("nan")}):
        with pytest.raises(ValueError, match="Out of range float"):
            encoding.dumps_each([{"x": bad}])


# ------------------------------------------------------------------- reading


def _scanner_value(text: str) -> Any:
    # What the encoding module read before msgspec: the C scanner behind json.
    scan = encoding._scan if '"$"' in text or "null" in text else encoding._scan_plain
    return encoding._parse(scan, text)


def _same(a: Any, b: Any) -> bool:
    # repr tells 1 from 1.0 and -0.0 from 0.0, and shows dict order.
    return repr(a) == repr(b)


_NUMBERS = st.from_regex(r"\A-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,3})?\Z")
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too: text another client wrote
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),  # lone surrogates too
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def _json_texts(draw: st.DrawFn) -> str:
    """JSON texts as pymodels or another client may have written them, some broken."""
    shape = draw(st.sampled_from(["value", "number", "object", "noise"]))
    if shape == "value":
        return json.dumps(draw(_JSON_VALUES), ensure_ascii=draw(st.booleans()))
    if shape == "number":
        return draw(_NUMBERS)
    if shape == "object":
        parts = draw(st.lists(st.tuples(st.text(max_size=4), _NUMBERS), max_size=4))
        return "{" + ",".join(f"{json.dumps(k)}:{n}" for k, n in parts) + "}"
    text = json.dumps(draw(_JSON_VALUES))
    at = draw(st.integers(0, len(text)))
    noise = draw(st.sampled_from(["NaN", "1e400", "\t", '"\\udc00"', " x", ",", "]", "-"]))
    return text[:at] + noise + text[at:]


def _loads_any(pk: str, text: str) -> Any:
    """loads_rows' fallback as a storage's, less its check that the value is an object."""
    return encoding.loads(text)


@given(_json_texts())
def test_loads_reads_what_the_scanner_reads(text: str) -> None:
    # msgspec reads most texts; whatever it refuses the scanner reads as before. So
    # the value read, or the error, is the scanner's for any text, not just ours.
    try:
        expected = _scanner_value(text)
    except ValidationError:
        with pytest.raises(ValidationError):
            encoding.loads(text)
        with pytest.raises(ValidationError):
            encoding.loads_rows([("k", text)], _loads_any)
        return
    assert _same(encoding.loads(text), expected)
    assert _same(
        encoding.loads_rows([("k", text), ("l", text)], _loads_any),
        [("k", expected), ("l", expected)],
    )


@given(_NUMBERS)
def test_msgspec_rounds_numbers_as_python_does(text: str) -> None:
    # Where msgspec reads a number it must be Python's value, exactly: ints of any
    # size stay ints, floats are correctly rounded (halfway cases, long mantissas).
    try:
        got = encoding._decode_plain(text)
    except encoding._DecodeError:
        return  # out of a double's range: the scanner reads it (tested above)
    assert _same(got, json.loads(text))


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_float_reads_back_exactly(value: float) -> None:
    assert _same(encoding.loads(f"[{value!r}]"), [value])


@given(records())
def test_stored_records_take_the_fast_path(record: dict[str, Any]) -> None:
    text = encoding.dumps(record)
    assert _same(encoding.loads(text), _scanner_value(text))
    if '"$"' not in text and "null" not in text:
        # The common case must not fall back to the scanner: msgspec reads it.
        assert _same(encoding._decode_plain(text), _scanner_value(text))


def test_texts_msgspec_refuses_read_as_the_scanner_reads_them() -> None:
    # Each of these makes msgspec raise; the scanner's reading stands.
    cases = {
        "[NaN]": "[nan]",
        "[1e400]": "[inf]",
        '["\\udc00"]': "['\\udc00']",
        '{"a":1} trailing': "{'a': 1}",
    }
    for text, shown in cases.items():
        with pytest.raises(encoding._DecodeError):
            encoding._decode_plain(text)
        assert repr(encoding.loads(text)) == shown, text
    # Unlike orjson, msgspec keeps an int beyond 64 bits (another client's) an int.
    assert repr(encoding._decode_plain("[18446744073709551616]")) == "[18446744073709551616]"
    with pytest.raises(ValidationError, match="not valid JSON"):
        encoding.loads('{"a": }')

"""The SQL backends' JSON writer: the reused C encoder writes what json's own encoder writes."""

from __future__ import annotations

import json
import json.encoder
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymodels.errors import ValidationError
from pymodels.ext._sql import encoding
from pymodels.testing.strategies import records


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


@given(st.lists(records(), max_size=5))
def test_a_batch_is_encoded_as_each_record_alone(batch: list[dict[str, Any]]) -> None:
    # dumps_each is the bulk save's path to the bodies: the text must not depend on it.
    expected = [_reference(record) for record in batch]
    assert encoding.dumps_each(batch) == expected
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(encoding, "_c_plain", None)
        assert encoding.dumps_each(batch) == expected


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
            encoding.loads_rows([("k", text)])
        return
    assert _same(encoding.loads(text), expected)
    assert _same(
        encoding.loads_rows([("k", text), ("l", text)]), [("k", expected), ("l", expected)]
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

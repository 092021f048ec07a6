"""The SQL backends' JSON writer: the reused C encoder writes what json's own encoder writes."""

from __future__ import annotations

import json
import json.encoder
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

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

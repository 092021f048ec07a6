"""The tagged JSON encoding shared by ``Document.to_json`` and the command line.

JSON has no dates, Decimal or bytes, so those become one-key objects whose key
starts with ``$`` (field names never do): ``{"$date": "2024-05-01"}``,
``{"$datetime": "2024-05-01T12:00:00.000001"}`` (``+00:00`` appended when
aware), ``{"$decimal": "2.50"}``, ``{"$bytes": "<base64>"}``. ``int`` and
``float`` stay JSON numbers: Python writes floats with a fraction or exponent
(``1.0``, ``1e+16``), so they read back as floats.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
from typing import Any

from .errors import ValidationError
from .values import validate_value

__all__ = ["decode", "dumps", "encode", "loads"]

_TAGS = ("$date", "$datetime", "$decimal", "$bytes")


def encode(value: Any) -> Any:
    """A JSON-ready form of a domain value."""
    t = type(value)
    if t is dict:
        return {k: encode(v) for k, v in value.items()}
    if t is list:
        return [encode(v) for v in value]
    if t is decimal.Decimal:
        return {"$decimal": str(value)}
    if t is bytes:
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if t is datetime.datetime:
        return {"$datetime": value.isoformat(timespec="microseconds")}
    if t is datetime.date:
        return {"$date": value.isoformat()}
    return value


def decode(value: Any) -> Any:
    """The domain value of a JSON-ready form (inverse of :func:`encode`)."""
    if type(value) is list:
        return [decode(v) for v in value]
    if type(value) is not dict:
        return value
    if len(value) == 1:
        ((tag, raw),) = value.items()
        if tag in _TAGS:
            try:
                return _decode_tag(tag, raw)
            except (TypeError, ValueError, decimal.InvalidOperation) as e:
                raise ValidationError(f"bad {tag} value {raw!r}: {e}") from e
    return {k: decode(v) for k, v in value.items()}


def _decode_tag(tag: str, raw: Any) -> Any:
    if type(raw) is not str:
        raise TypeError("tagged values hold strings")
    if tag == "$decimal":
        return decimal.Decimal(raw)
    if tag == "$bytes":
        return base64.b64decode(raw.encode("ascii"), validate=True)
    if tag == "$date":
        return datetime.date.fromisoformat(raw)
    return datetime.datetime.fromisoformat(raw)


def dumps(value: Any) -> str:
    """Tagged JSON text of a domain value."""
    return json.dumps(encode(value), ensure_ascii=False, allow_nan=False)


def loads(text: str | bytes) -> Any:
    """The domain value of tagged JSON text, validated."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValidationError(f"invalid JSON: {e}") from e
    value = decode(raw)
    if type(value) is dict:
        return {k: validate_value(v, k) if not k.startswith("$") else v for k, v in value.items()}
    return validate_value(value)

"""Values to BSON and back, exactly (docs/guide.md, "Values").

Native BSON wherever BSON keeps the value and compares it as the contract
does: str, int (int32/int64), float, bool, bytes (binary subtype 0), a
Decimal that Decimal128 holds digit for digit, an aware datetime on a whole
millisecond (a BSON date, which is what other MongoDB programs write).

The rest is a *tagged* embedded document whose first key is ``_pm`` (no field
name may start with ``_``, so no record of ours holds such a dict otherwise)
and whose other keys start with ``_`` too, so no user path reaches into it:

* date-only: ``{"_pm": "dt", "_t": <midnight UTC>}``;
* naive datetime: ``{"_pm": "nv", "_t": <BSON date, floor ms>, "_us": <0..999>}``;
* aware datetime off a whole millisecond: ``{"_pm": "aw", "_t": ..., "_us": ...}``;
* a Decimal that Decimal128 cannot hold (an exponent above 6111):
  ``{"_pm": "dec", "_v": "1E+6144"}``.

The keys keep their order, so BSON compares two tagged values of one tag as
the contract compares the values (``_t`` then ``_us``): queries and sorts on
them run in the engine.
"""

from __future__ import annotations

import datetime
import decimal
from typing import Any, Final

from bson import Binary, Decimal128, ObjectId

from ...backend import CorruptData, PyModelsError

__all__ = [
    "TAG",
    "decimal128",
    "decode_record",
    "decode_value",
    "encode_record",
    "encode_value",
    "split_datetime",
]

#: The key that marks a tagged value.
TAG: Final = "_pm"
DATE, NAIVE, AWARE, DECIMAL = "dt", "nv", "aw", "dec"

UTC: Final = datetime.UTC
_MS: Final = datetime.timedelta(milliseconds=1)


def decimal128(value: decimal.Decimal) -> Decimal128 | None:
    """The Decimal128 holding exactly ``value`` (digits and exponent), or None."""
    exp = value.as_tuple().exponent
    if not isinstance(exp, int) or exp > 6111 or exp < -6176:
        return None
    try:
        d = Decimal128(value)
    except (decimal.InvalidOperation, ValueError, TypeError):  # pragma: no cover - domain-checked
        return None
    return d if d.to_decimal().as_tuple() == value.as_tuple() else None


def split_datetime(value: datetime.datetime) -> tuple[datetime.datetime, int]:
    """``(value floored to the millisecond, the microseconds below it)``."""
    rest = value.microsecond % 1000
    return value.replace(microsecond=value.microsecond - rest), rest


def encode_value(value: Any) -> Any:
    """The BSON form of a domain value."""
    t = type(value)
    if t is str or t is int or t is float or t is bool or t is bytes:
        return value
    if t is dict:
        return {k: encode_value(v) for k, v in value.items()}
    if t is list:
        return [encode_value(v) for v in value]
    if t is datetime.datetime:
        floor, rest = split_datetime(value)
        if value.tzinfo is None:
            return {TAG: NAIVE, "_t": floor.replace(tzinfo=UTC), "_us": rest}
        if rest == 0:
            return value
        return {TAG: AWARE, "_t": floor, "_us": rest}
    if t is datetime.date:
        return {TAG: DATE, "_t": datetime.datetime(value.year, value.month, value.day, tzinfo=UTC)}
    if t is decimal.Decimal:
        d = decimal128(value)
        return d if d is not None else {TAG: DECIMAL, "_v": str(value)}
    raise PyModelsError(f"mongodb: cannot encode {t.__name__}")  # pragma: no cover - validated


def encode_record(pk_value: Any, record: dict[str, Any]) -> dict[str, Any]:
    """The document stored for ``record`` under the ``_id`` ``pk_value``."""
    doc: dict[str, Any] = {"_id": pk_value}
    for k, v in record.items():
        t = type(v)
        doc[k] = v if (t is str or t is int or t is float or t is bool) else encode_value(v)
    return doc


def decode_value(value: Any, where: str) -> Any:
    """The domain value of a BSON value (read with ``tz_aware=True``)."""
    t = type(value)
    if t is str or t is float or t is bool or t is int:
        return value
    if t is dict:
        if TAG in value:
            return _decode_tagged(value, where)
        out: dict[str, Any] = {}
        for k, v in value.items():
            if v is not None:  # a stored null reads as absent
                out[k] = decode_value(v, f"{where}.{k}")
        return out
    if t is list:
        if any(v is None for v in value):
            raise CorruptData(f"mongodb: {where} holds a list with null, outside the value domain")
        return [decode_value(v, where) for v in value]
    if isinstance(value, int):  # bson.Int64
        return int(value)
    if t is datetime.datetime:
        return value.astimezone(UTC) if value.tzinfo is not UTC else value
    if t is Decimal128:
        return value.to_decimal()
    if t is bytes:
        return value
    if isinstance(value, Binary):
        return bytes(value)
    if t is ObjectId:
        # References written by other programs: read as their hex, written back as str.
        return str(value)
    raise CorruptData(f"mongodb: {where} holds a {t.__name__}, which is outside the value domain")


def _decode_tagged(value: dict[str, Any], where: str) -> Any:
    tag = value[TAG]
    try:
        if tag == DECIMAL:
            return decimal.Decimal(value["_v"])
        t: datetime.datetime = value["_t"].astimezone(UTC)
        if tag == DATE:
            return t.date()
        full = t + datetime.timedelta(microseconds=value["_us"])
        if tag == NAIVE:
            return full.replace(tzinfo=None)
        if tag == AWARE:
            return full
    except (KeyError, TypeError, AttributeError, decimal.InvalidOperation) as e:
        raise CorruptData(f"mongodb: {where} holds a broken tagged value {value!r}") from e
    raise CorruptData(f"mongodb: {where} holds an unknown tagged value {value!r}")


def decode_record(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(pk, record)`` of a stored document.

    A document another program stored with a value outside the domain raises
    :class:`CorruptData` naming the pk (as ``pk``, and in the message with the field).
    """
    pk = doc.pop("_id")
    if type(pk) is not str:
        if type(pk) is not ObjectId:
            raise CorruptData(
                f"mongodb: a record has _id {pk!r}; pymodels reads str and ObjectId _ids only"
            )
        pk = str(pk)
    try:
        for k, v in list(doc.items()):
            t = type(v)
            if v is None:
                del doc[k]
            elif not (t is str or t is float or t is bool or t is int):
                doc[k] = decode_value(v, f"record {pk!r}: {k}")
    except CorruptData as e:
        raise CorruptData(str(e), pk=pk) from e
    return pk, doc

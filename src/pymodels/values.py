"""The value domain (docs/guide.md, "Values") and the total order of values.

Everything here is pure: validation and normalisation of values before they
are stored, the kind of a value, deep strict equality, and the sort key that
gives every backend the same total order.
"""

from __future__ import annotations

import datetime
import decimal
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

from .errors import ValidationError

__all__ = [
    "KINDS",
    "MAX_DEPTH",
    "MISSING",
    "Kind",
    "Referable",
    "check_field_name",
    "check_pk",
    "copy_value",
    "freeze",
    "get_path",
    "kind_of",
    "sort_key",
    "strict_equal",
    "validate_record",
    "validate_value",
]

INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1
DECIMAL_MAX_DIGITS: Final = 34
#: How deep lists and dicts nest (MongoDB's limit, kept by every backend): a
#: record is level 1 and each list or dict inside it adds a level.
MAX_DEPTH: Final = 100
# IEEE 754 decimal128's exponent range: every encoding of Decimal in the
# backends (order-preserving text, Tokyo's columns) is sized for it.
DECIMAL_MIN_EXP: Final = -6143
DECIMAL_MAX_EXP: Final = 6144

Kind = Literal[
    "bool", "number", "decimal", "str", "bytes", "date", "datetime", "datetime_tz", "list", "dict"
]

#: Kinds in the contract's sort order; absent values sort before all of them.
KINDS: tuple[Kind, ...] = (
    "bool",
    "number",
    "decimal",
    "str",
    "bytes",
    "date",
    "datetime",
    "datetime_tz",
    "list",
    "dict",
)
_RANK: Final = {k: i + 1 for i, k in enumerate(KINDS)}

#: Kinds that gt/gte/lt/lte/between accept.
ORDERED_KINDS: frozenset[Kind] = frozenset(
    {"number", "decimal", "str", "bytes", "date", "datetime", "datetime_tz"}
)


class Referable:
    """What stands for its pk as a lookup or change value: the base of
    :class:`~pymodels.Document`, so that conditions and changes recognise a saved
    document without importing the documents module above them."""

    __slots__ = ()

    @property
    def pk(self) -> str | None:
        """The pk, None until saved."""
        raise NotImplementedError


class _Missing:
    """The marker for an absent field (``None`` is never a stored value)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


def kind_of(value: Any) -> Kind:
    """The contract kind of a value already in the domain."""
    # bool before int (bool is an int subclass); datetime before date likewise.
    t = type(value)
    if t is bool:
        return "bool"
    if t is int or t is float:
        return "number"
    if t is str:
        return "str"
    if t is decimal.Decimal:
        return "decimal"
    if t is bytes:
        return "bytes"
    if t is datetime.datetime:
        return "datetime" if value.tzinfo is None else "datetime_tz"
    if t is datetime.date:
        return "date"
    if t is list:
        return "list"
    if t is dict:
        return "dict"
    raise ValidationError(f"{type(value).__name__} is not a storable value")


def check_field_name(name: object, where: str = "") -> str:
    """Return ``name`` if it may be a field name at any depth, else raise."""
    if type(name) is str and _good_name(name):
        return name
    label = f"{where}.{name}" if where else repr(name)
    if not isinstance(name, str) or type(name) is not str:
        raise ValidationError(
            f"field name {label} must be a str, not {type(name).__name__}", field=where or None
        )
    if not name:
        raise ValidationError(f"empty field name in {where or 'record'}", field=where or None)
    bad = next((c for c in (".", "__", "\x00", '"') if c in name), None)
    if bad is not None:
        raise ValidationError(f"field name {label} must not contain {bad!r}", field=label)
    if name[0] in "$_":
        raise ValidationError(f"field name {label} must not start with {name[0]!r}", field=label)
    _check_unicode(name, label)
    return name


#: Field names already accepted: they repeat across records, and every field of
#: every saved record asks (callers on hot paths test membership before calling).
_GOOD_NAMES: set[str] = set()


def _good_name(name: str) -> bool:
    if name in _GOOD_NAMES:
        return True
    if not name or name[0] in "$_" or "." in name or "__" in name or "\x00" in name:
        return False
    if '"' in name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    if len(_GOOD_NAMES) < 4096:  # bounded: names are data in free-form records
        _GOOD_NAMES.add(name)
    return True


def check_pk(pk: object) -> str:
    """Return ``pk`` if it is a valid primary key: a non-empty str without NUL."""
    # BaseStorage.get tests the common case (a non-empty ASCII str without NUL) itself
    # and calls this for the rest: a new rule here must be added there too.
    if type(pk) is not str or not pk:
        raise ValidationError(f"primary key must be a non-empty str, not {pk!r}", field="pk")
    if "\x00" in pk:
        raise ValidationError("primary key must not contain U+0000", field="pk")
    _check_unicode(pk, "pk")
    return pk


def _check_unicode(text: str, field: str) -> None:
    if text.isascii():  # no surrogates possible: skip the encoding attempt
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValidationError(
            f"{field}: text is not valid Unicode ({e.reason})", field=field
        ) from e


def validate_value(value: Any, field: str = "value", depth: int = 1) -> Any:
    """Check ``value`` against the value domain and return its stored form.

    The stored form is a fresh copy in which aware datetimes are in UTC and
    ``None`` values of nested dicts are dropped (``None`` means absent). Raises
    :class:`ValidationError` naming ``field`` for anything outside the domain.
    ``depth`` is the nesting level of the list or dict holding ``value`` (the
    record is level 1): lists and dicts nest at most :data:`MAX_DEPTH` levels.
    """
    t = type(value)
    if t is str:
        if "\x00" in value:
            raise ValidationError(f"{field}: str must not contain U+0000", field=field)
        if not value.isascii():
            _check_unicode(value, field)
        return value
    if t is bool:
        return value
    if t is int:
        if not INT_MIN <= value <= INT_MAX:
            raise ValidationError(f"{field}: int {value} is outside [-2**63, 2**63-1]", field=field)
        return value
    if t is float:
        if not math.isfinite(value):
            raise ValidationError(f"{field}: float must be finite, not {value}", field=field)
        return value
    if t is decimal.Decimal:
        if not value.is_finite():
            raise ValidationError(f"{field}: Decimal must be finite, not {value}", field=field)
        digits = value.as_tuple().digits
        if len(digits) > DECIMAL_MAX_DIGITS:
            raise ValidationError(
                f"{field}: Decimal has {len(digits)} significant digits (at most 34)", field=field
            )
        exp = value.as_tuple().exponent
        assert isinstance(exp, int)
        if not DECIMAL_MIN_EXP - DECIMAL_MAX_DIGITS < exp <= DECIMAL_MAX_EXP:
            raise ValidationError(f"{field}: Decimal exponent {exp} out of range", field=field)
        return value
    if t is bytes:
        return value
    if t is datetime.datetime:
        if value.tzinfo is None:
            return value
        if value.utcoffset() is None:
            raise ValidationError(f"{field}: datetime tzinfo gives no UTC offset", field=field)
        try:
            return value.astimezone(datetime.UTC)
        except OverflowError as e:
            raise ValidationError(f"{field}: datetime is out of range in UTC", field=field) from e
    if t is datetime.date:
        return value
    if t is list:
        _check_depth(depth + 1, field)
        out = []
        for i, item in enumerate(value):
            if item is None:
                raise ValidationError(f"{field}[{i}]: lists cannot hold None", field=field)
            out.append(validate_value(item, f"{field}[{i}]", depth + 1))
        return out
    if t is dict:
        _check_depth(depth + 1, field)
        return validate_record(value, field, depth + 1)
    if value is None:
        raise ValidationError(f"{field}: None is not a value (it means absent)", field=field)
    raise ValidationError(
        f"{field}: {type(value).__name__} is not a storable value "
        "(str, int, float, bool, Decimal, bytes, date, datetime, list, dict)",
        field=field,
    )


def validate_record(record: Mapping[str, Any], where: str = "", depth: int = 1) -> dict[str, Any]:
    """Validate a mapping of field name to value; ``None`` values are dropped.

    ``depth`` is the mapping's own nesting level (a record is level 1).
    """
    out: dict[str, Any] = {}
    for name, value in record.items():
        check_field_name(name, where)
        if value is None:
            continue
        out[name] = validate_value(value, f"{where}.{name}" if where else name, depth)
    return out


def _check_depth(depth: int, field: str) -> None:
    if depth > MAX_DEPTH:
        raise ValidationError(
            f"{field}: lists and dicts nest more than {MAX_DEPTH} levels deep "
            "(the record is level 1)",
            field=field,
        )


def stored_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`validate_record`, without the copy when ``record`` is in stored form already.

    Most records are (a dict of plain values: no None, no aware datetime
    outside UTC): checking that takes no copy and builds no error text. Anything
    else takes :func:`validate_record`, which also writes the error messages.
    The result may be ``record`` itself: callers must not keep or change it.
    """
    if type(record) is dict and stored_dict(record, 1):
        return record
    return validate_record(record)


def stored_dict(record: dict[Any, Any], depth: int = 1) -> bool:
    """Whether ``record`` (a dict at nesting level ``depth``) is valid and in stored form.

    :func:`stored_record` returns such a record itself; loops over many records
    call this test directly to spare a call per record.
    """
    for name, value in record.items():
        if type(name) is not str or (name not in _GOOD_NAMES and not _good_name(name)):
            return False
        # The commonest kinds: _stored's tests for them, without the call (a
        # call per field is most of the cost of checking a flat record).
        t = type(value)
        if t is str:
            if "\x00" in value or not (value.isascii() or _valid_unicode(value)):
                return False
        elif t is int:
            if not INT_MIN <= value <= INT_MAX:
                return False
        elif t is float:
            if not _isfinite(value):
                return False
        elif value is None or not _stored(value, depth):
            return False
    return True


def _stored(value: Any, depth: int) -> bool:
    """Whether ``value`` (held at nesting level ``depth``) is valid and in stored form."""
    t = type(value)
    if t is str:
        return "\x00" not in value and (value.isascii() or _valid_unicode(value))
    if t is int:
        return bool(INT_MIN <= value <= INT_MAX)
    if t is float:
        return _isfinite(value)
    if t is bool or t is bytes or t is datetime.date:
        return True
    if t is list:
        if depth >= MAX_DEPTH:
            return False  # too deep: validate_value words the error
        # A loop, not all() over a generator: this runs for every list saved.
        for item in value:
            if type(item) is str:
                # A list of str (tags): _stored's test, without a call per item.
                if "\x00" in item or not (item.isascii() or _valid_unicode(item)):
                    return False
            elif item is None or not _stored(item, depth + 1):
                return False
        return True
    if t is dict:
        return depth < MAX_DEPTH and stored_dict(value, depth + 1)
    if t is datetime.datetime:
        return value.tzinfo is None or value.tzinfo is datetime.UTC
    return False  # Decimal and anything else: the full check


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_isfinite = math.isfinite

_SCALARS: Final = frozenset(
    {str, int, float, bool, bytes, decimal.Decimal, datetime.date, datetime.datetime}
)


def strict_equal(a: Any, b: Any) -> bool:
    """Deep strict equality of two domain values (docs/queries.md)."""
    t = type(a)
    if t is type(b) and t in _SCALARS:
        # Same scalar type: Python's == is the contract's (naive == aware is False).
        return bool(a == b)
    return bool(freeze(a) == freeze(b))


def copy_value(value: Any) -> Any:
    """A copy of a domain value that shares no list or dict with it (scalars are immutable)."""
    t = type(value)
    # Scalars are kept without a call: records are mostly scalars, and a call per
    # field was most of what a memory get or save cost. A dict is copied whole in C
    # and only its lists and dicts replaced (a comprehension rebuilt every entry); a
    # list in it is copied inline, the list branch below without its call (a record's
    # list of tags is the common case: 0.1-0.3 us of a 3.5 us memory get).
    if t is dict:
        out = value.copy()
        for k, v in out.items():
            t = type(v)
            if t is list:
                out[k] = [copy_value(x) if type(x) is dict or type(x) is list else x for x in v]
            elif t is dict:
                out[k] = copy_value(v)
        return out
    if t is list:
        return [copy_value(v) if type(v) is dict or type(v) is list else v for v in value]
    return value


def freeze(value: Any) -> Any:
    """A hashable form of a domain value; equal forms mean strictly equal values."""
    k = kind_of(value)
    if k == "list":
        return (k, tuple(freeze(v) for v in value))
    if k == "dict":
        return (k, frozenset((name, freeze(v)) for name, v in value.items()))
    return (k, value)


def sort_key(value: Any) -> tuple[Any, ...]:
    """The key that sorts values in the contract's total order.

    Absent (``MISSING``) sorts first; then by kind rank; within a kind by
    Python's order, lists element by element and dicts by sorted items.
    """
    if value is MISSING:
        return (0,)
    k = kind_of(value)
    if k == "list":
        return (_RANK[k], tuple(sort_key(v) for v in value))
    if k == "dict":
        return (_RANK[k], tuple((name, sort_key(value[name])) for name in sorted(value)))
    return (_RANK[k], value)


def get_path(record: Mapping[str, Any], path: Iterable[str]) -> Any:
    """The value at ``path`` (dict keys only), or ``MISSING``."""
    current: Any = record
    for part in path:
        if type(current) is not dict or part not in current:
            return MISSING
        current = current[part]
    return current

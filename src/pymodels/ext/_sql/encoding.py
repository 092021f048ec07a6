"""How the SQL backends store values: tagged JSON whose SQL form compares and sorts.

A record is one JSON object. ``str``, ``bool``, ``int``, ``float``, ``list`` and
``dict`` are plain JSON. The other kinds become one-member objects under the key
``"$"`` (field names never start with ``$``, so no dict can be mistaken for one)
holding a *sort key*: a string whose first character is the kind's rank digit
and whose rest sorts, under binary (code point) comparison, exactly as Python
orders the values::

    Decimal("2.50")  -> {"$": "3p1000025", "$r": "2.50"}     (see decimal_key)
    b"\\x00\\xff"      -> {"$": "500ff"}                       (hex)
    date(2024, 5, 1) -> {"$": "62024-05-01"}
    naive datetime   -> {"$": "72024-05-01T12:00:00.000000"}
    aware datetime   -> {"$": "82024-05-01T10:00:00.000000"}  (UTC)

Equal values have equal sort keys, so SQL equality on the key is the contract's
equality, and ``ORDER BY rank, key`` is the contract's order. A Decimal's key is
canonical (``2.5`` and ``2.50`` share it); when ``str(value)`` differs from the
key's canonical form, ``"$r"`` keeps the exact digits and exponent for the round
trip. Every character of a key sorts above ``"`` and needs no JSON escaping.

PostgreSQL's ``jsonb`` stores numbers as ``numeric``: it prints ``1e16`` as
``10000000000000000`` (which would load as an int) and drops the sign of
``-0.0``. :func:`dumps_pg` therefore writes floats of magnitude 1e16 and above
positionally with a ``.0`` (numeric keeps the scale, so they print with it and
load as floats) and negative zero as ``0.00``, a scale no float repr produces,
which :func:`loads` maps back to ``-0.0``.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import itertools
import json
import json.encoder
import json.scanner
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec

from ...backend import INT_MAX, INT_MIN, KINDS, CorruptData, ValidationError, kind_of

__all__ = [
    "RANK",
    "TAG",
    "canonical",
    "canonical_from_json",
    "decimal_from_key",
    "decimal_key",
    "decimal_paths",
    "dumps",
    "dumps_each",
    "dumps_pg",
    "dumps_pg_match",
    "json_kind",
    "loads",
    "loads_pg",
    "loads_rows",
    "sort_key",
]

#: The key of a tagged value (and, with ``RAW``, the only keys that start with ``$``).
TAG: Final = "$"
#: The key holding a Decimal's exact text when it differs from its canonical form.
RAW: Final = "$r"
#: Kind -> rank in the contract's total order (absent is 0).
RANK: Final[dict[str, int]] = {k: i + 1 for i, k in enumerate(KINDS)}

_DEC, _BYTES, _DATE, _NAIVE, _AWARE = (
    str(RANK[k]) for k in ("decimal", "bytes", "date", "datetime", "datetime_tz")
)
# Adjusted exponents of storable Decimals lie in [-6176, 6177]; biased by
# 10000 they always take five digits, so the text compares like the number.
_EXP_BIAS: Final = 10000


# ----------------------------------------------------------------- sort keys


def decimal_key(value: decimal.Decimal) -> str:
    """An order-preserving text for a finite Decimal (equal values, equal texts).

    Zero is ``o``. A positive number is ``p``, its biased adjusted exponent in
    five digits, then its significant digits without trailing zeros; a negative
    one is ``n``, the exponent mirrored, the digits nine-complemented and ``~``
    (so that a longer digit string, a larger magnitude, sorts first).
    """
    sign, digits_t, exponent = value.as_tuple()
    digits = "".join(map(str, digits_t)).rstrip("0")
    if not digits:
        return "o"
    assert isinstance(exponent, int)
    # The adjusted exponent: the power of ten of the first significant digit.
    adjusted = exponent + len(digits_t) - 1
    if sign == 0:
        return f"p{_EXP_BIAS + adjusted:05d}{digits}"
    flipped = digits.translate(_NINES)
    return f"n{_EXP_BIAS - adjusted:05d}{flipped}~"


_NINES: Final = str.maketrans("0123456789", "9876543210")


def decimal_from_key(key: str) -> decimal.Decimal:
    """The canonical Decimal of a :func:`decimal_key` text."""
    if key == "o":
        return decimal.Decimal(0)
    if key[0] == "p":
        adjusted = int(key[1:6]) - _EXP_BIAS
        digits = key[6:]
        sign = 0
    else:
        adjusted = _EXP_BIAS - int(key[1:6])
        digits = key[6:-1].translate(_NINES)
        sign = 1
    return decimal.Decimal((sign, tuple(map(int, digits)), adjusted - len(digits) + 1))


def sort_key(value: Any) -> str:
    """The tagged sort key (rank digit first) of a Decimal, bytes, date or datetime."""
    # isinstance narrows for the type checker; the exact type() checks keep
    # bool/int and datetime/date apart (subclasses are not other kinds).
    t = type(value)
    if t is decimal.Decimal and isinstance(value, decimal.Decimal):
        return _DEC + decimal_key(value)
    if t is bytes and isinstance(value, bytes):
        return _BYTES + value.hex()
    if t is datetime.datetime and isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            return _NAIVE + value.isoformat(timespec="microseconds")
        utc = value.astimezone(datetime.UTC).replace(tzinfo=None)
        return _AWARE + utc.isoformat(timespec="microseconds")
    if t is datetime.date and isinstance(value, datetime.date):
        return _DATE + value.isoformat()
    raise TypeError(f"{t.__name__} is not a tagged kind")


def _tagged(value: Any) -> dict[str, str]:
    """The stored JSON form of a tagged value (json.dumps ``default`` hook)."""
    try:
        key = sort_key(value)
    except TypeError:
        raise TypeError(f"{type(value).__name__} is not storable") from None
    if type(value) is decimal.Decimal:
        text = str(value)
        if text != str(decimal_from_key(key[1:])):
            return {TAG: key, RAW: text}
    return {TAG: key}


# ------------------------------------------------------------------- writing


def _json_encoder(default: Any, sort_keys: bool) -> json.JSONEncoder:
    return json.JSONEncoder(
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
        default=default,
        sort_keys=sort_keys,
        check_circular=False,
    )


def _c_encoder(encoder: json.JSONEncoder) -> Any:
    """The C encoder doing what ``encoder`` does, None without the C accelerator.

    Called as ``c_encode(value, 0)``, it returns the text in parts. With no
    circular-reference markers it keeps no state between calls, so threads may
    share it. Values reach it validated, so they hold no cycles.
    """
    make = getattr(json.encoder, "c_make_encoder", None)  # the C accelerator, when built
    if make is None:
        return None
    return make(
        None,  # no markers: no circular-reference check
        encoder.default,
        json.encoder.encode_basestring,  # ensure_ascii=False
        None,  # no indent
        ":",
        ",",
        encoder.sort_keys,
        False,  # skipkeys
        False,  # allow_nan
    )


def _compact_encoder(default: Any = None, sort_keys: bool = False) -> Callable[[Any], str]:
    """A function writing compact JSON (UTF-8 text, no NaN), made once and reused.

    ``JSONEncoder.encode`` builds a new C encoder on every call, which costs
    about as much as encoding a six-field record: where the C accelerator
    exists, the encoder is built here once (see :func:`_c_encoder`).
    """
    encoder = _json_encoder(default, sort_keys)
    return _joined(encoder, _c_encoder(encoder))


def _joined(encoder: json.JSONEncoder, c_encode: Any) -> Callable[[Any], str]:
    """``encoder.encode`` through ``c_encode`` (its C twin, or None) when there is one."""
    if c_encode is None:
        return encoder.encode

    def encode(value: Any) -> str:
        return "".join(c_encode(value, 0))

    return encode


_plain: Final = _json_encoder(_tagged, False)
# Its C encoder (None without the accelerator): dumps maps it per value, dumps_each over a list.
_c_plain: Final = _c_encoder(_plain)
_dumps_plain: Final = _joined(_plain, _c_plain)


def dumps(value: Any) -> str:
    """The stored JSON text of a domain value (SQLite form)."""
    return _dumps_plain(value)


# msgspec's JSON writer: about five times faster than the C encoder on a plain
# record. It writes some floats in another form (1e16 for 1e+16, 0.000025 for
# 2.5e-05), which Python, msgspec and SQLite's JSON functions all read as the same
# double (tests/test_sql_encoding.py). It also writes dates, Decimals and bytes
# its own way and NaN as null, so it only takes records of JSON's own kinds.
_encode_plain: Final = msgspec.json.Encoder().encode


def _plain_json(record: dict[str, Any]) -> bool:
    """Whether ``record`` holds only str, int, finite float, bool, list and dict."""
    for value in record.values():
        t = type(value)
        if t is str or t is int or t is bool:
            continue
        if t is float:
            if value - value != 0.0:  # inf or nan: refused by the C encoder
                return False
        elif t is list:
            for item in value:
                if type(item) is not str and not _plain_value(item):
                    return False
        elif t is not dict or not _plain_json(value):
            return False
    return True


def _plain_value(value: Any) -> bool:
    t = type(value)
    if t is str or t is int or t is bool:
        return True
    if t is float:
        return bool(value - value == 0.0)
    if t is list:
        return all(map(_plain_value, value))
    return t is dict and _plain_json(value)


def dumps_each(values: Sequence[Any]) -> list[str]:
    """:func:`dumps` of each of ``values`` (records), in order: the same values, read back.

    A bulk write's bodies. A record of JSON's own kinds goes through msgspec's
    writer, whose text can differ from :func:`dumps`' only in how a float is
    written; any other record through the C encoder mapped over the list,
    without the two Python calls per value :func:`dumps` makes.
    """
    if all(map(_plain_json, values)):
        encode = _encode_plain
        return [encode(value).decode() for value in values]
    if _c_plain is None:
        return list(map(_dumps_plain, values))
    return list(map("".join, map(_c_plain, values, itertools.repeat(0, len(values)))))


# A JSON string (skipped as a whole) or a number with a positive exponent or
# exactly -0.0: the only number tokens jsonb would print differently.
_PG_FIX: Final = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?e\+\d+|-0\.0(?![\d.e])')


def _pg_number(match: re.Match[str]) -> str:
    token = match.group()
    if token[0] == '"':
        return token
    if token == "-0.0":
        return "0.00"
    text = format(decimal.Decimal(token), "f")
    return text if "." in text else text + ".0"


def _fix_pg(text: str) -> str:
    if "e+" in text or "-0.0" in text:
        return _PG_FIX.sub(_pg_number, text)
    return text


def dumps_pg(value: Any) -> str:
    """The stored JSON text of a domain value for PostgreSQL ``jsonb``."""
    return _fix_pg(_dumps_plain(value))


_dumps_match: Final = _compact_encoder(default=lambda value: {TAG: sort_key(value)})


def dumps_pg_match(value: Any) -> str:
    """jsonb text to compare stored values with: Decimals without their exact text.

    jsonb equality and containment then hold exactly for strictly equal values
    once the ``"$r"`` members of stored Decimals are ignored (see
    :func:`decimal_paths`); containment ignores them by itself.
    """
    return _fix_pg(_dumps_match(value))


def decimal_paths(value: Any, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """jsonb paths (list indexes as text) of the ``"$r"`` members Decimals in ``value`` may have."""
    t = type(value)
    if t is decimal.Decimal:
        return [[*prefix, RAW]]
    if t is list:
        return [p for i, v in enumerate(value) for p in decimal_paths(v, (*prefix, str(i)))]
    if t is dict:
        return [p for k, v in value.items() for p in decimal_paths(v, (*prefix, k))]
    return []


# ------------------------------------------------------------------- reading


def _untag(obj: dict[str, Any]) -> Any:
    key = obj[TAG]
    try:
        rank, body = key[0], key[1:]
        if rank == _DEC:
            raw = obj.get(RAW)
            return decimal.Decimal(raw) if raw is not None else decimal_from_key(body)
        if rank == _BYTES:
            return bytes.fromhex(body)
        if rank == _DATE:
            return datetime.date.fromisoformat(body)
        if rank == _NAIVE:
            return datetime.datetime.fromisoformat(body)
        if rank == _AWARE:
            return datetime.datetime.fromisoformat(body).replace(tzinfo=datetime.UTC)
    except (TypeError, ValueError, IndexError, decimal.InvalidOperation) as e:
        raise ValidationError(f"malformed tagged value {obj!r}: {e}") from e
    raise ValidationError(f"unknown tagged value {obj!r}")


def _object_hook(obj: dict[str, Any]) -> Any:
    if TAG in obj:
        return _untag(obj)
    # A JSON null written by another client reads as absent.
    if None in obj.values():
        return {k: v for k, v in obj.items() if v is not None}
    return obj


def _pg_float(token: str) -> float:
    # "0.00" is how dumps_pg writes -0.0 (jsonb has no negative zero).
    return -0.0 if token == "0.00" else float(token)


# The C scanner behind json.loads, called directly: json.loads adds a Python
# layer (whitespace regex, end check) that costs as much as the parse of a
# small record. Stored records start with "{" and carry nothing after it.
# (typeshed types make_scanner's argument as make_scanner; it is the decoder.)
_scan: Final = json.scanner.make_scanner(
    json.JSONDecoder(object_hook=_object_hook)  # type: ignore[arg-type]
)
# Without an object hook, for text that holds no tagged value and no null (most
# records): the hook is a Python call per JSON object.
_scan_plain: Final = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_scan_pg: Final = json.scanner.make_scanner(
    json.JSONDecoder(object_hook=_object_hook, parse_float=_pg_float)  # type: ignore[arg-type]
)


def _parse(scan: Any, text: str) -> Any:
    try:
        if text[:1] in ("{", "["):
            return scan(text, 0)[0]
        # Not an object or array (not written by pymodels): the full parser.
        return json.loads(text, object_hook=_object_hook)
    except ValidationError:
        raise  # a malformed tagged value: its own message says what is wrong with it
    except (ValueError, StopIteration) as e:
        raise ValidationError(f"stored value is not valid JSON: {text[:80]!r}") from e


# msgspec's decoder, for text with no tagged value and no null (what pymodels
# writes for most records): about 3 times faster than the C scanner. Where it
# reads a text at all it reads what the scanner reads (ints of any size kept,
# floats correctly rounded; tests/test_sql_encoding.py compares the two), and it
# refuses what the scanner reads differently (NaN, 1e400, lone surrogates,
# trailing text): those go on to the scanner, so the value never depends on it.
_decode_plain: Final = msgspec.json.Decoder().decode
#: The same, refusing any text whose top level is not an object (a stored record).
_decode_record: Final = msgspec.json.Decoder(dict).decode
_DecodeError: Final = msgspec.DecodeError


def loads(text: str) -> Any:
    """The domain value of stored JSON text."""
    # A tagged value always writes the key "$"; a JSON null is "null". Either
    # may also appear inside a string, which only costs the slower scanner.
    if '"$"' in text or "null" in text:
        return _parse(_scan, text)
    try:
        return _decode_plain(text)
    except _DecodeError:
        pass  # _parse reads it as before, or says what is wrong
    return _parse(_scan_plain, text)


def loads_rows(
    rows: list[Any], record: Callable[[str, Any], dict[str, Any]]
) -> list[tuple[str, Any]]:
    """``(pk, record)`` of each ``(pk, body)`` row: a query's page, decoded.

    A body msgspec reads as an object is the record; any other goes to
    ``record(pk, body)``, which reads it with :func:`loads` or says why it holds
    no record. :func:`loads`' test and common case are written out in the loop: a
    page of ten records otherwise spends a fifth of its decoding in calls.
    """
    out: list[tuple[str, Any]] = []
    append = out.append
    decode = _decode_record
    for pk, text in rows:
        if '"$"' not in text and "null" not in text:
            try:
                append((pk, decode(text)))
                continue
            except _DecodeError:
                pass  # record() reads it as before, or says what is wrong
        append((pk, record(pk, text)))
    return out


_JSON_KINDS: Final = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def json_kind(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words (``an array``, ``a number``)."""
    if isinstance(value, int | float) and type(value) is not bool:
        return "a number"
    return _JSON_KINDS.get(type(value), f"a {type(value).__name__}")


def loads_pg(data: bytes | bytearray | memoryview | str) -> Any:
    """The domain value of JSON text printed by PostgreSQL ``jsonb``."""
    text = data if isinstance(data, str) else bytes(data).decode()
    # parse_float costs a Python call per float: only where "0.00" (a -0.0) may be.
    try:
        if "0.00" in text:
            return _parse(_scan_pg, text)
        return loads(text)
    except ValidationError as e:
        # Raised inside the driver's fetch, where the row's pk is not known: the
        # storage's error translation names the table.
        raise CorruptData(f"a stored value cannot be read back: {e}") from e


# --------------------------------------------------------- canonical equality


def _canonical_number(value: int | float) -> int | float:
    # Equal numbers get one text: an integral float in the int64 range is
    # written as the int it equals (-0.0 becomes 0).
    if type(value) is float and value.is_integer() and INT_MIN <= value <= INT_MAX:
        return int(value)
    return value


def _canonical_ready(value: Any) -> Any:
    k = kind_of(value)
    if k == "number":
        return _canonical_number(value)
    if k == "list":
        return [_canonical_ready(v) for v in value]
    if k == "dict":
        return {name: _canonical_ready(v) for name, v in value.items()}
    if k in ("str", "bool"):
        return value
    return {TAG: sort_key(value)}


def canonical(value: Any) -> str:
    """One JSON text per equivalence class of strict equality (for list/dict equality).

    Dict keys sorted, numbers that are equal written alike, Decimals by sort key.
    """
    return _dumps_canonical(_canonical_ready(value))


_dumps_canonical: Final = _compact_encoder(sort_keys=True)


@functools.lru_cache(maxsize=4096)
def canonical_from_json(text: str) -> str:
    """:func:`canonical` of the value a stored JSON text holds."""
    return canonical(loads(text))

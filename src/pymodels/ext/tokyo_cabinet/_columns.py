"""The column format: pymodels records as Tokyo Cabinet table records, and back.

Each top-level field is one column named by the field, holding plain text that Tokyo's
own tools (``tctmgr``, Tokyo Tyrant clients) read naturally:

========================  =====================================  ====
kind                      column text                            code
========================  =====================================  ====
str                       UTF-8 (the empty str: one NUL byte)    (none)
                                                                 ``e`` if empty
int                       decimal (``-42``)                      ``i``
float                     positional decimal (``0.1``, ``1e16``  ``f``
                          as ``10000000000000000.0``)
bool                      ``true`` / ``false``                   ``b``
Decimal                   positional decimal (``2.50``)          ``d``
bytes                     the raw bytes (empty: one NUL byte)    ``y``
                                                                 ``E`` if empty
date                      ``YYYYMMDD``                           ``D``
naive datetime            ``YYYYMMDDHHMMSS.ffffff``              ``t``
aware datetime            the same, in UTC                       ``z``
list of plain words       the words joined by one space          ``w``
other list                spaced tagged JSON (``[ 1, "a b" ]``)  ``l``
dict                      spaced tagged JSON (``{ "k": 1 }``)    ``m``
========================  =====================================  ====

No column is ever empty: Tokyo Cabinet 1.4.48 aborts the whole process (a C assertion)
when an empty value meets a lexical or decimal index. The empty str and empty bytes are
written as one NUL byte, which every C-string operator (``STRBW``, ``STRINC``, ``STRRX``,
tools reading columns as C strings) sees as the empty string; the type token tells them
apart from a real NUL. The empty list is ``[]``.

Numbers are positional (never ``1e+16``) because Tokyo's number parser ignores exponents;
so ``NUM*`` conditions, number orders and decimal indexes work on them. Dates and
datetimes are fixed-width digit strings: they sort as text and as numbers.

What the text cannot tell apart is kept in one reserved column, :data:`TYPES_COLUMN`
(``_types``), as space-separated tokens ``<field>:<code>`` for every field that is not a
str (a Decimal with a positive exponent adds ``<field>:x<exponent>``). Field names never
start with ``_``, so the column can never clash with a field. Because the tokens are
separated the way Tokyo's token operators (``STROR``, ``STRAND``) split text, queries can
test a field's kind inside the engine (see :func:`gate`). A column without a token,
written by another client, loads as str.

Lists and dicts use tagged JSON (:mod:`pymodels.codec`) with a space after every
opening bracket, comma and colon and before every closing bracket, so each element is a
separate Tokyo token: ``tags STRAND '"red"'`` finds lists holding ``"red"``.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final
from urllib.parse import unquote

from ...codec import decode as decode_tagged
from ...codec import encode as encode_tagged
from ...values import check_field_name
from ._binding import _parse_map

__all__ = [
    "ALL_CODES",
    "KIND_CODES",
    "TYPES_COLUMN",
    "date_text",
    "datetime_text",
    "decimal_text",
    "decode_record",
    "encode_record",
    "float_text",
    "json_number_forms",
    "json_text",
    "name_bytes",
    "number_forms",
    "tc_tokens",
    "token",
    "word_safe",
]

#: The reserved column holding type tokens (a field name can never start with ``_``).
TYPES_COLUMN: Final = b"_types"

#: Type codes of each value kind (:data:`pymodels.values.KINDS`); str has none.
KIND_CODES: Final[dict[str, tuple[str, ...]]] = {
    "bool": ("b",),
    "number": ("i", "f"),
    "decimal": ("d",),
    "str": ("e",),
    "bytes": ("y", "E"),
    "date": ("D",),
    "datetime": ("t",),
    "datetime_tz": ("z",),
    "list": ("w", "l"),
    "dict": ("m",),
}
#: Every type code a field can carry.
ALL_CODES: Final = tuple(code for codes in KIND_CODES.values() for code in codes)

_UTC: Final = datetime.UTC
#: The column text of an empty str or bytes value (never an empty column: see above).
EMPTY: Final = b"\x00"
_TRUE: Final = b"true"
_FALSE: Final = b"false"
# Tokyo splits tokens at every byte <= 0x20 and at commas (tctdbqrycondcheckstrand).
_TC_SEPARATORS: Final = re.compile(r"[\x00-\x20,]+")
_NOT_WORD: Final = re.compile(r"[\x00-\x20,]")


# -------------------------------------------------------------------- names and tokens


@functools.lru_cache(maxsize=4096)
def name_bytes(name: str) -> bytes:
    """A field name as a column name."""
    return name.encode("utf-8")


@functools.lru_cache(maxsize=4096)
def _field_name(column: bytes) -> str | None:
    """The field name of a column, or None for columns pymodels does not show.

    Columns written by other clients whose names are not valid field names (Tokyo's own
    ``_num`` counter, names with ``.`` or ``__``, invalid UTF-8) are left out of records.
    """
    try:
        return check_field_name(column.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _escape(name: str) -> str:
    # Tokens may not hold Tokyo's separators; '%' and ':' are escaped so that unquote()
    # and rsplit(":") invert this exactly.
    out = []
    for ch in name:
        if ch <= " " or ch in ",%:":
            out.append(f"%{ord(ch):02X}")
        else:
            out.append(ch)
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def token(name: str, code: str) -> str:
    """The type token of field ``name`` with type ``code``."""
    return f"{_escape(name)}:{code}"


@functools.lru_cache(maxsize=1024)
def _parse_types(raw: bytes) -> dict[bytes, tuple[str, int]]:
    """Column name -> (type code, Decimal exponent) from a ``_types`` column.

    Cached by the column's text: records of one shape share it, so loading many records
    parses it once.
    """
    out: dict[bytes, tuple[str, int]] = {}
    exponents: dict[bytes, int] = {}
    for tok in raw.decode("utf-8", "replace").split():
        name, sep, code = tok.rpartition(":")
        if not sep or not code:
            continue
        column = unquote(name).encode("utf-8")
        if code[0] == "x":
            try:
                exponents[column] = int(code[1:])
            except ValueError:
                continue
        elif code in ALL_CODES:
            out[column] = (code, 0)
    for column, exponent in exponents.items():
        if out.get(column, ("", 0))[0] == "d":
            out[column] = ("d", exponent)
    return out


def tc_tokens(text: str) -> list[str]:
    """The tokens Tokyo's ``STRAND``/``STROR``/``STROREQ`` see in ``text``."""
    return [t for t in _TC_SEPARATORS.split(text) if t]


def word_safe(text: str) -> bool:
    """Whether ``text`` is one Tokyo token (non-empty, no separator)."""
    return bool(text) and _NOT_WORD.search(text) is None


# ------------------------------------------------------------------------ value texts


#: The largest integer part a number column shows as such (see :func:`float_text`).
SATURATED: Final = 2**63 - 1


def _saturated(negative: bool, exact: str) -> str:
    return f"{'-' if negative else ''}{SATURATED} ({exact})"


def float_text(value: float) -> str:
    """A float as positional decimal text (exact: the digits of ``repr``).

    Beyond 2**63 - 1 in magnitude the text is that bound then the exact value in
    parentheses (``9223372036854775807 (1e+20)``): Tokyo's decimal index reads integer
    parts into a 64-bit integer and would misplace larger ones, and its number parser
    stops at the space, so both see the bound and keep their orders consistent.
    """
    text = repr(value)
    if abs(value) > SATURATED:
        return _saturated(value < 0, text)
    if "e" in text or "E" in text:
        text = format(decimal.Decimal(text), "f")
    if "." not in text:
        text += ".0"
    return text


def decimal_text(value: decimal.Decimal) -> tuple[str, int]:
    """A Decimal as positional text, and the exponent to restore (0: none needed).

    Beyond 2**63 - 1 in magnitude, as :func:`float_text` (the parenthesised exact text
    keeps the exponent, so none is returned).
    """
    if abs(value) > SATURATED:
        return _saturated(value.is_signed(), str(value)), 0
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    return format(value, "f"), exponent if exponent > 0 else 0


def _exact_part(raw: bytes) -> bytes:
    """The exact text of a saturated number column (the text itself otherwise)."""
    if raw.endswith(b")"):
        start = raw.find(b" (")
        if start > 0:
            return raw[start + 2 : -1]
    return raw


def date_text(value: datetime.date) -> str:
    """``YYYYMMDD``: sorts as text and as a number."""
    return f"{value.year:04d}{value.month:02d}{value.day:02d}"


def datetime_text(value: datetime.datetime) -> str:
    """``YYYYMMDDHHMMSS.ffffff`` (aware values are already in UTC)."""
    v = value
    return (
        f"{v.year:04d}{v.month:02d}{v.day:02d}{v.hour:02d}{v.minute:02d}{v.second:02d}"
        f".{v.microsecond:06d}"
    )


def number_forms(value: int | float) -> list[str]:
    """Every column text of a number equal to ``value`` (int and float forms)."""
    forms: list[str] = []
    if type(value) is int:
        forms.append(str(value))
        as_float = float(value)
        if as_float == value:
            forms.append(float_text(as_float))
    else:
        forms.append(float_text(value))
        if float(value).is_integer() and -(2**63) <= value < 2**63:
            forms.append(str(int(value)))
    if value == 0:
        forms = ["0", "0.0", "-0.0"]
    return list(dict.fromkeys(forms))


def json_number_forms(value: int | float) -> list[str]:
    """Every JSON text of a number equal to ``value`` (as inside list columns)."""
    forms: list[str] = []
    if type(value) is int:
        forms.append(str(value))
        as_float = float(value)
        if as_float == value:
            forms.append(repr(as_float))
    else:
        forms.append(repr(value))
        if float(value).is_integer() and -(2**63) <= value < 2**63:
            forms.append(str(int(value)))
    if value == 0:
        forms = ["0", "0.0", "-0.0"]
    return list(dict.fromkeys(forms))


def json_text(value: Any) -> str:
    """Spaced tagged JSON: every element a separate Tokyo token."""
    t = type(value)
    if t is list:
        return "[ " + ", ".join(json_text(v) for v in value) + " ]" if value else "[]"
    if t is dict:
        if not value:
            return "{}"
        items = (f"{_json_str(k)}: {json_text(v)}" for k, v in value.items())
        return "{ " + ", ".join(items) + " }"
    if t is str:
        return _json_str(value)
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return str(value)
    if t is float:
        return repr(value)
    return json_text(encode_tagged(value))


def _json_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


# ---------------------------------------------------------------------------- records


def _encode_value(name: str, value: Any, tokens: list[str]) -> bytes:
    t = type(value)
    if t is str:
        if not value:
            tokens.append(token(name, "e"))
            return EMPTY
        return str.encode(value, "utf-8")
    if t is int:
        tokens.append(token(name, "i"))
        return str(value).encode("ascii")
    if t is float:
        tokens.append(token(name, "f"))
        return float_text(value).encode("ascii")
    if t is bool:
        tokens.append(token(name, "b"))
        return _TRUE if value else _FALSE
    if t is decimal.Decimal:
        text, exponent = decimal_text(value)
        tokens.append(token(name, "d"))
        if exponent:
            tokens.append(token(name, f"x{exponent}"))
        return text.encode("ascii")
    if t is bytes:
        if not value:
            tokens.append(token(name, "E"))
            return EMPTY
        tokens.append(token(name, "y"))
        return bytes(value)
    if t is datetime.datetime:
        tokens.append(token(name, "t" if value.tzinfo is None else "z"))
        return datetime_text(value).encode("ascii")
    if t is datetime.date:
        tokens.append(token(name, "D"))
        return date_text(value).encode("ascii")
    if t is list:
        if value and all(type(v) is str and word_safe(v) for v in value):
            tokens.append(token(name, "w"))
            return " ".join(value).encode("utf-8")
        tokens.append(token(name, "l"))
        return json_text(value).encode("utf-8")
    if t is dict:
        tokens.append(token(name, "m"))
        return json_text(value).encode("utf-8")
    raise TypeError(f"{name}: {t.__name__} is not a storable value")  # validated before


# Column names and the int/float type tokens of field names, cached in plain dicts: the
# set of field names of a database is small, and these lookups run for every value saved.
_COLUMNS: dict[str, bytes] = {}
_INT_TOKENS: dict[str, str] = {}
_FLOAT_TOKENS: dict[str, str] = {}


def _remember(cache: dict[str, str], name: str, code: str) -> str:
    tok = token(name, code)
    if len(cache) < 100_000:
        cache[name] = tok
    return tok


def encode_record(record: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Columns for a validated record (plus :data:`TYPES_COLUMN` when needed).

    ``_types`` comes first, so a reader meets the types before the values
    (:func:`decode_dump` decodes in one pass).
    """
    columns: dict[bytes, bytes] = {}
    tokens: list[str] = []
    names = _COLUMNS
    for name, value in record.items():
        column = names.get(name)
        if column is None:
            column = name.encode("utf-8")
            if len(names) < 100_000:  # bounded: field names are data in free-form records
                names[name] = column
        t = type(value)
        if t is str and value:  # the common cases first
            columns[column] = value.encode("utf-8")
        elif t is int:
            columns[column] = str(value).encode("ascii")
            tokens.append(_INT_TOKENS.get(name) or _remember(_INT_TOKENS, name, "i"))
        elif t is float:
            columns[column] = float_text(value).encode("ascii")
            tokens.append(_FLOAT_TOKENS.get(name) or _remember(_FLOAT_TOKENS, name, "f"))
        else:
            columns[column] = _encode_value(name, value, tokens)
    if tokens:
        return {TYPES_COLUMN: " ".join(tokens).encode("utf-8"), **columns}
    return columns


def column_bytes(value: Any) -> bytes:
    """The column text of one top-level value (what a query compares against)."""
    return _encode_value("v", value, [])


def decode_text(raw: bytes) -> str:
    """A column without type information: UTF-8 text (bad bytes and NUL as U+FFFD)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "replace")
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text


def _decode_decimal(raw: bytes, exponent: int = 0) -> decimal.Decimal:
    value = decimal.Decimal(_exact_part(raw).decode("ascii"))
    if exponent <= 0:
        return value
    sign, digits, _ = value.as_tuple()
    coefficient = int("".join(map(str, digits)) or "0") // 10**exponent
    return decimal.Decimal((sign, tuple(int(d) for d in str(coefficient)), exponent))


def _decode_date(raw: bytes) -> datetime.date:
    return datetime.date(int(raw[0:4]), int(raw[4:6]), int(raw[6:8]))


def _decode_datetime(raw: bytes, tz: datetime.tzinfo | None) -> datetime.datetime:
    if len(raw) != 21 or raw[14:15] != b".":
        raise ValueError("not a datetime column")
    return datetime.datetime(
        int(raw[0:4]),
        int(raw[4:6]),
        int(raw[6:8]),
        int(raw[8:10]),
        int(raw[10:12]),
        int(raw[12:14]),
        int(raw[15:21]),
        tzinfo=tz,
    )


def _decode_float(raw: bytes) -> float:
    value = float(_exact_part(raw))
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a finite float")
    return value


def _decode_bool(raw: bytes) -> bool:
    if raw == _TRUE:
        return True
    if raw == _FALSE:
        return False
    raise ValueError("not a bool column")


def _decode_words(raw: bytes) -> list[str]:
    return raw.decode("utf-8").split(" ")


def _decode_list(raw: bytes) -> list[Any]:
    value = decode_tagged(json.loads(raw))
    if type(value) is not list:
        raise ValueError("not a list column")
    return value


def _decode_dict(raw: bytes) -> dict[str, Any]:
    value = decode_tagged(json.loads(raw))
    if type(value) is not dict:
        raise ValueError("not a dict column")
    return value


_DECODERS: Final[dict[str, Callable[[bytes], Any]]] = {
    "e": lambda raw: "",
    "E": lambda raw: b"",
    "i": int,
    "f": _decode_float,
    "b": _decode_bool,
    "y": bytes,
    "D": _decode_date,
    "t": lambda raw: _decode_datetime(raw, None),
    "z": lambda raw: _decode_datetime(raw, _UTC),
    "w": _decode_words,
    "l": _decode_list,
    "m": _decode_dict,
}
_KIND_OF_CODE: Final = {code: kind for kind, codes in KIND_CODES.items() for code in codes}


_Decoder = Callable[[bytes], Any]
#: What a typed column that does not parse as its type raises. Another client may rewrite
#: a column without updating ``_types``: what is there is text, so it loads as text
#: rather than failing the whole record.
_BAD_COLUMN: Final = (ValueError, TypeError, ArithmeticError, KeyError, IndexError)


@functools.lru_cache(maxsize=1024)
def _column_decoders(raw: bytes) -> dict[bytes, _Decoder]:
    """Column name -> decoder, from a ``_types`` column (cached: one per record shape)."""
    decoders: dict[bytes, _Decoder] = {}
    for column, (code, exponent) in _parse_types(raw).items():
        if code == "d":
            decoders[column] = functools.partial(_decode_decimal, exponent=exponent)
        else:
            decoders[column] = _DECODERS[code]
    return decoders


# Column name -> field name ("" for columns that are not field names). A plain dict: the
# set of column names of a database is small and this lookup runs for every column read.
_NAMES: dict[bytes, str] = {}
_NO_DECODERS: Final[dict[bytes, _Decoder]] = {}


def _name_of(column: bytes) -> str:
    name = _field_name(column) or ""
    if len(_NAMES) < 100_000:
        _NAMES[column] = name
    return name


def decode_record(columns: dict[bytes, bytes]) -> dict[str, Any]:
    """The record of a table record's columns (``columns`` is consumed)."""
    raw_types = columns.pop(TYPES_COLUMN, None)
    decoders = _column_decoders(raw_types) if raw_types else _NO_DECODERS
    names = _NAMES
    record: dict[str, Any] = {}
    for column, raw in columns.items():
        name = names.get(column)
        if name is None:
            name = _name_of(column)
        if not name:
            continue
        decode = decoders.get(column)
        if decode is not None:
            try:
                record[name] = decode(raw)
            except _BAD_COLUMN:
                record[name] = decode_text(raw)
            continue
        record[name] = decode_text(raw)
    return record


def decode_dump(buf: bytes) -> dict[str, Any]:
    """The record of a ``tcmapdump`` (see :meth:`TableDB.getdump`).

    Parsing the dump into a map first costs about 5% of a decode over a single
    fused pass, and keeps one decoder of columns.
    """
    return decode_record(_parse_map(buf))


def kind_of_code(code: str) -> str:
    """The value kind a type code stands for."""
    return _KIND_OF_CODE[code]


def tokens_of(names: Iterable[str], codes: Iterable[str]) -> list[str]:
    """Type tokens for every combination of field names and codes."""
    return [token(n, c) for n in names for c in codes]

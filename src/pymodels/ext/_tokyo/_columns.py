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
from collections.abc import Callable, Mapping
from math import isfinite
from typing import Any, Final
from urllib.parse import unquote

from ...backend import check_field_name, decode_tagged, encode_tagged
from ._format import VNUM1, parse_map, read_vnum, vnum

__all__ = [
    "ALL_CODES",
    "KIND_CODES",
    "TYPES_COLUMN",
    "date_text",
    "datetime_text",
    "decimal_text",
    "decode_dump",
    "decode_record",
    "dump_types",
    "encode_dump",
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
_WORDS: Final = re.compile(r"[^\x00-\x20,]+(?: [^\x00-\x20,]+)*")


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
    # Split where Tokyo splits tokens (bytes up to 0x20, commas), never with str.split():
    # that also splits at Unicode spaces (NBSP, U+2028, U+3000), which field names may
    # hold unescaped (see _escape).
    for tok in _TC_SEPARATORS.split(raw.decode("utf-8", "replace")):
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
#: The smallest: Tokyo's 64-bit integers reach -2**63 on the negative side.
SATURATED_MIN: Final = -(2**63)


def saturates(value: float | decimal.Decimal) -> bool:
    """Whether a float or Decimal lies outside the int64 range (see :func:`float_text`)."""
    return bool(value > SATURATED or value < SATURATED_MIN)


def _saturated(negative: bool, exact: str) -> str:
    return f"{SATURATED_MIN if negative else SATURATED} ({exact})"


def float_text(value: float) -> str:
    """A float as positional decimal text (exact: the digits of ``repr``).

    Outside the int64 range [-2**63, 2**63 - 1] the text is the nearer bound then the
    exact value in parentheses (``9223372036854775807 (1e+20)``): Tokyo's decimal index
    reads integer parts into a 64-bit integer and would misplace larger ones, and its
    number parser stops at the space, so both see the bound and keep their orders
    consistent. -2**63 itself is inside the range and written with all its digits, as the
    int -2**63 is: the two are equal, and Tokyo must find them equal.
    """
    text = repr(value)
    if value > SATURATED or value < SATURATED_MIN:
        return _saturated(value < 0, text)
    if value == SATURATED_MIN:
        return f"{SATURATED_MIN}.0"  # repr's digits would round it: -9223372036854776000
    if "e" in text or "E" in text:
        text = format(decimal.Decimal(text), "f")
    if "." not in text:
        text += ".0"
    return text


def decimal_text(value: decimal.Decimal) -> tuple[str, int]:
    """A Decimal as positional text, and the exponent to restore (0: none needed).

    Outside the int64 range, as :func:`float_text` (the parenthesised exact text keeps
    the exponent, so none is returned).
    """
    if saturates(value):
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
    """Spaced tagged JSON: every element a separate Tokyo token.

    Written with an explicit stack, not by recursion: a value nested as deep as the
    value domain allows must not meet Python's recursion limit (nor depend on how deep
    the caller's stack already is).
    """
    t = type(value)
    if t is list and value and all(type(v) in _SCALARS for v in value):
        return "[ " + ", ".join(map(_json_leaf, value)) + " ]"  # the common, flat case
    out: list[str] = []
    append = out.append
    # One frame per open list or dict: [its items, its closing text, whether an item
    # was written, whether it is a dict].
    stack: list[list[Any]] = []
    item = value
    while True:
        t = type(item)
        if t is list and item:
            append("[ ")
            stack.append([iter(item), " ]", False, False])
        elif t is dict and item:
            append("{ ")
            stack.append([iter(item.items()), " }", False, True])
        else:
            append(_json_leaf(item))
        while stack:
            frame = stack[-1]
            nxt: Any = next(frame[0], _END)
            if nxt is _END:
                append(frame[1])
                stack.pop()
                continue
            if frame[2]:
                append(", ")
            frame[2] = True
            if frame[3]:
                key, item = nxt
                append(_json_str(key))
                append(": ")
            else:
                item = nxt
            break
        else:
            return "".join(out)


_END: Final[Any] = object()
_SCALARS: Final = frozenset({str, int, float, bool})


def _json_leaf(value: Any) -> str:
    t = type(value)
    if t is str:
        return _json_str(value)
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return str(value)
    if t is float:
        return repr(value)
    if t is list:
        return "[]"
    if t is dict:
        return "{}"
    # Decimal, bytes, dates: a one-key tagged object holding a str.
    tagged = encode_tagged(value)
    if type(tagged) is not dict:
        raise TypeError(f"{t.__name__} is not a storable value")  # validated before
    ((tag, text),) = tagged.items()
    return f"{{ {_json_str(tag)}: {_json_str(text)} }}"


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
        return _encode_list(name, value, tokens)
    if t is dict:
        tokens.append(token(name, "m"))
        return json_text(value).encode("utf-8")
    raise TypeError(f"{name}: {t.__name__} is not a storable value")  # validated before


def _encode_list(name: str, value: list[Any], tokens: list[str]) -> bytes:
    if value:
        # A list of plain words (each a non-empty str without Tokyo separators) when the
        # words joined by single spaces hold just the joining spaces and no other
        # separator: one join and one match instead of a test per word. join raises for
        # elements that are not str (validated values hold no str subclasses).
        try:
            words = " ".join(value)
        except TypeError:
            pass
        else:
            if words.count(" ") == len(value) - 1 and _WORDS.fullmatch(words):
                tokens.append(token(name, "w"))
                return words.encode("utf-8")
    tokens.append(token(name, "l"))
    return json_text(value).encode("utf-8")


# Field names in dump form (size, then the column name) and the int/float type tokens of
# field names, cached in plain dicts: the set of field names of a database is small, and
# these lookups run for every value saved.
_HEADS: dict[str, bytes] = {}
_INT_TOKENS: dict[str, str] = {}
_FLOAT_TOKENS: dict[str, str] = {}
_TYPES_HEAD: Final = VNUM1[len(TYPES_COLUMN)] + TYPES_COLUMN
#: The whole _types column (name, size, text) in dump form, by its text.
_TYPES_PREFIXES: dict[str, bytes] = {}


def _head(name: str) -> bytes:
    column = name.encode("utf-8")
    head = _dump_size(len(column)) + column
    if len(_HEADS) < 100_000:  # bounded: field names are data in free-form records
        _HEADS[name] = head
    return head


def _dump_size(size: int) -> bytes:
    return VNUM1[size] if size < 128 else vnum(size)


def _remember(cache: dict[str, str], name: str, code: str) -> str:
    tok = token(name, code)
    if len(cache) < 100_000:
        cache[name] = tok
    return tok


def encode_dump(record: Mapping[str, Any]) -> bytes:
    """The columns of a validated record (plus :data:`TYPES_COLUMN` when needed), in
    ``tcmapdump`` form: what :meth:`TableDB.putdump` hands to Tokyo in one call.

    Written straight from the record: no column dict, and nothing the garbage collector
    tracks, is built per record. ``_types`` comes first, so a reader meets the types
    before the values (:func:`decode_dump` decodes in one pass).
    """
    parts: list[bytes] = []
    append = parts.append
    tokens: list[str] = []
    heads = _HEADS
    vnum1 = VNUM1
    for name, value in record.items():
        append(heads.get(name) or _head(name))
        t = type(value)
        if t is str and value:  # the common cases first
            data = value.encode("utf-8")
        elif t is int:
            data = b"%d" % value
            tokens.append(_INT_TOKENS.get(name) or _remember(_INT_TOKENS, name, "i"))
        elif t is float:
            text = repr(value)
            # Without an exponent repr is already positional (and below the saturation
            # bound of float_text, as is every float under 1e16).
            data = text.encode("ascii") if "e" not in text else float_text(value).encode("ascii")
            tokens.append(_FLOAT_TOKENS.get(name) or _remember(_FLOAT_TOKENS, name, "f"))
        elif t is list:
            data = _encode_list(name, value, tokens)
        else:
            data = _encode_value(name, value, tokens)
        size = len(data)
        append(vnum1[size] if size < 128 else vnum(size))
        append(data)
    if tokens:
        # Records of one shape share their _types column: made once per shape.
        types = " ".join(tokens)
        return (_TYPES_PREFIXES.get(types) or _types_prefix(types)) + b"".join(parts)
    return b"".join(parts)


def _types_prefix(types: str) -> bytes:
    raw = types.encode("utf-8")
    prefix = _TYPES_HEAD + _dump_size(len(raw)) + raw
    if len(_TYPES_PREFIXES) < 10_000:
        _TYPES_PREFIXES[types] = prefix
    return prefix


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
    try:
        value = float(raw)
    except ValueError:  # a saturated column (see float_text) ends with ")": never a float
        value = float(_exact_part(raw))
    if not isfinite(value):
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


#: The tags of tagged JSON (:mod:`pymodels.codec`) that stand for one value.
_TAGS: Final = frozenset({"$date", "$datetime", "$decimal", "$bytes"})


def _untag(obj: dict[str, Any]) -> Any:
    # json calls this for every object, innermost first: tagged values are decoded as
    # the parser meets them, with no recursive walk over the result (see json_text).
    if len(obj) == 1:
        ((tag, raw),) = obj.items()
        if tag in _TAGS and type(raw) is str:
            return decode_tagged(obj)
    return obj


# One decoder: json.loads(raw, object_hook=...) would build a new one per call.
_JSON: Final = json.JSONDecoder(object_hook=_untag)


def _load_json(raw: bytes) -> Any:
    return _JSON.decode(raw.decode("utf-8"))


def _decode_list(raw: bytes) -> list[Any]:
    value = _load_json(raw)
    if type(value) is not list:
        raise ValueError("not a list column")
    return value


def _decode_dict(raw: bytes) -> dict[str, Any]:
    value = _load_json(raw)
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


_Decoder = Callable[[bytes], Any]
#: One column of a :attr:`_Shape.layout`: the column's name in dump form (its size, then
#: the name: see :func:`_head`), that head's length, the field name and the decoder
#: (None: text).
_Step = tuple[bytes, int, str, "_Decoder | None"]
#: What a typed column that does not parse as its type raises. Another client may rewrite
#: a column without updating ``_types``: what is there is text, so it loads as text
#: rather than failing the whole record.
#: (RecursionError: JSON nested deeper than the parser's limit, which only another client
#: can write: pymodels refuses such values when they are saved.)
_BAD_COLUMN: Final = (
    ValueError,
    TypeError,
    ArithmeticError,
    KeyError,
    IndexError,
    RecursionError,
)


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


_NO_DECODERS: Final[dict[bytes, _Decoder]] = {}


def decode_record(columns: dict[bytes, bytes]) -> dict[str, Any]:
    """The record of a table record's columns (``columns`` is consumed)."""
    global _last_shape
    raw_types = columns.pop(TYPES_COLUMN, None)
    if not raw_types:
        shape = _UNTYPED
    else:
        # Records read one after another mostly share their _types column: one bytes
        # comparison then replaces the cache lookup (see decode_dump).
        last, shape = _last_shape
        if raw_types != last:
            shape = _shape(raw_types)
            _last_shape = raw_types, shape
    record: dict[str, Any] = {}
    for column, raw in columns.items():
        # decode_dump's loop over a dict: change them together.
        entry = shape.get(column)
        name, decode = shape.learn(column) if entry is None else entry
        if not name:
            continue
        if decode is None:
            # decode_text inlined for its common case: valid UTF-8 without NUL.
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                text = decode_text(raw)
            else:
                if "\x00" in text:
                    text = decode_text(raw)
            record[name] = text
            continue
        try:
            record[name] = decode(raw)
        except _BAD_COLUMN:
            record[name] = decode_text(raw)
    return record


def _size_at(buf: bytes, i: int) -> tuple[int, int]:
    """The size (a varint) at ``buf[i]`` and the index after it."""
    size = buf[i]
    return (size, i + 1) if size < 128 else read_vnum(buf, i)


def dump_types(buf: bytes) -> bytes | None:
    """The ``_types`` column of a record in ``tcmapdump`` form (None: it has none)."""
    if buf.startswith(_TYPES_HEAD):
        size, i = _size_at(buf, len(_TYPES_HEAD))
        return buf[i : i + size]
    if _TYPES_HEAD not in buf:
        # A column named _types would show as its size byte and name: there is none.
        return None
    return parse_map(buf).get(TYPES_COLUMN)


class _Shape(dict[bytes, tuple[str, "_Decoder | None"]]):
    """Column -> (field name, or "" for columns records leave out; decoder, or None for
    text) of the records sharing one ``_types`` column, learnt as columns are met.

    One lookup per column read instead of a name lookup and a decoder lookup.
    """

    __slots__ = ("_decoders", "layout", "patience")

    def __init__(self, decoders: dict[bytes, _Decoder]) -> None:
        super().__init__()
        self._decoders = decoders
        #: The shown columns of a record :func:`decode_dump` read with this shape, in its
        #: order (see :data:`_Step`): the next records mostly hold the same ones in the
        #: same order, or some of them. A guess that every read checks column by column,
        #: so any layout gives the same records: threads may replace it at will.
        self.layout: tuple[_Step, ...] = ()
        #: Reads that may still miss a column of the layout (or, with no layout, the
        #: reads until one is learnt): see decode_dump.
        self.patience = 1

    def learn(self, column: bytes) -> tuple[str, _Decoder | None]:
        """The entry of a column not met before (``get`` is the fast path)."""
        entry = (_field_name(column) or "", self._decoders.get(column))
        if len(self) < 512:  # bounded: column names are data in free-form records
            self[column] = entry
        return entry


_UNTYPED: Final = _Shape(_NO_DECODERS)


@functools.lru_cache(maxsize=1024)
def _shape(raw_types: bytes) -> _Shape:
    return _Shape(_column_decoders(raw_types))


#: The ``_types`` column :func:`decode_record` last met and its shape (one tuple, so
#: that threads always read a matching pair).
_last_shape: tuple[bytes, _Shape] = (b"", _UNTYPED)

#: The ``_types`` column last decoded, in dump form, and its shape: records read one
#: after another mostly share it, and one prefix test then replaces finding it. One
#: tuple, so that threads always read a matching pair.
_last_types: tuple[bytes, _Shape] = (_TYPES_HEAD + b"\x00", _UNTYPED)


def decode_dump(buf: bytes) -> dict[str, Any]:
    """The record of a ``tcmapdump`` (see :meth:`TableDB.getdump`), decoded in one pass.

    The pass reads columns straight out of the dump, with no column dict in between.
    It needs the types first, where :func:`encode_dump` writes them; a dump with
    ``_types`` elsewhere (another client's) is parsed into a map and decoded by
    :func:`decode_record`.

    Records of one shape mostly hold the same columns in the same order: the columns
    are first matched against the shape's :attr:`~_Shape.layout`, one prefix test per
    column in place of reading its name, slicing it out and looking it up (2.9 to 2.5 us
    for six fields). Columns the layout does not reach are read one by one after it.
    """
    global _last_types
    prefix, shape = _last_types
    if buf.startswith(prefix):
        i = len(prefix)
    elif buf.startswith(_TYPES_HEAD):
        size, i = _size_at(buf, len(_TYPES_HEAD))
        shape = _shape(buf[i : i + size]) if size else _UNTYPED
        i += size
        _last_types = buf[:i], shape
    else:
        i = 0
        shape = _UNTYPED
    first = i
    record: dict[str, Any] = {}
    # Each step decodes the column at i if it is the step's column (its head holds the
    # name's size, so a match is that column exactly) and is passed over otherwise: a
    # record lacking some of the layout's columns is still read by the layout alone.
    # Columns are decoded in the dump's order either way. This loop and the walk below
    # decode a value alike: change them together.
    skipped = 0
    for head, head_size, name, decode in shape.layout:
        if not buf.startswith(head, i):
            skipped += 1
            continue
        i += head_size
        size = buf[i]
        if size < 128:
            i += 1
        else:
            size, i = read_vnum(buf, i)
        raw = buf[i : i + size]
        i += size
        if decode is None:
            # decode_text inlined for its common case: valid UTF-8 without NUL.
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                text = decode_text(raw)
            else:
                if "\x00" in text:
                    text = decode_text(raw)
            record[name] = text
            continue
        try:
            record[name] = decode(raw)
        except _BAD_COLUMN:
            record[name] = decode_text(raw)
    end = len(buf)
    # Passing over more of the layout than was decoded counts as a miss (below): a layout
    # learnt from a wide record would otherwise cost every narrow one its length.
    if i >= end and skipped <= len(record):
        return record
    while i < end:
        # _size_at inlined twice: this loop runs per column of every record read.
        # _format.parse_map walks dumps the same way: change them together.
        size = buf[i]
        if size < 128:
            i += 1
        else:
            size, i = read_vnum(buf, i)
        column = buf[i : i + size]
        i += size
        size = buf[i]
        if size < 128:
            i += 1
        else:
            size, i = read_vnum(buf, i)
        raw = buf[i : i + size]
        i += size
        entry = shape.get(column)
        name, decode = shape.learn(column) if entry is None else entry
        if not name:
            if column == TYPES_COLUMN:
                return decode_record(parse_map(buf))
            continue
        if decode is None:
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                text = decode_text(raw)
            else:
                if "\x00" in text:
                    text = decode_text(raw)
            record[name] = text
            continue
        try:
            record[name] = decode(raw)
        except _BAD_COLUMN:
            record[name] = decode_text(raw)
    # A layout that keeps missing columns (records of many orders) costs more than it
    # saves: it is dropped, and learnt again from a record some reads later.
    shape.patience -= 1
    if shape.patience <= 0:
        if shape.layout:
            shape.layout = ()
            shape.patience = _REST
        else:
            shape.layout = _layout_of(buf, first, shape)
            shape.patience = _PATIENCE
    return record


#: Reads that may miss a column of a shape's layout before it is dropped.
_PATIENCE: Final = 4
#: Reads of a shape without a layout before one is learnt again.
_REST: Final = 64
#: The most steps a layout holds: each step a record lacks costs a prefix test.
_LAYOUT_STEPS: Final = 64


def _layout_of(buf: bytes, i: int, shape: _Shape) -> tuple[_Step, ...]:
    """The layout of the record ``buf`` from its columns at ``i`` on: every shown
    column (read already, so entered in ``shape``), at most :data:`_LAYOUT_STEPS`."""
    steps: list[_Step] = []
    end = len(buf)
    while i < end and len(steps) < _LAYOUT_STEPS:
        at = i
        size, i = _size_at(buf, i)
        column = buf[i : i + size]
        i += size
        head = buf[at:i]
        size, i = _size_at(buf, i)
        i += size
        entry = shape.get(column)
        if entry is not None and entry[0]:
            steps.append((head, len(head), *entry))
    return tuple(steps)

"""Values and conditions as a user types them: ``--where`` and CSV cells.

A value is read by the first rule that fits:

* ``"text"`` (double quotes, JSON escapes) or ``'text'`` is that string: quoting
  forces a string (``'"2024-01-01"'`` stays text);
* ``null``, ``true``, ``false``, integers (``-12``) and floats (``1.5``,
  ``2e3``, ``1.0``) are JSON's;
* ``2024-05-01`` is a date; ``2024-05-01T12:30``, ``2024-05-01 12:30:00.5``
  are naive datetimes, and with ``Z`` or ``+02:00`` aware ones;
* text starting with ``[`` or ``{`` is tagged JSON (``[1, 2]``,
  ``{"$decimal": "2.50"}``), as :mod:`pymodels.codec` writes it;
* anything else is the text itself (``FI``, ``Smith``, ``a b``).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Sequence
from typing import Any

from .. import codec
from ..conditions import Q, parse_key
from ..errors import InvalidQuery

__all__ = ["ALIENS", "parse_value", "where_conditions"]

_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
    r"(Z|[+-][0-9]{2}:?[0-9]{2})?"
)
_WORDS = {"null": None, "true": True, "false": False}


def parse_value(text: str) -> Any:
    """The value ``text`` stands for (rules in the module docstring)."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidQuery(f"{text}: not a JSON string ({e.msg})") from e
        if type(value) is not str:  # '"a" + "b"' parses as more than one string
            raise InvalidQuery(f"{text}: not one JSON string")
        return value
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1]
    if text in _WORDS:
        return _WORDS[text]
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if _DATE.fullmatch(text):
        return _iso(datetime.date.fromisoformat, text)
    if _DATETIME.fullmatch(text):
        return _iso(datetime.datetime.fromisoformat, text)
    if text[:1] in ("[", "{"):
        return codec.loads(text)
    return text


def _iso(parse: Any, text: str) -> Any:
    try:
        return parse(text)
    except ValueError as e:
        raise InvalidQuery(f"{text}: {e} (quote it to mean the text)") from e


#: Op names from Django and MongoDB, and how pymodels says each.
ALIENS: dict[str, str] = {
    "ne": "--where-not {path}={value}",
    "nin": "--where-not {path}__in={value}",
    "not": "--where-not {path}={value}",
    "eq": "--where {path}={value}",
    "exact": "--where {path}={value}",
    "iexact": "--where {path}__iequals={value}",
    "isnull": "--where {path}__exists=false (isnull=true) or {path}__exists=true",
    "regex": "--where {path}__matches={value}",
    "iregex": "--where {path}__imatches={value}",
    "all": "--where {path}__contains_all={value}",
    "range": "--where {path}__between={value}",
    "ge": "--where {path}__gte={value}",
    "le": "--where {path}__lte={value}",
    "search": "--where {path}__like={value}",
    "text": "--where {path}__like={value}",
    "size": "no size op: filter the output (pymodels has no list length lookup)",
    "elemMatch": "--where {path}__contains={value}",
}


def _lookup(item: str, option: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise InvalidQuery(f"{option} takes path__op=value, not {item!r}")
    parts = key.split("__")
    if len(parts) >= 2 and parts[-1] in ALIENS:
        path = "__".join(parts[:-1])
        how = ALIENS[parts[-1]].format(path=path, value=raw)
        raise InvalidQuery(
            f"lookup {key!r}: {parts[-1]!r} is not an op; pymodels says: {how} "
            f"(to reach a key named {parts[-1]!r} write {key}__equals)"
        )
    value = parse_value(raw)
    parse_key(key, value)  # the library's own checks: unknown ops, wrong value kinds
    return key, value


def where_conditions(where: Sequence[str], where_not: Sequence[str]) -> tuple[Any, ...]:
    """The conditions of ``--where`` and ``--where-not`` items, for ``Query.where``."""
    conditions: list[Any] = []
    for item in where:
        key, value = _lookup(item, "--where")
        conditions.append(Q(**{key: value}))
    for item in where_not:
        key, value = _lookup(item, "--where-not")
        conditions.append(~Q(**{key: value}))
    return tuple(conditions)

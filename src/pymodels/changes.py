"""Partial changes: what ``update()`` asks for, parsed, and applied to a record.

``storage.update(pk, **changes)`` and ``query.update(**changes)`` parse their
keywords with :func:`parse_changes` into :class:`Change` tuples (a saved
document as a value becomes its pk), which reach
a backend's ``_update_many`` hook; :func:`apply_changes` is the reference
semantics that the default hook (and any engine) follows.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from .errors import ValidationError
from .values import INT_MAX, INT_MIN, MISSING, Referable, check_field_name, validate_value

__all__ = ["Change", "apply_changes", "parse_changes"]


class Change(NamedTuple):
    """One partial change of ``update()``: set, unset or inc at a path."""

    path: tuple[str, ...]
    op: str  # "set", "unset" or "inc"
    value: Any


def parse_changes(changes: Mapping[str, Any]) -> list[Change]:
    """The keyword changes of ``update()`` (``f=v``, ``f__unset=True``, ``f__inc=n``), checked."""
    if not changes:
        raise ValidationError("update() needs at least one change")
    parsed: list[Change] = []
    for key, value in changes.items():
        parts = key.split("__")
        op = "set"
        if len(parts) > 1 and parts[-1] in ("unset", "inc", "set"):
            op = parts.pop()
        for i, part in enumerate(parts):
            check_field_name(part, "__".join(parts[:i]))
        if op == "set" and value is None:
            op = "unset"
        if op == "unset":
            if value not in (True, None):
                raise ValidationError(f"{key}: unset takes True", field=key)
            value = None
        elif op == "inc":
            if type(value) not in (int, float):
                raise ValidationError(f"{key}: inc takes an int or float", field=key)
            value = validate_value(value, key)
        else:
            # The value sits len(parts) levels down (a record is level 1).
            try:
                value = validate_value(value, key, len(parts))
            except ValidationError:
                # A saved document stands for its pk (a reference's stored
                # value): converted only here, so plain values pay nothing.
                converted = _documents_as_pks(key, value)
                if converted is value:
                    raise
                value = validate_value(converted, key, len(parts))
        parsed.append(Change(tuple(parts), op, value))
    return parsed


def _documents_as_pks(key: str, value: Any) -> Any:
    """``value`` with saved documents as their pks (``value`` itself when it holds none)."""
    if isinstance(value, Referable):
        if value.pk is None:
            raise ValidationError(
                f"{key}: the {type(value).__name__} given is not saved, so it has no pk to "
                "store; save it first",
                field=key,
            )
        return value.pk
    if type(value) is list and any(isinstance(v, Referable) for v in value):
        return [_documents_as_pks(key, v) for v in value]
    return value


def apply_changes(
    record: dict[str, Any], changes: list[Change], pk: str | None = None
) -> dict[str, Any]:
    """A copy of ``record`` with partial changes applied (the reference semantics).

    A change the record cannot take raises :class:`ValidationError` naming the
    field, and the record when ``pk`` is given (a query's update changes many).
    """
    prefix = "update" if pk is None else f"update of record {pk!r}"
    out = copy.deepcopy(record)
    for change in changes:
        *parents, leaf = change.path
        target: Any = out
        for i, part in enumerate(parents):
            nxt = target.get(part, MISSING)
            if nxt is MISSING:
                if change.op == "unset":
                    target = None
                    break
                nxt = target[part] = {}
            elif type(nxt) is not dict:
                where = "__".join(change.path[: i + 1])
                raise ValidationError(f"{prefix}: {where} is not a dict", field=where, pk=pk)
            target = nxt
        if target is None:
            continue
        key = "__".join(change.path)
        if change.op == "unset":
            target.pop(leaf, None)
        elif change.op == "inc":
            current = target.get(leaf, 0)
            if type(current) not in (int, float):
                raise ValidationError(f"{prefix}: {key} is not a number", field=key, pk=pk)
            result = current + change.value
            if type(result) is int and not INT_MIN <= result <= INT_MAX:
                raise ValidationError(
                    f"{prefix}: {key} would leave the int64 range", field=key, pk=pk
                )
            if type(result) is float and not math.isfinite(result):
                raise ValidationError(
                    f"{prefix}: {key} would overflow a float ({result})", field=key, pk=pk
                )
            target[leaf] = result
        else:
            target[leaf] = copy.deepcopy(change.value)
    return out

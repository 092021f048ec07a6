"""Where SQL's order is not the contract's, and the repair.

Both SQL backends order in the engine (``ORDER BY rank, value..., pk``). That
order is the contract's for every kind but lists and dicts, whose SQL form does
not sort element by element. The rows SQL may misplace are exactly those holding
a list or dict at an order key, and they form contiguous runs in the SQL order:
rows before the first of them are in place, and only the rest needs sorting in
Python. The query (``SQLQuery``) and the storage's short-page path
(``SQLStorage._select_page``) both decide with these functions.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

from ...backend import PK_ORDER, Item, OrderKey, get_path, sort_items
from .compiler import valid_path

__all__ = ["any_container", "holds_container", "order_paths", "repair_order", "settled_page"]


def holds_container(record: dict[str, Any], paths: Sequence[tuple[str, ...]]) -> bool:
    """Whether ``record`` holds a list or dict at one of ``paths``."""
    for path in paths:
        # One-part paths (the common case) without get_path's loop.
        value = record.get(path[0]) if len(path) == 1 else get_path(record, path)
        if type(value) is list or type(value) is dict:
            return True
    return False


def any_container(rows: list[Item], paths: Sequence[tuple[str, ...]]) -> bool:
    """Whether some row holds a list or dict at one of ``paths`` (SQL may misorder it)."""
    if len(paths) == 1 and len(paths[0]) == 1:
        # Ordered by one top-level field, the common case: one test per row.
        # A loop, not any() over a generator: this runs on every page a query reads.
        name = paths[0][0]
        for _, record in rows:
            t = type(record.get(name))
            if t is list or t is dict:
                return True
        return False
    return any(holds_container(record, paths) for _, record in rows)


@functools.lru_cache(maxsize=1024)
def order_paths(order: tuple[OrderKey, ...]) -> tuple[tuple[str, ...], ...]:
    """The paths of ``order`` that records can hold (where a list or dict may need repair)."""
    return tuple(k.path for k in order if valid_path(k.path))


def settled_page(rows: list[Item], order: tuple[OrderKey, ...]) -> list[Item] | None:
    """``rows``, a page the engine ordered by ``order``, or None where it may be wrong.

    A list or dict at an order key sorts by the contract's rules, not the engine's:
    the general path repairs that page. Pks are never lists or dicts.
    """
    if order is PK_ORDER:
        return rows
    paths = order_paths(order)
    if paths and any_container(rows, paths):
        return None
    return rows


def repair_order(
    rows: Iterator[Item],
    order: tuple[OrderKey, ...],
    paths: Sequence[tuple[str, ...]],
) -> Iterator[Item]:
    """``rows`` in the SQL order of ``order``, in the contract's: as they come up to the
    first row holding a list or dict at one of ``paths``, then the rest sorted."""
    for pk, record in rows:
        if holds_container(record, paths):
            rest = [(pk, record), *rows]
            yield from sort_items(rest, order)
            return
        yield pk, record

"""Queries over a Tokyo Cabinet table: the engine hooks of :class:`~pymodels.query.BaseQuery`.

Ordering goes to Tokyo only where its order provably equals the contract's:

* by pk alone (either direction): Tokyo sorts primary keys bytewise, and UTF-8 byte order
  is code point order;
* by one top-level field, when the condition pins that field to one kind whose column
  text sorts bytewise in value order (str, bytes, date, datetime) and thereby also
  excludes records lacking it (Tokyo puts those last in both directions). Tokyo's sort
  is not stable and has no pk tiebreak, so runs of equal values are re-sorted here, and
  a limited query also fetches every record equal to the last one it got (ties cut by
  the limit), then sorts that small set exactly.

Numbers never order in Tokyo: its number parser keeps 16 digits, so distinct values can
compare equal there. Everything else sorts in Python over the matching records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ...backend import BaseQuery, Compiled, Condition, OrderKey, sort_items
from ._binding import Cond, Order
from ._columns import decode_record, name_bytes
from ._compiler import Plan, TCCond, compile_condition, guaranteed_kind, pk_order_in_python

if TYPE_CHECKING:
    from ._storage import Storage

__all__ = ["Query"]

#: Kinds whose column text sorts bytewise in the contract's order within the kind.
_TEXT_ORDERED = frozenset({"str", "bytes", "date", "datetime", "datetime_tz"})
_BATCH = 1000


@dataclasses.dataclass(frozen=True)
class _OrderPlan:
    column: bytes  # b"": the primary key
    tc_order: int
    keys: tuple[OrderKey, ...]

    @property
    def by_pk(self) -> bool:
        return self.column == b""


_PK_ORDERS: dict[tuple[OrderKey, ...], _OrderPlan] = {}


class Query(BaseQuery[Any]):
    """A query compiled to Tokyo Cabinet's table query (see :mod:`._compiler`)."""

    storage: Storage

    # ------------------------------------------------------------- engine hooks

    def _compile(self, condition: Condition) -> Compiled:
        plan, residual = compile_condition(condition, self.storage._index_map())
        # No description here: explain() asks _engine_explain, which describes the plan.
        return Compiled(plan, residual)

    def _engine_order(self, order: tuple[OrderKey, ...]) -> bool:
        return self._order_plan(order) is not None

    def _order_plan(self, order: tuple[OrderKey, ...]) -> _OrderPlan | None:
        first = order[0]
        if first.is_pk:
            # The same few orders (pk, -pk) come every query: made once.
            oplan = _PK_ORDERS.get(order)
            if oplan is None:
                tc_order = Order.STRDESC if first.descending else Order.STRASC
                oplan = _OrderPlan(b"", tc_order, order)
                if len(_PK_ORDERS) < 64:
                    _PK_ORDERS[order] = oplan
            return oplan
        if len(order) != 2 or not order[1].is_pk or len(first.path) != 1:
            return None
        if self._compiled.native.checked:
            return None  # such plans are sorted in Python (see Storage._tc_search)
        if guaranteed_kind(self.condition, first.path[0]) not in _TEXT_ORDERED:
            return None
        tc_order = Order.STRDESC if first.descending else Order.STRASC
        return _OrderPlan(name_bytes(first.path[0]), tc_order, order)

    def _engine_fetch(
        self,
        native: Any,
        order: tuple[OrderKey, ...] | None,
        offset: int,
        limit: int | None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        plan: Plan = native
        storage = self.storage
        if plan.nothing:
            return
        oplan = self._order_plan(order) if order is not None else None
        by_pk = oplan is None or oplan.by_pk
        if plan.deferred is not None and limit is None and not offset and by_pk:
            # Every match is loaded: its kind gates are checked on the loaded record rather
            # than by Tokyo reading it once more.
            lean, gates = plan.deferred
            tc_order = None if oplan is None else (b"", oplan.tc_order)
            yield from storage._records(storage._tc_search(lean, tc_order), gates)
            return
        if oplan is None:
            keys = storage._tc_search(plan)
            stop = None if limit is None else offset + limit
            yield from storage._records(keys[offset:stop] if offset or stop else keys)
            return
        if oplan.by_pk:
            keys = storage._tc_search(
                plan, (b"", oplan.tc_order), -1 if limit is None else limit, offset
            )
            yield from storage._records(keys)
            return
        if limit is not None:
            yield from self._top(plan, oplan, offset, limit)
            return
        yield from self._ordered_stream(plan, oplan, offset)

    def _ordered_stream(
        self, plan: Plan, oplan: _OrderPlan, offset: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every match in order: Tokyo's order with runs of equal values sorted exactly."""
        storage = self.storage
        keys = storage._tc_search(plan, (oplan.column, oplan.tc_order))
        run: list[tuple[str, dict[str, Any]]] = []
        run_value: bytes | None = None
        skipped = 0
        for start in range(0, len(keys), _BATCH):
            batch = keys[start : start + _BATCH]
            for key, columns in zip(batch, storage._load_raw(batch), strict=True):
                if columns is None:
                    continue
                value = columns.get(oplan.column)
                if run and value != run_value:
                    for item in sort_items(run, oplan.keys):
                        if skipped < offset:
                            skipped += 1
                        else:
                            yield item
                    run = []
                run_value = value
                run.append((_decode_pk(key), decode_record(columns)))
        for item in sort_items(run, oplan.keys):
            if skipped < offset:
                skipped += 1
            else:
                yield item

    def _top(
        self, plan: Plan, oplan: _OrderPlan, offset: int, limit: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """A slice of the order: Tokyo's top records plus every tie of the last one."""
        storage = self.storage
        want = offset + limit
        if want == 0:
            return
        order = (oplan.column, oplan.tc_order)
        keys = storage._tc_search(plan, order, want)
        raw = storage._load_raw(keys)
        found = {k: c for k, c in zip(keys, raw, strict=True) if c is not None}
        if len(keys) == want and keys:
            last = raw[-1]
            boundary = None if last is None else last.get(oplan.column)
            if boundary is None or b"\x00" in boundary:
                # No way to name the boundary in a condition: take the whole order.
                items = list(self._ordered_stream(plan, oplan, 0))
                yield from items[offset:want]
                return
            tie = TCCond(oplan.column, Cond.STREQ, boundary)
            more = [k for k in storage._tc_search(plan, extra=tie) if k not in found]
            for key, columns in zip(more, storage._load_raw(more), strict=True):
                if columns is not None:
                    found[key] = columns
        items = [(_decode_pk(k), decode_record(c)) for k, c in found.items()]
        yield from sort_items(items, oplan.keys)[offset:want]

    def _engine_count(self, native: Any) -> int:
        return self.storage._tc_count(native)

    def _engine_delete(self, native: Any) -> int | None:
        return self.storage._tc_delete(native)

    def _engine_explain(self, compiled: Compiled, order: tuple[OrderKey, ...] | None) -> str:
        plan: Plan = compiled.native
        oplan = self._order_plan(order) if order is not None else None
        tc_order = None if oplan is None else (oplan.column, oplan.tc_order)
        lines = [plan.describe()]
        limit = -1
        skip = 0
        sliced_here = compiled.residual is None and self._after is None
        if oplan is not None and sliced_here:
            if self._limit is not None:
                limit = self._offset + self._limit if not oplan.by_pk else self._limit
            if oplan.by_pk:
                skip = self._offset
        blocks = 1 if plan.blocks is None else len(plan.blocks)
        if tc_order is not None and pk_order_in_python(blocks, tc_order, limit, skip):
            lines.append("order by pk: sorted in Python")
        elif tc_order is not None:
            column = tc_order[0].decode("utf-8", "replace") or '"" (the pk)'
            direction = "STRDESC" if tc_order[1] == Order.STRDESC else "STRASC"
            lines.append(f"tctdbqrysetorder: {column} {direction}")
        unsliced = not sliced_here or (self._limit is None and not self._offset)
        if plan.deferred is not None and unsliced and (oplan is None or oplan.by_pk):
            lean, gates = plan.deferred
            checked = " AND ".join(map(str, gates))
            lines.append(f"documents: {lean.describe()} (then checked in Python: {checked})")
        for i, hint in enumerate(self.storage._tc_hints(plan, tc_order, limit, skip)):
            label = "tokyo hint" if i == 0 else f"tokyo hint (query {i + 1})"
            lines.append(f"{label}: " + hint.replace("\n", "; "))
        return "\n  ".join(lines)


def _decode_pk(key: bytes) -> str:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key.decode("utf-8", "replace")

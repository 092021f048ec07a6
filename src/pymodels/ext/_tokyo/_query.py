"""Queries over a Tokyo table (a Cabinet file or a Tyrant server): the engine hooks of
:class:`~pymodels.query.BaseQuery`.

Ordering goes to Tokyo only where its order provably equals the contract's:

* by pk alone (either direction): Tokyo sorts primary keys bytewise, and UTF-8 byte order
  is code point order;
* by one top-level field, when the condition pins that field to one kind whose column
  text sorts bytewise in value order (str, bytes, date, datetime) and thereby also
  excludes records lacking it (Tokyo puts those last in both directions). Tokyo's sort
  is not stable and has no pk tiebreak, so runs of equal values are re-sorted here, and
  a limited query also fetches every record equal to the last one it got (ties cut by
  the limit), then sorts that small set exactly.

* by one top-level field the storage proves holds one kind in every record (see
  ``TokyoStorage._proved``): ints of magnitude below 2**62, which Tokyo's number parser
  reads exactly (``NUMASC``/``NUMDESC``), or str (bytewise). Ascending also needs every
  record to have the field, since the contract puts records lacking it first.

Other numbers never order in Tokyo: its number parser keeps 16 digits, so distinct
values can compare equal there. Everything else sorts in Python over the matching records.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ...backend import BaseQuery, Compiled, OrderKey
from ._columns import ALL_CODES, name_bytes
from ._compiler import OrderPlan, Plan, guaranteed_kind
from ._format import Order

if TYPE_CHECKING:
    from ._engine import TokyoStorage

__all__ = ["Query"]

#: Kinds whose column text sorts bytewise in the contract's order within the kind.
_TEXT_ORDERED = frozenset({"str", "bytes", "date", "datetime", "datetime_tz"})


#: Every type code but the empty str's: a field with none of these holds only str.
_NOT_STR = frozenset(c for c in ALL_CODES if c != "e")

_PK_ORDERS: dict[tuple[OrderKey, ...], OrderPlan] = {}


class Query(BaseQuery[Any]):
    """A query compiled to Tokyo's table query (see :mod:`._compiler`)."""

    storage: TokyoStorage

    # ------------------------------------------------------------- engine hooks

    def _engine_order(self, order: tuple[OrderKey, ...], native: Any) -> bool:
        oplan = self._order_plan(order, native)
        # Kept for _engine_fetch, which the query calls next with these same objects:
        # the plan is made once per run (and the run uses the plan this answer rests on).
        self._last_order_plan = (order, native, oplan)
        return oplan is not None

    def _order_plan(self, order: tuple[OrderKey, ...], plan: Plan) -> OrderPlan | None:
        first = order[0]
        if first.is_pk:
            # The same few orders (pk, -pk) come every query: made once.
            oplan = _PK_ORDERS.get(order)
            if oplan is None:
                tc_order = Order.STRDESC if first.descending else Order.STRASC
                oplan = OrderPlan(b"", tc_order, order)
                if len(_PK_ORDERS) < 64:
                    _PK_ORDERS[order] = oplan
            return oplan
        if len(order) != 2 or not order[1].is_pk or len(first.path) != 1:
            return None
        plan = self.storage._refined(plan)
        if plan.checked:
            return None  # such plans are sorted in Python (see Storage._tc_search)
        name = first.path[0]
        if guaranteed_kind(self.condition, name) in _TEXT_ORDERED:
            tc_order = Order.STRDESC if first.descending else Order.STRASC
            return OrderPlan(name_bytes(name), tc_order, order)
        # Tokyo puts records lacking the column last in both directions: the contract
        # puts them first ascending, so ascending needs every record to have it.
        proved = self.storage._proved
        if (first.descending or proved(("all", name))) and proved(("int", name)):
            tc_order = Order.NUMDESC if first.descending else Order.NUMASC
            return OrderPlan(name_bytes(name), tc_order, order)
        if (first.descending or proved(("all", name))) and proved(("none", name, _NOT_STR)):
            tc_order = Order.STRDESC if first.descending else Order.STRASC
            return OrderPlan(name_bytes(name), tc_order, order)
        return None

    def _engine_fetch(
        self,
        native: Any,
        order: tuple[OrderKey, ...] | None,
        offset: int,
        limit: int | None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        # The storage runs the plan in the order plan made here (or none).
        oplan = None
        if order is not None:
            last = self.__dict__.get("_last_order_plan")
            if last is not None and last[0] is order and last[1] is native:
                oplan = last[2]
            else:
                oplan = self._order_plan(order, native)
        return self.storage._select(native, oplan, offset, limit)

    def _engine_count(self, native: Any) -> int:
        return self.storage._count_where(native)

    def _engine_explain(
        self,
        compiled: Compiled,
        order: tuple[OrderKey, ...] | None,
        offset: int,
        limit: int | None,
    ) -> str:
        oplan = self._order_plan(order, compiled.native) if order is not None else None
        return self.storage._explain_select(compiled.native, oplan, offset, limit)

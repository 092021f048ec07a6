"""The query execution and index handling both Tokyo backends share, over a few hooks
each implements.

:class:`TokyoStorage` runs the shared query class's plans (:mod:`._query`,
:mod:`._compiler`): selection with Tokyo's order, exact ordering of ties, slices,
counts, deletes and ``explain()``; and it keeps the index bookkeeping both backends do
alike (one column per index, the kind a field's declared type suggests, no empty
values under a lexical or decimal index). A backend supplies the engine side: the
Cabinet backend through the C library, the Tyrant backend over the network.

What a backend must implement (under that heading below): ``_search`` (keys of
some condition blocks, one search or a metasearch), ``_records`` and ``_load_raw``
(records of keys), ``_count_block``, ``_delete_block`` and ``_delete_keys``, ``_hints``,
``_index_map``, ``_index_column``, ``_stored_index_kind`` and ``_count_empty``. What it
may override: ``_search_all`` (every key), ``_unordered_keys``, ``_proved``,
``_delete_all``, ``_deleting``, and the attributes ``_search_lock``, ``_indexes_lock``
and ``_engine_errors``.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import itertools
import os
import typing
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import unquote_to_bytes

from ...backend import (
    BATCH_SIZE,
    BaseStorage,
    Compiled,
    Condition,
    IndexSpec,
    Item,
    KeySorter,
    OpSupport,
    OrderKey,
    PyModelsError,
    declared_types,
    record_test,
    sort_items,
    spill,
)
from ._columns import TYPES_COLUMN, decode_record, name_bytes
from ._compiler import (
    INDEX_SERVES,
    Block,
    Fact,
    OrderPlan,
    Plan,
    PlanBlock,
    TCCond,
    compile_condition,
    gates_hold,
    pk_order_in_python,
    refine,
    refine_shape,
    shaped_lookup,
)
from ._format import Cond, Order

if TYPE_CHECKING:
    from ...backend import Document
    from ._compiler import _Template

__all__ = [
    "INDEX_SUFFIXES",
    "MAX_LIMIT",
    "OP_SUPPORT",
    "TokyoStorage",
    "decode_pk",
    "default_index_kind",
    "scan_index_files",
    "sliced",
]


class TokyoStorage(BaseStorage):
    """A storage over a Tokyo table: the Cabinet file directly, or a Tyrant server."""

    #: Keys an ordered slice asks for beyond the slice and the one key after it, so that
    #: ties of its last record are mostly found among them without a second search (see
    #: ``_top``; 0: none, else at least the slice's length). Worth it
    #: where reading a key costs little (the Cabinet file); a server reads and sends
    #: each one, so Tyrant asks for none and pays a second search only on a tie.
    _ties_ahead: ClassVar[int] = 64

    #: Whether an ordered slice without look-ahead (``_ties_ahead`` 0) first asks Tokyo
    #: without the plan's deferrable kind gates (see :attr:`~._compiler.Plan.deferred`)
    #: and checks them on the records it loads anyway (see ``_top``). Worth it where
    #: Tokyo reading each candidate to test its ``_types`` column costs a server's time
    #: (Tyrant); the Cabinet file keeps its gates in the search.
    _gates_on_loaded_top: ClassVar[bool] = False

    #: Refined templates of shaped lookups (see :meth:`_refined`), by shape: the
    #: template (None: refine each plan) and the facts it rests on, with their answers.
    _shape_refinements: dict[
        tuple[str, str, str, str], tuple[_Template | None, tuple[tuple[Fact, bool], ...]]
    ]

    #: Held around each read that takes several engine calls (a search and the records
    #: of its checked blocks, a count of several blocks, the hints of explain()): the
    #: Cabinet file's lock, so that no write of this process comes between them. Tyrant
    #: holds nothing: other clients write between any two requests anyway.
    _search_lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()

    #: Held while the index bookkeeping (:meth:`_index_map`) is read; a backend sets it
    #: when it opens (Cabinet: the file's lock; Tyrant: a lock of its own).
    _indexes_lock: contextlib.AbstractContextManager[Any]

    #: The engine's own errors, which those reads raise as :class:`PyModelsError` (see
    #: :meth:`_engine_error`): the C library's on Cabinet; none on Tyrant, whose client
    #: raises pymodels' errors itself.
    _engine_errors: ClassVar[tuple[type[Exception], ...]] = ()

    #: What Tokyo Cabinet aborts when it meets an empty value while building a lexical or
    #: decimal index (see :meth:`_refuse_empty_values`): the process holding the file.
    _aborted_by_empty_values: ClassVar[str] = "the process"

    # ------------------------------------------------- what a backend must implement

    def _index_map(self) -> Mapping[bytes, str]:
        """Indexed columns and their kinds (the compiler prefers indexed conditions)."""
        raise NotImplementedError

    def _search(
        self, blocks: Sequence[Block], order: tuple[bytes, int] | None, limit: int, skip: int
    ) -> list[bytes]:
        """Keys of the union of ``blocks`` (one search, or a metasearch for several) in
        ``order`` (column, :class:`~._format.Order`), skipped and limited by Tokyo.

        :meth:`_run` calls it with every pk order Tokyo cannot give already done in
        Python (see :func:`~._compiler.pk_order_in_python`).
        """
        raise NotImplementedError

    def _records(
        self, keys: list[bytes], gates: tuple[TCCond, ...] = ()
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(pk, record)`` of keys in batches, skipping keys deleted meanwhile and
        records failing ``gates`` (see :attr:`~._compiler.Plan.deferred`)."""
        raise NotImplementedError

    def _load_raw(self, keys: list[bytes]) -> list[dict[bytes, bytes] | None]:
        """Column maps of keys, aligned with them (None: missing)."""
        raise NotImplementedError

    def _count_block(self, conds: Block) -> int:
        """How many records one block of conditions selects (nothing else comes back)."""
        raise NotImplementedError

    def _delete_block(self, conds: Block) -> int:
        """Delete the records one block of conditions selects (in one engine call, under
        the engine's lock) and return how many."""
        raise NotImplementedError

    def _delete_keys(self, keys: list[bytes]) -> int:
        """Delete the records of ``keys`` and return how many there were."""
        raise NotImplementedError

    def _hints(
        self, blocks: Sequence[Block], order: tuple[bytes, int] | None, limit: int, skip: int
    ) -> list[str]:
        """Tokyo's own account of the query of ``blocks`` (runs it), for ``explain()``."""
        raise NotImplementedError

    def _index_column(self, col: bytes, kind: str | None, name: str) -> None:
        """Index column ``col`` (field ``name``) with ``kind`` (None: the kind of the
        index it has, else lexical), idempotently."""
        raise NotImplementedError

    def _stored_index_kind(self, col: bytes) -> str | None:
        """The kind of the index the database itself holds on ``col``, or None."""
        raise NotImplementedError

    def _count_empty(self, col: bytes) -> int:
        """How many records hold an empty value in column ``col``."""
        raise NotImplementedError

    # ------------------------------------------------- what a backend may override

    def _engine_error(self, operation: str, error: Exception) -> PyModelsError:
        """The error to raise for ``error``, one of :attr:`_engine_errors`, met in
        ``operation`` (needed where :attr:`_engine_errors` names any)."""
        raise NotImplementedError

    def _search_all(
        self, order: tuple[bytes, int] | None, limit: int, skip: int, extra: TCCond | None
    ) -> list[bytes]:
        """Every key (``extra``: the one condition), in ``order``, skipped and limited;
        the default is a search without conditions."""
        return self._run([()], order, limit, skip, extra)

    def _column_ordered_keys(self, plan: Plan, order: tuple[bytes, int]) -> Iterator[bytes]:
        """Every key the plan (without checked blocks) selects, in Tokyo's ``order`` of
        one column, for a stream; the default lists them (:meth:`_tc_search`), a backend
        may hand them out in bounded memory."""
        return iter(self._tc_search(plan, order))

    def _unordered_keys(self, plan: Plan) -> Generator[bytes, None, None] | None:
        """Every key the plan selects, in no order, listed in bounded memory; or None
        where the backend has no bounded way (then pk order lists and sorts them all).

        The caller consumes the iterator at once (or closes it), so it may hold a lock
        for its whole walk.
        """
        return None

    def _pk_ordered_keys(self, plan: Plan, descending: bool) -> Generator[bytes, None, None] | None:
        """Every key the plan selects, in pk order, listed in bounded memory by the engine
        itself; or None where the backend has no such way (then :meth:`_unordered_keys`).
        A plan with blocks checked in Python selects the keys whose records pass.
        """
        return None

    def _delete_all(self) -> int:
        """Delete every record and return how many there were."""
        total = self._count()
        self._clear()
        return total

    def _deleting(self) -> contextlib.AbstractContextManager[Any]:
        """Held around the deletes of one ``delete()`` of a query (see
        :meth:`_delete_where`); the default holds nothing."""
        return contextlib.nullcontext()

    def _proved(self, fact: Fact) -> bool:
        """Whether ``fact`` (see :data:`~._compiler.Fact`) holds in every record now.

        Only a backend that sees every write can keep such facts (Tokyo Cabinet, whose
        file no other process writes while this one has it open); the default proves
        nothing, which is always sound.
        """
        return False

    def _refined(self, plan: Plan) -> Plan:
        """``plan`` without what the proved facts make redundant (see
        :func:`~._compiler.refine`); done per run, as facts change with writes.

        A plan filled from a shaped lookup's template is filled from the shape's refined
        template instead, made once and made again when a fact it rests on changes.
        """
        origin = plan.origin
        if origin is None:
            return refine(plan, self._proved)
        template, operand = origin
        refined = self._shape_refinement(template)
        if refined is None:
            return refine(plan, self._proved)
        if refined is template:
            return plan
        return refined.fill(operand)

    def _shape_refinement(self, template: _Template) -> _Template | None:
        """The refined template of ``template``'s shape (see
        :func:`~._compiler.refine_shape`), None where each plan is refined itself."""
        shape = template.shape
        assert shape is not None
        cache = self.__dict__.get("_shape_refinements")
        if cache is None:
            cache = self._shape_refinements = {}
        entry = cache.get(shape)
        proved = self._proved
        if entry is not None:
            for fact, holds in entry[1]:
                if proved(fact) is not holds:
                    entry = None
                    break
        if entry is None:
            entry = refine_shape(shape, proved)
            if len(cache) < 256:
                cache[shape] = entry
        return entry[0]

    # ---------------------------------------------------------------- searches

    def _run(
        self,
        blocks: Sequence[Block],
        order: tuple[bytes, int] | None = None,
        limit: int = -1,
        skip: int = 0,
        extra: TCCond | None = None,
    ) -> list[bytes]:
        """Keys of the union of ``blocks`` (one search, or a metasearch for several),
        ordered and sliced; ``extra``: one more condition on every block."""
        if not blocks:
            return []
        if order is not None and pk_order_in_python(len(blocks), order, limit, skip):
            keys = self._run(blocks, extra=extra)
            keys.sort(reverse=order[1] == Order.STRDESC)
            return sliced(keys, limit, skip)
        if extra is not None:
            blocks = [(*b, extra) for b in blocks]
        return self._search(blocks, order, limit, skip)

    def _checked_keys(
        self, plan: Plan, extra: TCCond | None = None, exclude: set[bytes] | None = None
    ) -> list[bytes]:
        """Keys of the checked blocks whose records pass their check (none of ``exclude``,
        and each once)."""
        assert plan.blocks is not None
        found: list[bytes] = []
        seen = set() if exclude is None else set(exclude)
        for block in plan.blocks:
            if block.check is None:
                continue
            candidates = [k for k in self._run([block.conds], extra=extra) if k not in seen]
            for key in self._passing(iter(candidates), block.check):
                found.append(key)
                seen.add(key)
        return found

    def _tc_search(
        self,
        plan: Plan,
        order: tuple[bytes, int] | None = None,
        limit: int = -1,
        skip: int = 0,
        extra: TCCond | None = None,
    ) -> list[bytes]:
        """Primary keys the plan selects (``extra``: one more condition on every block),
        in ``order`` (column, :class:`~._format.Order`), skipped and limited.

        A plan with checked blocks takes no column order (the query never asks for one).
        """
        if plan.nothing:
            return []
        # try/except around the body rather than a wrapper: this runs once per query.
        try:
            with self._search_lock:
                if plan.blocks is None:
                    return self._search_all(order, limit, skip, extra)
                if not plan.checked:
                    return self._run([b.conds for b in plan.blocks], order, limit, skip, extra)
                assert order is None or order[0] == b"", "checked plans are not ordered by Tokyo"
                sure = self._run([b.conds for b in plan.blocks if b.check is None], extra=extra)
                exclude = None if plan.disjoint else set(sure)
                keys = sure + self._checked_keys(plan, extra, exclude)
                if order is not None:
                    keys.sort(reverse=order[1] == Order.STRDESC)
                return sliced(keys, limit, skip)
        except self._engine_errors as e:
            raise self._engine_error("search", e) from e

    def _block_keys(
        self, conds: Block, order: tuple[bytes, int], limit: int, skip: int
    ) -> list[bytes]:
        """Keys of one block of conditions, ordered, skipped and limited by Tokyo: what
        :meth:`_tc_search` does for a one-block plan without checks, without the plan."""
        try:
            with self._search_lock:
                return self._search([conds], order, limit, skip)
        except self._engine_errors as e:
            raise self._engine_error("search", e) from e

    # ------------------------------------------------------ shared query hooks

    def _compile_condition(self, condition: Condition) -> Compiled:
        plan, residual = compile_condition(condition, self._index_map())
        # No description here: explain() asks _explain_select, which describes the plan.
        return Compiled(plan, residual)

    def _select_page(
        self, condition: Condition, order: tuple[OrderKey, ...], offset: int, limit: int | None
    ) -> list[Item] | None:
        # The hot path of one-field lookups (the usual email=X) in pk order: first(), short
        # slices and short whole results, the plan straight from the shape's template,
        # refined once per shape (see _refined). Other queries, and lookups matching more
        # than a page, take the general path (None), which compiles once and streams.
        if len(order) != 1 or not order[0].is_pk or (limit is not None and limit > _PAGE_MAX):
            return None
        found = shaped_lookup(condition, self._index_map())
        if found is None:
            return None
        template, operand = found
        # As _select runs a pk-ordered slice (a slice never defers its kind gates). A
        # whole result is asked one key beyond a page: that key says it is longer.
        tc_order = (b"", Order.STRDESC if order[0].descending else Order.STRASC)
        tc_limit = _PAGE_MAX + 1 if limit is None else limit
        refined = self._shape_refinement(template)
        # Where every match is loaded anyway (no slice), its kind gates are checked on the
        # loaded records rather than by Tokyo reading each candidate, as _select does.
        gates: tuple[TCCond, ...] = ()
        if refined is not None:
            # The refined template's one block, filled: no plan is made.
            conds = refined.conds(operand)
            deferred = refined.plan.deferred
            if deferred is not None and limit is None and not offset:
                conds, gates = (conds[refined.at],), deferred[1]  # see _Template.fill
            keys = self._block_keys(conds, tc_order, tc_limit, offset)
        else:
            plan = self._refined(template.fill(operand))
            if plan.deferred is not None and limit is None and not offset:
                plan, gates = plan.deferred
            if plan.nothing:
                return []
            keys = self._tc_search(plan, tc_order, tc_limit, offset)
        if limit is None and len(keys) > _PAGE_MAX:
            return None  # a long result streams (one search of a page spent)
        return list(self._records(keys, gates))

    def _select(
        self, native: Any, order: Any, offset: int, limit: int | None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        # ``order``: the OrderPlan the query made of the order keys, or None.
        plan: Plan = self._refined(native)
        oplan: OrderPlan | None = order
        if plan.nothing:
            return
        by_pk = oplan is None or oplan.by_pk
        long = limit is None or offset + limit > spill.RUN_SIZE
        if by_pk and long:
            # In pk order, or in none (pk order is one, and the one a long result can be
            # listed in without a list of every key). Unsliced, every match is loaded: its
            # kind gates are checked on the loaded record (as below), not by Tokyo
            # reading it once more.
            lean, gates = (
                plan.deferred
                if plan.deferred is not None and limit is None and not offset
                else (plan, ())
            )
            stop = None if limit is None else offset + limit
            descending = oplan is not None and oplan.tc_order == Order.STRDESC
            pages = self._pk_ordered_keys(lean, descending)
            if pages is not None:
                with contextlib.closing(pages):
                    yield from self._streamed_records(itertools.islice(pages, offset, stop), gates)
                return
            walk = None if plan.checked else self._unordered_keys(lean)
            if walk is not None:
                yield from self._in_pk_order(walk, descending, offset, stop, gates)
                return
        if plan.deferred is not None and limit is None and not offset and by_pk:
            # Every match is loaded: its kind gates are checked on the loaded record rather
            # than by Tokyo reading it once more.
            lean, gates = plan.deferred
            tc_order = None if oplan is None else (b"", oplan.tc_order)
            yield from self._records(self._tc_search(lean, tc_order), gates)
            return
        if oplan is None:
            keys = self._tc_search(plan)
            stop = None if limit is None else offset + limit
            yield from self._records(keys[offset:stop] if offset or stop else keys)
            return
        if oplan.by_pk:
            keys = self._tc_search(
                plan, (b"", oplan.tc_order), -1 if limit is None else limit, offset
            )
            yield from self._records(keys)
            return
        if limit is not None:
            yield from self._top(plan, oplan, offset, limit)
            return
        yield from self._ordered_stream(plan, oplan, offset)

    def _in_pk_order(
        self,
        walk: Generator[bytes, None, None],
        descending: bool,
        offset: int,
        stop: int | None,
        gates: tuple[TCCond, ...] = (),
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """The walked keys' records in pk order (``[offset:stop]``), holding no list of
        every key: an external merge sort (:mod:`pymodels.spill`), records loaded in batches
        as the merge reaches them (one deleted meanwhile, or failing ``gates``, is
        skipped: only unsliced walks have gates). Tokyo compares
        pks bytewise, as Python compares bytes, so the order is Tokyo's own.
        """
        with KeySorter[bytes]("the pks of a query") as sorter:
            ordered: Iterable[bytes]
            with contextlib.closing(walk):
                ordered = sorter.sort(walk, descending=descending, stop=stop)
            yield from self._streamed_records(itertools.islice(ordered, offset, stop), gates)

    def _streamed_records(
        self, keys: Iterator[bytes], gates: tuple[TCCond, ...] = ()
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """The records of a stream of keys, loaded :data:`BATCH_SIZE` at a time (see
        :meth:`_records`), holding no more than a batch of keys."""
        while batch := list(itertools.islice(keys, BATCH_SIZE)):
            yield from self._records(batch, gates)

    def _passing(self, keys: Iterator[bytes], check: Condition) -> Generator[bytes, None, None]:
        """The keys among ``keys`` whose records pass ``check``, in their order, the
        records loaded :data:`BATCH_SIZE` at a time (a record deleted meanwhile is left
        out), holding no more than a batch of records."""
        test = record_test(check)
        while batch := list(itertools.islice(keys, BATCH_SIZE)):
            for key, columns in zip(batch, self._load_raw(batch), strict=True):
                if columns is not None and test(decode_record(columns)):
                    yield key

    def _ordered_stream(
        self, plan: Plan, oplan: OrderPlan, offset: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every match in order: Tokyo's order with runs of equal values sorted exactly."""
        keys = self._column_ordered_keys(plan, (oplan.column, oplan.tc_order))
        run: list[tuple[str, dict[str, Any]]] = []
        run_value: bytes | None = None
        skipped = 0
        while batch := list(itertools.islice(keys, BATCH_SIZE)):
            for key, columns in zip(batch, self._load_raw(batch), strict=True):
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
                run.append((decode_pk(key), decode_record(columns)))
        for item in sort_items(run, oplan.keys):
            if skipped < offset:
                skipped += 1
            else:
                yield item

    def _top(
        self, plan: Plan, oplan: OrderPlan, offset: int, limit: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """A slice of the order: Tokyo's top records, and the ties of the last one in pk
        order.

        Tokyo reads every match to sort it whatever the limit, so it is asked for some
        keys beyond the slice (a partial sort all the same). Records of equal value are
        adjacent in its order: when the record after the slice differs from the last of
        the slice, no tie crosses the cut and the slice is complete (sorted exactly here,
        as Tokyo's sort has no pk tiebreak). Otherwise the records before the boundary
        value are kept and the rest of the slice are the boundary's ties in pk order:
        from the keys at hand when the run of ties ends among them, else from a search
        for the ties, sorted by key alone. Each record is decoded once.
        """
        want = offset + limit
        if want == 0:
            return
        if want >= MAX_LIMIT // 2:
            # Beyond what Tokyo's limit (a C int) holds, and beyond any table: no limit.
            yield from itertools.islice(self._ordered_stream(plan, oplan, offset), limit)
            return
        col = oplan.column
        # One key past the slice tells whether a tie crosses the cut; the look-ahead, if
        # any, is at least the slice's length.
        fetch = want + 1 + (max(want, self._ties_ahead) if self._ties_ahead else 0)
        keys, raw = self._top_keys(plan, (col, oplan.tc_order), fetch, want + 1)
        if any(c is None for c in raw):
            # Deleted meanwhile: the top is short of what the order holds.
            yield from list(self._ordered_stream(plan, oplan, 0))[offset:want]
            return
        found = typing.cast("list[dict[bytes, bytes]]", raw)
        if len(keys) <= want or found[want].get(col) != found[want - 1].get(col):
            items = [
                (decode_pk(k), decode_record(c))
                for k, c in zip(keys[:want], found[:want], strict=True)
            ]
            yield from _sort_top(items, oplan.keys)[offset:want]
            return
        boundary = found[want - 1].get(col)
        if boundary is not None and b"\x00" in boundary:
            # Distinct values may share such a text (the empty str and "\x00"), and no
            # condition can name it: take the whole order, sorted exactly.
            yield from list(self._ordered_stream(plan, oplan, 0))[offset:want]
            return
        first = next(i for i, c in enumerate(found) if c.get(col) == boundary)
        head = [
            (decode_pk(k), decode_record(c))
            for k, c in zip(keys[:first], found[:first], strict=True)
        ]
        items = _sort_top(head, oplan.keys)
        descending = oplan.keys[-1].descending
        end = want + 1
        for columns in self._load_raw(keys[end:]):
            if columns is None:
                yield from list(self._ordered_stream(plan, oplan, 0))[offset:want]
                return
            if columns.get(col) != boundary:
                break
            end += 1
        if end < len(keys) or len(keys) < fetch:
            ties = sorted(keys[first:end], reverse=descending)[: want - first]
        else:
            ties = self._tc_search(
                plan,
                (b"", Order.STRDESC if descending else Order.STRASC),
                want - first,
                extra=self._tie_condition(plan, col, boundary, oplan.numeric),
            )
        items.extend(self._records(ties))
        yield from items[offset:want]

    def _top_keys(
        self, plan: Plan, order: tuple[bytes, int], fetch: int, load: int
    ) -> tuple[list[bytes], list[dict[bytes, bytes] | None]]:
        """The first ``fetch`` keys of ``plan`` in ``order`` and the columns of the first
        ``load`` of them (None: deleted meanwhile).

        With :attr:`_gates_on_loaded_top` and no look-ahead, Tokyo is first asked
        without the plan's deferrable kind gates (an index then answers alone, reading
        no record) and the gates are checked on the loaded records, exactly as Tokyo
        tests them (:func:`~._compiler.gates_hold`): when all pass, those keys are the
        plan's first ones too (the gates only remove records from the lean plan's
        order). A record of another kind among them sends the query again with its
        gates. Whatever other clients write meanwhile, every record kept passed the
        gates as loaded.
        """
        deferred = plan.deferred
        if self._gates_on_loaded_top and deferred is not None and fetch == load:
            lean, gates = deferred
            keys = self._tc_search(lean, order, fetch)
            raw = self._load_raw(keys)
            # Records mostly share their _types column: each distinct one checked once.
            types = {c.get(TYPES_COLUMN) for c in raw if c is not None}
            if all(gates_hold(gates, t) for t in types):
                return keys, raw
        keys = self._tc_search(plan, order, fetch)
        return keys, self._load_raw(keys[:load])

    def _tie_condition(self, plan: Plan, col: bytes, value: bytes | None, numeric: bool) -> TCCond:
        """The condition selecting the records whose ``col`` is ``value`` (None: lacking it).

        Where the plan's first block already has a condition an index serves, Tokyo reads
        just those records anyway: testing this one on them beats walking this column's
        index for every record of that value (Tokyo would build a set of all of them).
        """
        if value is None:
            return TCCond(col, Cond.STRRX, b"", negate=True)
        indexes = self._index_map()
        served = plan.blocks is not None and any(
            c.op in INDEX_SERVES.get(indexes.get(c.col, ""), ()) and not c.negate and not c.noidx
            for c in plan.blocks[0].conds
        )
        return TCCond(col, Cond.NUMEQ if numeric else Cond.STREQ, value, noidx=served)

    def _explain_select(self, native: Any, order: Any, offset: int, limit: int | None) -> str:
        # ``order``: as for _select; ``offset``/``limit``: the slice Tokyo runs, if any.
        plan: Plan = self._refined(native)
        oplan: OrderPlan | None = order
        tc_order = None if oplan is None else (oplan.column, oplan.tc_order)
        lines = [plan.describe()]
        tc_limit = -1
        skip = 0
        if oplan is not None:
            if limit is not None:
                tc_limit = offset + limit if not oplan.by_pk else limit
            if oplan.by_pk:
                skip = offset
        blocks = 1 if plan.blocks is None else len(plan.blocks)
        if tc_order is not None and pk_order_in_python(blocks, tc_order, tc_limit, skip):
            lines.append("order by pk: sorted in Python")
        elif tc_order is not None:
            column = tc_order[0].decode("utf-8", "replace") or '"" (the pk)'
            direction = Order(tc_order[1]).name
            lines.append(f"tctdbqrysetorder: {column} {direction}")
        unsliced = limit is None and not offset
        hinted = plan
        if plan.deferred is not None and unsliced and (oplan is None or oplan.by_pk):
            lean, gates = plan.deferred
            checked = " AND ".join(map(str, gates))
            lines.append(f"documents: {lean.describe()} (then checked in Python: {checked})")
        elif (
            plan.deferred is not None
            and oplan is not None
            and not oplan.by_pk
            and limit is not None
            and self._gates_on_loaded_top
            and not self._ties_ahead
        ):
            # As _top_keys runs it: Tokyo's part without the gates, one key past the slice.
            hinted, gates = plan.deferred
            checked = " AND ".join(map(str, gates))
            tc_limit += 1
            lines.append(
                f"top: {hinted.describe()} (then checked in Python on the loaded records: "
                f"{checked}; the query with them runs if one fails)"
            )
        for i, hint in enumerate(self._tc_hints(hinted, tc_order, tc_limit, skip)):
            label = "tokyo hint" if i == 0 else f"tokyo hint (query {i + 1})"
            lines.append(f"{label}: " + hint.replace("\n", "; "))
        return "\n  ".join(lines)

    def _count_where(self, native: Any) -> int:
        plan: Plan = native
        if plan.nothing:
            return 0
        if plan.blocks is None:
            return self._count()
        try:
            with self._search_lock:
                if plan.checked and not plan.disjoint:
                    return self._count_union(plan.blocks)
                sure = [b for b in plan.blocks if b.check is None]
                total = 0
                if len(sure) == 1 or (sure and plan.disjoint):
                    # One count per block, nothing but the number comes back.
                    for block in sure:
                        total += self._count_block(block.conds)
                elif sure:
                    total += self._count_union(sure)
                if plan.checked:
                    total += self._count_checked(plan)
                return total
        except self._engine_errors as e:
            raise self._engine_error("search", e) from e

    def _count_union(self, blocks: Sequence[PlanBlock]) -> int:
        """How many records the union of ``blocks`` holds, where they may overlap.

        A metasearch's ``count`` is the size of its last query, not of the union, so the
        union's keys are listed. (Counting by inclusion and exclusion, every block's
        count minus every pair's and so on, sends back only numbers but was slower here:
        the pairs' queries read records where the listing reads only indexes.) The
        default lists them all at once; a backend may list them in bounded pages.
        """
        if any(b.check is not None for b in blocks):
            return len(self._tc_search(Plan(tuple(blocks))))
        return len(self._run([b.conds for b in blocks]))

    def _count_checked(self, plan: Plan) -> int:
        """How many records the checked blocks of ``plan`` hold that pass their checks,
        where no record is in two blocks; the default lists them all at once."""
        return len(self._checked_keys(plan))

    def _delete_where(self, native: Any) -> int | None:
        plan: Plan = native
        if plan.nothing:
            return 0
        if plan.blocks is None:
            return self._delete_all()
        with self._deleting():
            # Checked records are found before anything is deleted; each exact block goes
            # with one engine call (a record deleted by an earlier block is not found
            # again), which reports how many it took.
            checked = self._checked_keys(plan) if plan.checked else []
            total = 0
            for block in plan.blocks:
                if block.check is None:
                    total += self._delete_block(block.conds)
            if checked:
                total += self._delete_keys(checked)
        return total

    def _tc_hints(
        self, plan: Plan, order: tuple[bytes, int] | None, limit: int, skip: int
    ) -> list[str]:
        """Tokyo's own account of the plan's queries, for ``explain()`` (runs them)."""
        if plan.nothing or (plan.everything and order is None):
            return []
        blocks = [()] if plan.blocks is None else [b.conds for b in plan.blocks]
        if order is not None and pk_order_in_python(len(blocks), order, limit, skip):
            order, limit, skip = None, -1, 0  # as _run does
        try:
            with self._search_lock:
                return self._hints(blocks, order, limit, skip)
        except self._engine_errors as e:
            raise self._engine_error("search", e) from e

    # ----------------------------------------------------------------- indexes

    def _create_index(self, spec: IndexSpec) -> None:
        (key,) = spec.keys
        if len(key.path) > 1:
            # Tokyo indexes whole columns; a nested path lives inside a JSON column.
            return
        self._index_column(name_bytes(key.path[0]), spec.kind, key.path[0])

    def _has_index(self, spec: IndexSpec) -> bool:
        key = spec.keys[0]
        if len(spec.keys) != 1 or len(key.path) != 1:
            return False
        kind = self._stored_index_kind(name_bytes(key.path[0]))
        return kind is not None and (spec.kind is None or spec.kind == kind)

    def _index_kind(self, doc_class: type[Document], fields: str | Sequence[str]) -> str:
        # The kind that fits the field's declared type: decimal for numbers, dates and
        # datetimes, token for lists, lexical otherwise. (A compound entry arrives as
        # its first field: Tokyo has no compound indexes.)
        first = fields if isinstance(fields, str) else fields[0]
        return default_index_kind(doc_class, first.lstrip("-"))

    def index_kinds(self) -> dict[str, str]:
        """The indexed columns and their kinds: on Tokyo Cabinet the file's; on Tokyo
        Tyrant those this storage knows of (the ones it made, and those beside the
        served file when the server runs on this machine)."""
        with self._indexes_lock:
            return {k.decode("utf-8", "replace"): v for k, v in self._index_map().items()}

    def _indexes(self) -> list[IndexSpec]:
        return [
            IndexSpec((OrderKey((name,)),), False, kind)
            for name, kind in sorted(self.index_kinds().items())
        ]

    def _refuse_empty_values(self, col: bytes, kind: str) -> None:
        """Before building a ``kind`` index on ``col``: refuse where records hold an empty
        value there and the kind is lexical or decimal.

        Tokyo Cabinet 1.4.48 aborts (a failed C assertion) when it meets an empty value
        while building such an index: the process holding the file, which for Tyrant
        is the server. pymodels never writes one; other clients may have.
        """
        if kind not in ("lexical", "decimal"):
            return
        empty = self._count_empty(col)
        if empty:
            raise PyModelsError(
                f"cannot build a lexical or decimal index on {col.decode('utf-8', 'replace')!r}: "
                f"{empty} records (written by another client) hold an empty value there, which "
                f"makes Tokyo Cabinet abort {self._aborted_by_empty_values}; rewrite them or use "
                "a token index"
            )


#: Types whose values order within their kind as Python orders them (sort_key is the
#: kind's rank, then the value): a slice of one of these needs no sort key to check.
_PLAIN_ORDERED: Final = frozenset({str, bytes, int, datetime.date})


def _sort_top(items: list[Item], keys: tuple[OrderKey, ...]) -> list[Item]:
    """``sort_items(items, keys)`` for the records of an ordered slice, which Tokyo's
    order mostly gives sorted already: when ``keys`` are one top-level field then the
    pk, and every value there has one type of :data:`_PLAIN_ORDERED`, a check that each
    pair of neighbours is in order (by value, then by pk) replaces the sort."""
    if len(items) < 2:
        return items
    if len(keys) != 2 or len(keys[0].path) != 1 or not keys[1].is_pk:
        return sort_items(items, keys)
    name = keys[0].path[0]
    values: list[Any] = [record.get(name) for _, record in items]
    kind = type(values[0])
    if kind not in _PLAIN_ORDERED or any(type(v) is not kind for v in values):
        return sort_items(items, keys)
    descending, pk_descending = keys[0].descending, keys[1].descending
    before, pk = values[0], items[0][0]
    for (next_pk, _), value in zip(items[1:], values[1:], strict=True):
        if value == before:
            if (next_pk > pk) if pk_descending else (next_pk < pk):
                return sort_items(items, keys)
        elif (value > before) if descending else (value < before):
            return sort_items(items, keys)
        before, pk = value, next_pk
    return items


#: The longest slice or whole result :meth:`TokyoStorage._select_page` serves (longer
#: ones stream).
_PAGE_MAX: Final = 1000

#: Tokyo's query limit is a C int.
MAX_LIMIT: Final = 2**31 - 2


def sliced(keys: list[bytes], limit: int, skip: int) -> list[bytes]:
    """``keys`` skipped and limited as Tokyo does (``limit`` -1: no limit)."""
    stop = None if limit < 0 else skip + limit
    return keys[skip:stop] if skip or stop is not None else keys


def decode_pk(key: bytes) -> str:
    """A key as a pk (keys other clients wrote that are not UTF-8 get U+FFFD)."""
    # Keys other clients wrote may not be UTF-8; such records still list and count.
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key.decode("utf-8", "replace")


#: Declared types whose values Tokyo compares as numbers (dates and datetimes as digits).
_NUMERIC_TYPES: Final = (int, float, decimal.Decimal, datetime.date, datetime.datetime)


def default_index_kind(doc_class: type[Document], field: str) -> str:
    """The index kind that fits a declared field: decimal for numbers, dates and
    datetimes, token for lists, lexical otherwise."""
    options = declared_types(doc_class, field)
    if options is None:
        return "lexical"
    if (
        options
        and all(isinstance(o, type) and issubclass(o, _NUMERIC_TYPES) for o in options)
        and not any(o is bool for o in options)
    ):
        return "decimal"
    if options and all(typing.get_origin(o) is list or o is list for o in options):
        return "token"
    return "lexical"


#: How the shared compiler decides each lookup (``Features.ops`` of both backends: the
#: same compiler runs every query on the same file). An op is "native" only where Tokyo
#: decides it exactly for every value; "prefilter" where it does for most values but
#: re-checks some in Python (docs/tokyo_cabinet.md lists which); "python" where Tokyo
#: only narrows to records whose field has the right kind.
OP_SUPPORT: Final[Mapping[str, OpSupport]] = {
    "equals": "prefilter",  # exact except dicts, lists of numbers, bytes holding NUL
    "exists": "native",
    "gt": "prefilter",  # dates exact; numbers, datetimes: bound ties checked; str: python
    "gte": "prefilter",
    "lt": "prefilter",
    "lte": "prefilter",
    "between": "prefilter",
    "in": "prefilter",  # as equals
    "contains": "prefilter",
    "contains_all": "prefilter",
    "contains_any": "prefilter",
    "startswith": "native",
    "endswith": "native",
    "iequals": "prefilter",  # exact except values holding a Greek sigma
    "icontains": "prefilter",
    "istartswith": "prefilter",
    "iendswith": "prefilter",
    "matches": "python",
    "imatches": "python",
    "year": "native",
    "month": "native",
    "day": "native",
    "like": "prefilter",
}

#: Index kinds by the suffix of their index files (``f.tct.idx.<column>.lex``).
INDEX_SUFFIXES: Final = {"lex": "lexical", "dec": "decimal", "tok": "token", "qgr": "qgram"}


def scan_index_files(directory: str, base: str) -> dict[bytes, str]:
    """Indexed columns of the table file ``base`` in ``directory`` and their kinds, from
    the index files Tokyo keeps beside it (none where the folder cannot be listed)."""
    prefix = base + ".idx."
    found: dict[bytes, str] = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return found
    for name in names:
        if not name.startswith(prefix):
            continue
        column, _, suffix = name[len(prefix) :].rpartition(".")
        if suffix in INDEX_SUFFIXES and column:
            found[unquote_to_bytes(column)] = INDEX_SUFFIXES[suffix]
    return found

"""Condition trees compiled to Tokyo Cabinet table queries (``tctdbqry*``).

A compiled condition is a :class:`Plan`: a union of *blocks*, each block a list of Tokyo
conditions that must all hold (one ``TDBQRY``); several blocks run as one
``tctdbmetasearch`` union. Every lookup compiles to blocks that are either *exact* (the
records Tokyo returns are exactly the matches) or a *superset* (a prefilter); the parts
that are not exact stay in a Python residual that the executor checks record by record.

Why most lookups carry a *kind gate*: Tokyo compares text, so ``age NUMEQ 7`` also
matches a str ``"7"``, a Decimal ``7`` or a bool stored elsewhere under ``age``. Each
block therefore also tests the field's type token in the ``_types`` column (see
:mod:`._columns`), which makes equality, prefixes and date ranges exact inside the engine.

Soundness rules the compiler keeps:

* ``And``: the product of the children's blocks; inexact children go to the residual.
* ``Or``: the union of the children's blocks (a metasearch); exact only if every child is.
* ``Not``: pushed down to lookups (De Morgan). A negated lookup runs in the engine only
  when the lookup is exact: a superset's complement is not a superset of the complement.
  Tokyo's negated conditions pass records that lack the column, which is exactly the
  contract's two-valued logic.
* Regular expressions are built only from literals, alternations and ASCII brackets:
  glibc's regex engine follows the process locale (``.`` and case folding change with
  ``LC_CTYPE``), and these constructs mean the same in every locale.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple
from urllib.parse import unquote

from ...backend import And, Condition, Lookup, Not, Or, OrderKey, kind_of
from ._columns import (
    ALL_CODES,
    KIND_CODES,
    TYPES_COLUMN,
    date_text,
    datetime_text,
    decimal_text,
    float_text,
    json_number_forms,
    json_text,
    name_bytes,
    number_forms,
    saturates,
    tc_tokens,
    token,
    word_safe,
)
from ._format import Cond, Order

__all__ = [
    "INDEX_SERVES",
    "Plan",
    "TCCond",
    "compile_condition",
    "gate_field",
    "gates_hold",
    "guaranteed_kind",
    "pk_order_in_python",
    "refine",
    "refine_shape",
    "shaped_lookup",
]

#: At most this many blocks (queries of one metasearch) per plan; beyond, Python filters.
MAX_BLOCKS: Final = 16
#: Numbers at or beyond this magnitude are not sent to Tokyo's NUM* operators: its parser
#: keeps integer parts exactly only below 2**64 (a long double), and this bound keeps
#: every superset argument well inside that.
NUM_LIMIT: Final = 2**62

_OP_NAMES: Final = {int(c): c.name for c in Cond if c < Cond.NEGATE}


class TCCond(NamedTuple):
    """One Tokyo condition: column (``b""`` is the pk), operator, operand, negation.

    A named tuple: plans build many of these per query, and tuples are cheap to make,
    hash and compare.
    """

    col: bytes
    op: int
    expr: bytes
    negate: bool = False
    #: Keep Tokyo from answering this condition from an index (``TDBQCNOIDX``).
    noidx: bool = False

    def negated(self) -> TCCond:
        """The same condition with the negation flipped."""
        return TCCond(self.col, self.op, self.expr, not self.negate, self.noidx)

    def __str__(self) -> str:
        col = self.col.decode("utf-8", "replace") or '""'
        expr = self.expr.decode("utf-8", "replace")
        flags = ("!" if self.negate else "") + ("+" if self.noidx else "")
        return f"{col} {flags}{_OP_NAMES.get(self.op, str(self.op))} {expr!r}"


Block = tuple[TCCond, ...]


@dataclasses.dataclass(frozen=True)
class PlanBlock:
    """One Tokyo query: conditions that must all hold, and what Python still checks.

    ``check`` is None when the conditions select exactly the matches; otherwise the
    records Tokyo returns for this block are loaded and kept when ``check`` holds (used
    where a small part of an otherwise exact result is uncertain, such as numbers equal
    to a range's bound within Tokyo's 16-digit precision).
    """

    conds: Block
    check: Condition | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """What Tokyo runs: ``blocks`` None means every record, ``()`` no record.

    Several blocks are a union (one metasearch). ``disjoint`` says no record can be in
    two blocks, so counts add up without collecting keys.
    """

    blocks: tuple[PlanBlock, ...] | None
    disjoint: bool = False
    #: For a caller that loads every record found anyway: this plan without its kind
    #: gates, and the gates, to check on each loaded record with :func:`gates_hold`.
    #: Set where that spares Tokyo a record read per match (see :func:`_deferred`).
    deferred: tuple[Plan, tuple[TCCond, ...]] | None = None
    #: A plan filled in from a shaped lookup's template: the template and the operand
    #: (see :func:`refine_shape`, which refines the shape once rather than each plan).
    origin: tuple[_Template, bytes] | None = dataclasses.field(
        default=None, compare=False, repr=False
    )

    @property
    def everything(self) -> bool:
        """Whether the plan selects every record (no condition at all)."""
        return self.blocks is None

    @property
    def nothing(self) -> bool:
        """Whether the plan selects no record (no query needed)."""
        return self.blocks == ()

    @property
    def checked(self) -> bool:
        """Whether some block needs records checked in Python."""
        return self.blocks is not None and any(b.check is not None for b in self.blocks)

    def describe(self) -> str:
        """The plan for humans."""
        if self.blocks is None:
            return "every record (no condition)"
        if not self.blocks:
            return "no record (the condition can never hold)"
        texts = []
        for b in self.blocks:
            text = " AND ".join(map(str, b.conds)) or "(every record)"
            if b.check is not None:
                text += f" (then checked in Python: {b.check!r})"
            texts.append(text)
        if len(texts) == 1:
            return f"tctdbqry: {texts[0]}"
        return "tctdbmetasearch UNION of: " + " | ".join(f"[{t}]" for t in texts)


_Blk = tuple[tuple[TCCond, ...], Condition | None]


@dataclasses.dataclass(frozen=True)
class _Part:
    """A compiled subtree: DNF blocks (None: every record, []: none) and exactness.

    ``exact`` means the blocks, with their checks, select exactly the matches.
    """

    blocks: list[_Blk] | None
    exact: bool
    disjoint: bool = True


def _part(blocks: list[list[TCCond]], exact: bool) -> _Part:
    """A part of unchecked blocks."""
    return _Part([(tuple(b), None) for b in blocks], exact, len(blocks) <= 1)


_ALL_EXACT: Final = _Part(None, True)
_ALL_SUPERSET: Final = _Part(None, False)
_NONE: Final = _Part([], True)


def compile_condition(
    condition: Condition, indexes: Mapping[bytes, str] | None = None
) -> tuple[Plan, Condition | None]:
    """Compile ``condition``: the plan Tokyo runs and the residual Python checks.

    ``indexes`` maps column names to their index kind; the compiler then adds conditions
    an index can serve (only supersets of what is already there: results never change).
    """
    indexes = indexes or {}
    shaped = _shape(condition, indexes)
    if shaped is None:
        return _compile(condition, indexes)
    shape, value = shaped
    template = _SHAPES.get(shape)
    if template is None:
        plan, residual = _compile(condition, indexes)
        template = _template(plan, residual, name_bytes(shape[0]), _b(value))
        if template is None:
            return plan, residual
        if len(_SHAPES) < 4096:
            _SHAPES[shape] = template._replace(shape=shape)
        return plan, None
    return template.fill(_b(value)), None


# A lone lookup of these ops on a top-level field with a str operand (non-empty for
# equals) compiles to one exact block whose shape does not depend on the operand:
# [the op's condition on the column, the field's str gate], in an order set by the op
# and the column's index kind alone. Queries that differ only in the operand (the
# usual case: one query shape run with many values) reuse the first one's plan with
# the operand substituted. Keyed by field, op and the index kinds of the two columns.
_SHAPED_OPS: Final = frozenset({"equals", "startswith", "endswith"})
_SHAPES: dict[tuple[str, str, str, str], _Template] = {}


def _shape(
    condition: Condition, indexes: Mapping[bytes, str]
) -> tuple[tuple[str, str, str, str], str] | None:
    """The shape key and the operand of a shaped lookup (None for other conditions)."""
    if type(condition) is not Lookup:
        return None
    path, op, value = condition.path, condition.op, condition.value
    if len(path) != 1 or op not in _SHAPED_OPS or type(value) is not str:
        return None
    if not value and op == "equals":
        return None  # the empty str has its own plan (two blocks)
    # The index kinds order the block's conditions (see _Context.finish).
    kinds = indexes.get(name_bytes(path[0]), ""), indexes.get(TYPES_COLUMN, "")
    return (path[0], op, *kinds), value


class _Template(NamedTuple):
    """A compiled single-block plan and the position of the operand's condition."""

    plan: Plan
    at: int
    #: The shape's key where this is (or refines) the shape's template in ``_SHAPES``.
    shape: tuple[str, str, str, str] | None = None

    def conds(self, expr: bytes) -> Block:
        """The conditions of the one block of :meth:`fill`'s plan (without the plan)."""
        assert self.plan.blocks is not None
        conds = self.plan.blocks[0].conds
        at = self.at
        old = conds[at]
        return (*conds[:at], TCCond(old.col, old.op, expr, old.negate, old.noidx), *conds[at + 1 :])

    def fill(self, expr: bytes) -> Plan:
        """The plan with ``expr`` as the operand (its origin this template)."""
        plan = self.plan
        conds = self.conds(expr)
        deferred = plan.deferred
        if deferred is not None:
            # The lean block is the operand's condition alone (see _deferred).
            deferred = Plan((PlanBlock((conds[self.at],)),), True), deferred[1]
        return Plan(
            (PlanBlock(conds),),
            plan.disjoint,
            deferred,
            None if self.shape is None else (self, expr),
        )


def shaped_lookup(
    condition: Condition, indexes: Mapping[bytes, str]
) -> tuple[_Template, bytes] | None:
    """The shape's template and the operand of a shaped lookup whose template is made:
    filled, the plan :func:`compile_condition` makes of it (it has no residual). None
    for other conditions."""
    shaped = _shape(condition, indexes)
    if shaped is None:
        return None
    template = _SHAPES.get(shaped[0])
    return None if template is None else (template, _b(shaped[1]))


def refine_shape(
    shape: tuple[str, str, str, str], proved: Prover
) -> tuple[_Template | None, tuple[tuple[Fact, bool], ...]]:
    """The template of the refined plans (see :func:`refine`) of a shape's, and the facts
    the refinement asked about with their answers: while each still has its answer,
    filling the result gives what refining a plan filled from the shape's template
    gives. None where there is no such template (then refine each plan).

    Sound because refining looks at the kind gates and the columns of the conditions,
    never at the operand (a template's block has no Python check).
    """
    template = _SHAPES.get(shape)
    if template is None:
        return None, ()
    asked: list[tuple[Fact, bool]] = []

    def recording(fact: Fact) -> bool:
        holds = proved(fact)
        asked.append((fact, holds))
        return holds

    plan = template.plan
    refined = refine(plan, recording)
    facts = tuple(asked)
    if refined is plan:
        return template, facts
    if not refined.blocks or len(refined.blocks) != 1 or refined.blocks[0].check is not None:
        return None, facts
    assert plan.blocks is not None
    operand = plan.blocks[0].conds[template.at]
    at = [i for i, c in enumerate(refined.blocks[0].conds) if c is operand]
    if len(at) != 1:
        return None, facts
    if refined.deferred is not None and refined.deferred[0].blocks != (PlanBlock((operand,)),):
        return None, facts
    return _Template(refined, at[0], shape), facts


def _template(plan: Plan, residual: Condition | None, col: bytes, expr: bytes) -> _Template | None:
    """The template of a shaped lookup's plan (None if it is not the expected shape)."""
    if residual is not None or plan.blocks is None or len(plan.blocks) != 1:
        return None
    (block,) = plan.blocks
    at = _operand_at(block.conds, col, expr)
    if at is None or block.check is not None:
        return None
    if plan.deferred is not None:
        lean = plan.deferred[0].blocks
        if lean is None or len(lean) != 1 or lean[0].conds != (block.conds[at],):
            return None
    return _Template(plan, at)


def _operand_at(conds: Block, col: bytes, expr: bytes) -> int | None:
    found = [i for i, c in enumerate(conds) if c.col == col and c.expr == expr]
    return found[0] if len(found) == 1 else None


def _compile(condition: Condition, indexes: Mapping[bytes, str]) -> tuple[Plan, Condition | None]:
    ctx = _Context(indexes)
    conjuncts = condition.children if type(condition) is And else (condition,)
    residual: list[Condition] = []
    parts: list[tuple[Condition, _Part]] = []
    for child in conjuncts:
        part = ctx.plan(child, False)
        if not part.exact:
            residual.append(child)
        parts.append((child, part))
    # Fewer blocks first, so that an oversized product drops the widest disjunctions.
    parts.sort(key=lambda cp: 0 if cp[1].blocks is None else len(cp[1].blocks))
    blocks: list[_Blk] = [((), None)]
    disjoint = True
    for child, part in parts:
        if part.blocks is None:
            continue
        if not part.blocks:
            return Plan(()), None
        product = _product(blocks, part.blocks)
        if product is None:
            if part.exact:
                residual.append(child)
            continue
        blocks = product
        disjoint = disjoint and part.disjoint
    if blocks == [((), None)]:
        plan = Plan(None)
    else:
        finished = tuple(PlanBlock(ctx.finish(c), k) for c, k in blocks)
        plan = Plan(finished, disjoint, _deferred(finished, indexes))
    return plan, (And.of(*residual) if residual else None)


def _deferred(
    blocks: tuple[PlanBlock, ...], indexes: Mapping[bytes, str]
) -> tuple[Plan, tuple[TCCond, ...]] | None:
    """The plan without kind gates, and the gates, where checking those in Python is
    the cheaper way for a caller that loads every record found anyway.

    That is one exact block whose only other condition an index answers: without the
    gates, Tokyo answers from the index alone and reads no record; with them it reads
    every match once more to test its ``_types`` column.
    """
    if len(blocks) != 1 or blocks[0].check is not None:
        return None
    gates = tuple(c for c in blocks[0].conds if c.col == TYPES_COLUMN)
    rest = tuple(c for c in blocks[0].conds if c.col != TYPES_COLUMN)
    if not gates or len(rest) != 1 or any(g.op != Cond.STROR or g.noidx for g in gates):
        return None
    lead = rest[0]
    served = INDEX_SERVES.get(indexes.get(lead.col, ""), frozenset())
    if lead.negate or lead.noidx or lead.op not in served:
        return None
    # _Template.fill builds this plan the same way: keep them in step.
    return Plan((PlanBlock(rest),), True), gates


def gates_hold(gates: tuple[TCCond, ...], types: bytes | None) -> bool:
    """Whether a record whose ``_types`` column is ``types`` (None: it has none) passes
    every gate (``STROR`` conditions on that column) exactly as Tokyo decides them.

    Tokyo tests a condition on a missing column as failing (passing when negated), and
    ``STROR`` as "a token of the operand is a token of the value", both read as C strings
    cut into tokens at bytes up to 0x20 and commas.
    """
    tokens = None if types is None else _tokens(types)
    for gate in gates:
        hit = tokens is not None and not tokens.isdisjoint(_tokens(gate.expr))
        if hit == gate.negate:
            return False
    return True


_TC_SPLIT: Final = re.compile(rb"[\x00-\x20,]+")


@functools.lru_cache(maxsize=4096)
def _tokens(text: bytes) -> frozenset[bytes]:
    """Tokyo's tokens of a C string (cached: ``_types`` columns repeat per record shape)."""
    return frozenset(t for t in _TC_SPLIT.split(text.split(b"\x00", 1)[0]) if t)


def _product(left: list[_Blk], right: list[_Blk]) -> list[_Blk] | None:
    if len(left) * len(right) > MAX_BLOCKS:
        return None
    out: list[_Blk] = []
    for a_conds, a_check in left:
        for b_conds, b_check in right:
            checks = [c for c in (a_check, b_check) if c is not None]
            out.append((a_conds + b_conds, And.of(*checks) if checks else None))
    return out


def _union(parts: Sequence[_Part]) -> _Part:
    if any(p.blocks is None and p.exact for p in parts):
        return _ALL_EXACT
    if any(p.blocks is None for p in parts):
        return _ALL_SUPERSET
    blocks: list[_Blk] = []
    for p in parts:
        assert p.blocks is not None
        for b in p.blocks:
            if b not in blocks:
                blocks.append(b)
    if len(blocks) > MAX_BLOCKS:
        return _ALL_SUPERSET
    nonempty = [p for p in parts if p.blocks]
    disjoint = len(nonempty) <= 1 and all(p.disjoint for p in nonempty)
    return _Part(blocks, all(p.exact for p in parts), disjoint)


def _intersection(parts: Sequence[_Part]) -> _Part:
    exact = all(p.exact for p in parts)
    if any(p.blocks == [] for p in parts):
        return _NONE
    blocks: list[_Blk] = [((), None)]
    disjoint = True
    for p in sorted(parts, key=lambda p: 0 if p.blocks is None else len(p.blocks)):
        if p.blocks is None:
            continue
        product = _product(blocks, p.blocks)
        if product is None:
            exact = False  # this part is left to Python
            continue
        blocks = product
        disjoint = disjoint and p.disjoint
    return _Part(None if blocks == [((), None)] else blocks, exact, disjoint)


def _negate(part: _Part) -> _Part:
    if not part.exact or (part.blocks and any(k is not None for _, k in part.blocks)):
        # The complement of a superset is a subset: nothing sound to run in Tokyo.
        return _ALL_SUPERSET
    if part.blocks is None:
        return _NONE
    if not part.blocks:
        return _ALL_EXACT
    # not (B1 or B2 ...) = (not B1) and (not B2) ...; not (c1 and c2) = not c1 or not c2.
    return _intersection([_part([[c.negated()] for c in b], True) for b, _ in part.blocks])


# -------------------------------------------------------------------------- lookups


def _ex(col: bytes) -> TCCond:
    """The column exists (an empty regex matches every value)."""
    return TCCond(col, Cond.STRRX, b"")


def _tokens_expr(name: str, codes: Iterable[str]) -> bytes:
    return " ".join(token(name, c) for c in codes).encode("utf-8")


def gate(name: str, kinds: Iterable[str]) -> TCCond | None:
    """A condition on ``_types`` that holds exactly when field ``name`` (if present) is
    of one of ``kinds``. None when every kind is allowed."""
    return _gate(name, frozenset(kinds))


@functools.lru_cache(maxsize=4096)
def _gate(name: str, kinds: frozenset[str]) -> TCCond | None:
    wanted = {code for k in kinds for code in KIND_CODES[k]}
    if "str" not in kinds:
        return TCCond(TYPES_COLUMN, Cond.STROR, _tokens_expr(name, sorted(wanted)))
    others = [c for c in ALL_CODES if c not in wanted]
    if not others:
        return None
    return TCCond(TYPES_COLUMN, Cond.STROR, _tokens_expr(name, others), negate=True)


@functools.lru_cache(maxsize=4096)
def _code_gate(name: str, code: str) -> TCCond:
    return TCCond(TYPES_COLUMN, Cond.STROR, _tokens_expr(name, [code]))


def _block(*conds: TCCond | None) -> list[TCCond]:
    return [c for c in conds if c is not None]


def _number_text(value: int | float) -> str:
    return str(value) if type(value) is int else float_text(value)


def _decimal_forms(value: decimal.Decimal) -> list[str] | None:
    """Every column text of a Decimal equal to ``value`` (None for zero: unbounded)."""
    if value.is_zero() or saturates(value):
        return None  # zero: unboundedly many forms; beyond the bound: see float_text
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    coefficient = list(digits)
    while len(coefficient) > 1 and coefficient[-1] == 0:
        coefficient.pop()
        exponent += 1
    forms: list[str] = []
    while len(coefficient) <= 34:
        text = format(decimal.Decimal((sign, tuple(coefficient), exponent)), "f")
        if text not in forms:
            forms.append(text)
        coefficient.append(0)
        exponent -= 1
    return forms


def _canonical(value: Any) -> bool:
    """Whether equal values of this shape always have the same JSON text."""
    t = type(value)
    if t is list:
        return all(_canonical(v) for v in value)
    return t in (str, bool, bytes, datetime.date, datetime.datetime)


class _Context:
    def __init__(self, indexes: Mapping[bytes, str]) -> None:
        self.indexes = indexes

    def plan(self, node: Condition, negated: bool) -> _Part:
        if isinstance(node, Lookup):
            part = self.lookup(node)
            return _negate(part) if negated else part
        if isinstance(node, Not):
            return self.plan(node.child, not negated)
        if isinstance(node, And):
            parts = [self.plan(c, negated) for c in node.children]
            return _union(parts) if negated else _intersection(parts)
        if isinstance(node, Or):
            parts = [self.plan(c, negated) for c in node.children]
            return _intersection(parts) if negated else _union(parts)
        return _ALL_SUPERSET  # unknown node: Python decides

    def finish(self, block: Sequence[TCCond]) -> Block:
        """Deduplicate and order a block: Tokyo uses the first indexed condition it meets."""
        if len(block) < 2:
            return tuple(block)
        ordered = sorted(dict.fromkeys(block), key=self._rank)
        # Tokyo answers up to two conditions from indexes, walking a decimal index in its
        # own order (finer than its number parser's, and jumping to the operand): only
        # the leading one is planned for that, so every other NUM condition on a
        # decimal-indexed column is evaluated on the record instead.
        out: list[TCCond] = []
        driver_seen = False
        for cond in ordered:
            served = not cond.negate and cond.op in INDEX_SERVES.get(
                self.indexes.get(cond.col, ""), frozenset()
            )
            if served and driver_seen and cond.op in _NUM_OPS:
                cond = cond._replace(noidx=True)
            driver_seen = driver_seen or served
            out.append(cond)
        return tuple(out)

    def _rank(self, cond: TCCond) -> int:
        rank = _RANKS.get(cond.op, 50)
        if cond.col == TYPES_COLUMN:
            rank += 100
        if cond.negate:
            rank += 200
        elif cond.op in INDEX_SERVES.get(self.indexes.get(cond.col, ""), frozenset()):
            rank -= 100
        return rank

    def has_index(self, col: bytes, kind: str) -> bool:
        return self.indexes.get(col) == kind

    # -- one lookup ------------------------------------------------------------------

    def lookup(self, lk: Lookup) -> _Part:
        name = lk.path[0]
        col = name_bytes(name)
        op, value = lk.op, lk.value
        if len(lk.path) > 1:
            # The column holds the whole top-level dict as JSON: only its kind is tested.
            if op == "exists" and value is False:
                return _ALL_SUPERSET
            return _part([_block(_ex(col), gate(name, ["dict"]))], False)
        if op == "exists":
            cond = _ex(col)
            return _part([[cond if value else cond.negated()]], True)
        if op == "equals":
            return self.equals(name, col, value)
        if op == "in":
            return self.in_(name, col, value)
        if op in ("gt", "gte", "lt", "lte"):
            return self.compare(lk, name, col)
        if op == "between":
            return self.between(lk, name, col)
        if op == "contains":
            return self.contains(name, col, value)
        if op == "contains_all":
            if not value:
                return _part([_block(_ex(col), gate(name, ["str", "list"]))], True)
            return _intersection([self.contains(name, col, v) for v in value])
        if op == "contains_any":
            return _union([self.contains(name, col, v) for v in value])
        if op == "startswith":
            return _part([_block(TCCond(col, Cond.STRBW, _b(value)), gate(name, ["str"]))], True)
        if op == "endswith":
            return _part([_block(TCCond(col, Cond.STREW, _b(value)), gate(name, ["str"]))], True)
        if op in ("iequals", "istartswith", "iendswith", "icontains"):
            return self.case_insensitive(name, col, op, value)
        if op in ("year", "month", "day"):
            return self.date_part(name, col, op, value)
        if op == "like":
            return self.like(name, col, value)
        # matches / imatches: Python's regex syntax is not POSIX's.
        return _part([_block(_ex(col), gate(name, ["str"]))], False)

    def equals(self, name: str, col: bytes, value: Any) -> _Part:
        kind = kind_of(value)
        g = gate(name, [kind])
        if kind == "str":
            if not value:
                # Written as a NUL byte with an "e" token; other clients write "".
                empty = TCCond(TYPES_COLUMN, Cond.STROR, _tokens_expr(name, ["e"]))
                return _part([[empty], _block(TCCond(col, Cond.STREQ, b""), g)], True)
            return _part([_block(TCCond(col, Cond.STREQ, _b(value)), g)], True)
        if kind == "bool":
            return _part([_block(TCCond(col, Cond.STREQ, b"true" if value else b"false"), g)], True)
        if kind == "number":
            forms = number_forms(value)
            helper = None
            if self.has_index(col, "decimal"):
                helper = TCCond(col, Cond.NUMEQ, forms[0].encode("ascii"))
            return _part([_block(helper, _oreq(col, forms), g)], True)
        if kind == "decimal":
            dforms = _decimal_forms(value)
            numeq = TCCond(col, Cond.NUMEQ, decimal_text(value)[0].encode("ascii"))
            if dforms is None:
                return _part([_block(numeq, g)], False)
            helper = numeq if self.has_index(col, "decimal") else None
            return _part([_block(helper, _oreq(col, dforms), g)], True)
        if kind == "bytes":
            if not value:
                return _part([[_code_gate(name, "E")]], True)
            if b"\x00" in value:
                return _part([_block(_ex(col), g)], False)
            return _part([_block(TCCond(col, Cond.STREQ, value), g)], True)
        if kind in ("date", "datetime", "datetime_tz"):
            text = (date_text(value) if kind == "date" else datetime_text(value)).encode("ascii")
            helper = None
            if self.has_index(col, "decimal"):
                helper = TCCond(col, Cond.NUMEQ, text)
            return _part([_block(helper, TCCond(col, Cond.STREQ, text), g)], True)
        if kind == "list":
            if value and all(type(v) is str and word_safe(v) for v in value):
                words = _b(" ".join(value))
                conds = [TCCond(col, Cond.STREQ, words), _code_gate(name, "w")]
                if self.has_index(col, "token"):
                    conds.append(TCCond(col, Cond.STRAND, words))  # a superset the index serves
                return _part([conds], True)
            if _canonical(value):
                listed = _b(json_text(value))
                return _part([[TCCond(col, Cond.STREQ, listed), _code_gate(name, "l")]], True)
        # Lists of numbers and dicts: equal values may be written differently
        # ([1] and [1.0], key order), so only the kind is tested.
        return _part([_block(_ex(col), g)], False)

    def in_(self, name: str, col: bytes, values: Sequence[Any]) -> _Part:
        if not values:
            return _NONE
        words: list[str] = []
        numbers: list[str] = []
        decimals: list[str] = []
        parts: list[_Part] = []
        for v in values:
            kind = kind_of(v)
            if kind == "str" and word_safe(v):
                words.append(v)
            elif kind == "number" and all(word_safe(f) for f in number_forms(v)):
                numbers.extend(number_forms(v))
            elif kind == "decimal" and (forms := _decimal_forms(v)) is not None:
                decimals.extend(forms)
            else:
                parts.append(self.equals(name, col, v))
        if words:
            parts.append(_part([_block(_oreq(col, words), gate(name, ["str"]))], True))
        if numbers:
            parts.append(_part([_block(_oreq(col, numbers), gate(name, ["number"]))], True))
        if decimals:
            parts.append(_part([_block(_oreq(col, decimals), gate(name, ["decimal"]))], True))
        part = _union(parts)
        if part.blocks is None and not part.exact:
            # Too many blocks for one metasearch: still narrow to records with the field.
            return _part([[_ex(col)]], False)
        return part

    def compare(self, lk: Lookup, name: str, col: bytes) -> _Part:
        op, value = lk.op, lk.value
        kind = kind_of(value)
        g = gate(name, [kind])
        if kind == "date":
            tc_op = {"gt": Cond.NUMGT, "gte": Cond.NUMGE, "lt": Cond.NUMLT, "lte": Cond.NUMLE}[op]
            return _part([_block(TCCond(col, tc_op, date_text(value).encode()), g)], True)
        text = self._num_text(kind, value)
        if text is None:
            return _part([_block(_ex(col), g)], False)
        # Tokyo parses the column text into a long double keeping 16 digits: a monotone
        # but not injective map. So a strict NUM comparison selects only true matches,
        # and the only uncertain records are those Tokyo finds equal to the bound; just
        # those are checked in Python.
        upward = op in ("gt", "gte")
        sure = ((TCCond(col, Cond.NUMGT if upward else Cond.NUMLT, text), *_block(g)), None)
        return _Part([sure, *self._ties(lk, name, col, text, upward, g, kind)], True, True)

    def _ties(
        self,
        lk: Lookup,
        name: str,
        col: bytes,
        text: bytes,
        upward: bool,
        g: TCCond | None,
        kind: str,
    ) -> list[_Blk]:
        """The checked block of the records Tokyo cannot order against a bound: in a
        window around it, on the other side of the strict condition (so that blocks
        stay disjoint).

        At an integer bound below ``10**15`` in magnitude the window is narrower than 1
        and Tokyo reads ints exactly (see :func:`refine`): the ints in it are the bound
        itself, which match as a whole or not at all. So they get a block of their own,
        unchecked or left out, and only the floats in the window are checked in Python.
        """
        window = TCCond(col, Cond.NUMBT, tie_window(text))
        other_side = TCCond(col, Cond.NUMLE if upward else Cond.NUMGE, text)
        bound = _small_integral(text) if kind == "number" else None
        if bound is None:
            return [((window, other_side, *_block(g)), lk)]
        floats = ((window, other_side, _code_gate(name, "f")), lk)
        if not lk.matches({name: bound}):
            return [floats]
        return [((window, other_side, _code_gate(name, "i")), None), floats]

    def between(self, lk: Lookup, name: str, col: bytes) -> _Part:
        low, high = lk.value
        kind = kind_of(low)
        if low > high:
            return _NONE
        g = gate(name, [kind])
        if kind == "date":
            expr = f"{date_text(low)} {date_text(high)}".encode()
            return _part([_block(TCCond(col, Cond.NUMBT, expr), g)], True)
        lo, hi = self._num_text(kind, low), self._num_text(kind, high)
        if lo is None or hi is None:
            return _part([_block(_ex(col), g)], False)
        # NUMBT first: an index walks just that range (the strict bounds then filter).
        inside = (
            TCCond(col, Cond.NUMBT, lo + b" " + hi),
            TCCond(col, Cond.NUMGT, lo),
            TCCond(col, Cond.NUMLT, hi),
            *_block(g),
        )
        blocks: list[_Blk] = [(inside, None), *self._ties(lk, name, col, lo, True, g, kind)]
        if tokyo_number(lo) != tokyo_number(hi):
            blocks.extend(self._ties(lk, name, col, hi, False, g, kind))
        return _Part(blocks, True, True)

    def _num_text(self, kind: str, value: Any) -> bytes | None:
        """The operand of a NUM* superset condition, or None where none is sound."""
        if kind == "number" and abs(value) < NUM_LIMIT:
            return _number_text(value).encode("ascii")
        if kind == "decimal" and abs(value) < NUM_LIMIT:
            return decimal_text(value)[0].encode("ascii")
        if kind in ("datetime", "datetime_tz"):
            return datetime_text(value).encode("ascii")
        return None

    def contains(self, name: str, col: bytes, value: Any) -> _Part:
        if type(value) is str:
            # A str field containing it, a word list holding it, or a JSON list holding
            # it: all three hold the text itself, unless JSON had to escape characters.
            blocks = [[TCCond(col, Cond.STRINC, _b(value)) if value else _ex(col)]]
            inner = json_text(value)[1:-1]
            if inner != value:
                blocks.append([TCCond(col, Cond.STRINC, _b(inner)), _code_gate(name, "l")])
            return _part(blocks, False)
        element = self._element_cond(col, value)
        return _part([_block(element, _code_gate(name, "l"))], False)

    def _element_cond(self, col: bytes, value: Any) -> TCCond | None:
        """A token condition every JSON list column holding ``value`` satisfies."""
        kind = kind_of(value)
        if kind == "number":
            return TCCond(col, Cond.STROR, " ".join(json_number_forms(value)).encode())
        if _canonical(value):
            tokens = tc_tokens(json_text(value))
            if tokens:
                return TCCond(col, Cond.STRAND, _b(" ".join(tokens)))
        return None

    def case_insensitive(self, name: str, col: bytes, op: str, value: str) -> _Part:
        g = gate(name, ["str"])
        target = value.lower()
        if not target and op != "iequals":
            return _part([_block(_ex(col), g)], True)
        built = case_insensitive_regex(target, op)
        if built is None:
            return _part([_block(_ex(col), g)], False)
        pattern, exact = built
        return _part([_block(TCCond(col, Cond.STRRX, _b(pattern)), g)], exact)

    def date_part(self, name: str, col: bytes, op: str, value: int) -> _Part:
        g = gate(name, ["date", "datetime", "datetime_tz"])
        helper = None
        if op == "year":
            if not 1 <= value <= 9999:
                return _NONE
            cond = TCCond(col, Cond.STRBW, b"%04d" % value)
            if self.has_index(col, "decimal"):
                # Every date and datetime of that year lies in this range as a number (a
                # superset: the STRBW below decides).
                helper = TCCond(col, Cond.NUMBT, b"%04d0101 %04d1231235959.999999" % (value, value))
        elif op == "month":
            if not 1 <= value <= 12:
                return _NONE
            cond = TCCond(col, Cond.STRRX, b"^[0-9][0-9][0-9][0-9]%02d" % value)
        else:
            if not 1 <= value <= 31:
                return _NONE
            cond = TCCond(col, Cond.STRRX, b"^[0-9][0-9][0-9][0-9][0-9][0-9]%02d" % value)
        return _part([_block(helper, cond, g)], True)

    def like(self, name: str, col: bytes, value: str) -> _Part:
        g = gate(name, ["str"])
        words = list(dict.fromkeys(re.findall(r"\w+", value.lower())))
        if not words:
            return _part([_block(_ex(col), g)], True)
        # Each word must occur in the lowered text: a superset of "is a word of it".
        conds: list[TCCond | None] = [g]
        for word in words:
            built = case_insensitive_regex(word, "icontains")
            if built is not None:
                conds.append(TCCond(col, Cond.STRRX, _b(built[0])))
        if len(conds) == 1:
            conds.append(_ex(col))
        return _part([_block(*conds)], False)


def tokyo_number(text: bytes) -> decimal.Decimal:
    """The value Tokyo's number parser (``tctdbatof``) reads from positional ``text``,
    up to its long-double rounding: the digits after the 16th significant column go."""
    body = text.decode("ascii")
    sign = ""
    if body[:1] in "+-":
        sign, body = ("-" if body[0] == "-" else ""), body[1:]
    whole, _, fraction = body.partition(".")
    columns = len(whole.lstrip("0"))
    kept = fraction[: max(0, 16 - columns)]
    return decimal.Decimal(f"{sign}{whole or '0'}.{kept or '0'}")


def _small_integral(text: bytes) -> int | None:
    """The int a number operand (``b"80"``, ``b"80.0"``) equals, if its magnitude is below
    ``10**15`` (where :func:`tie_window` is narrower than 1); else None."""
    if not _INTEGRAL_TEXT.fullmatch(text):
        return None
    value = int(decimal.Decimal(text.decode("ascii")))
    return value if abs(value) < 10**15 else None


def tie_window(text: bytes) -> bytes:
    """A ``NUMBT`` operand covering every value Tokyo reads as equal to ``text``.

    Not ``NUMEQ``: a decimal index walks in its own finer order from the operand and
    would miss equal-to-Tokyo values just below it. The window reaches one 16th-digit
    unit beyond the truncated value on both sides.
    """
    body = text.decode("ascii").lstrip("+-")
    whole = body.partition(".")[0]
    kept = max(0, 16 - len(whole.lstrip("0")))
    unit = decimal.Decimal(1).scaleb(-kept)
    base = tokyo_number(text)
    return f"{format(base - unit, 'f')} {format(base + unit, 'f')}".encode("ascii")


def _b(text: str) -> bytes:
    return text.encode("utf-8")


def _oreq(col: bytes, forms: Sequence[str]) -> TCCond:
    if len(forms) == 1:
        return TCCond(col, Cond.STREQ, _b(forms[0]))
    return TCCond(col, Cond.STROREQ, _b(" ".join(dict.fromkeys(forms))))


# Order of conditions inside a block: Tokyo drives the search with the first condition an
# index serves, so likely-selective conditions come first.
_RANKS: Final[dict[int, int]] = {
    Cond.STREQ: 0,
    Cond.NUMEQ: 1,
    Cond.STROREQ: 2,
    Cond.NUMOREQ: 3,
    Cond.STRBW: 4,
    Cond.NUMBT: 5,
    Cond.NUMGE: 6,
    Cond.NUMGT: 6,
    Cond.NUMLE: 6,
    Cond.NUMLT: 6,
    Cond.STRAND: 7,
    Cond.STROR: 8,
    Cond.STREW: 9,
    Cond.STRINC: 10,
    Cond.STRRX: 11,
}
_NUM_OPS: Final = frozenset(
    {Cond.NUMEQ, Cond.NUMGT, Cond.NUMGE, Cond.NUMLT, Cond.NUMLE, Cond.NUMBT, Cond.NUMOREQ}
)
# Which operators each index kind serves (tctdbqrysearchimpl's choice of "mcond").
INDEX_SERVES: Final[dict[str, frozenset[int]]] = {
    "lexical": frozenset({Cond.STREQ, Cond.STRBW, Cond.STROREQ}),
    "decimal": frozenset(
        {Cond.NUMEQ, Cond.NUMGT, Cond.NUMGE, Cond.NUMLT, Cond.NUMLE, Cond.NUMBT, Cond.NUMOREQ}
    ),
    "token": frozenset({Cond.STRAND, Cond.STROR}),
    "qgram": frozenset({Cond.FTSPH}),
}


# ------------------------------------------------------------- case-insensitive regexes

_ERE_SPECIAL: Final = frozenset(".[]()*+?{}|^$\\")
_SIGMA: Final = "\u03c3"
_FINAL_SIGMA: Final = "\u03c2"
_CAPITAL_SIGMA: Final = "\u03a3"
_SIGMAS: Final = frozenset((_SIGMA, _FINAL_SIGMA))


@functools.cache
def _lower_preimages() -> dict[str, tuple[str, ...]]:
    """For each one-character lowercase form, the other characters that lower to it.

    Built once from the running Python's own ``str.lower`` (about 1,400 entries), so it
    agrees with the reference semantics whatever the Unicode version.
    """
    table: dict[str, list[str]] = {}
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        low = ch.lower()
        if low != ch and len(low) == 1:
            table.setdefault(low, []).append(ch)
    # Final sigma: capital sigma lowers to the final form at the end of a word.
    table.setdefault(_FINAL_SIGMA, []).append(_CAPITAL_SIGMA)
    return {k: tuple(v) for k, v in table.items()}


def _literal(ch: str) -> str:
    return "\\" + ch if ch in _ERE_SPECIAL else ch


def case_insensitive_regex(target: str, op: str) -> tuple[str, bool] | None:
    """A POSIX regex matching the str values ``x`` with ``x.lower()`` equal to /
    starting with / ending with / containing ``target`` (already lowered).

    Returns (pattern, exact) or None when no sound pattern is built. Exact unless the
    target holds a sigma, whose lowering depends on its position in the word.
    """
    if "\u0307" in target:
        # Part of "İ".lower() (two characters): not expressible one character at a time.
        return None
    table = _lower_preimages()
    exact = not (_SIGMAS & set(target))
    pieces: list[str] = []
    last = len(target) - 1
    for i, ch in enumerate(target):
        options = [ch, *table.get(ch, ())]
        if ch == _SIGMA:
            options.append(_FINAL_SIGMA)  # a final capital sigma may lower to either
        if ch == "i" and i == last and op in ("istartswith", "icontains"):
            # "İ".lower() is "i" + U+0307: it supplies a final "i" when nothing follows.
            options.append("\u0130")
        options = list(dict.fromkeys(options))
        if len(options) == 1:
            pieces.append(_literal(ch))
        elif all(len(o.encode("utf-8")) == 1 and o.isalpha() for o in options):
            pieces.append("[" + "".join(options) + "]")
        else:
            pieces.append("(" + "|".join(_literal(o) for o in options) + ")")
    body = "".join(pieces)
    if op == "iequals":
        return "^" + body + "$", exact
    if op == "istartswith":
        return "^" + body, exact
    if op == "iendswith":
        return body + "$", exact
    return body, exact


def pk_order_in_python(blocks: int, order: tuple[bytes, int], limit: int, skip: int) -> bool:
    """Whether the keys of ``blocks`` queries are put in ``order`` in Python, not by Tokyo.

    For a pk order: always for a metasearch, which cannot sort by the pk (it looks the
    order up as a column and finds none), and whenever nothing is sliced, which saves the
    foreign call (Tokyo compares pks bytewise, as Python does).
    """
    return order[0] == b"" and (blocks > 1 or (limit < 0 and not skip))


# ---------------------------------------------------------------- kinds for ordering


def guaranteed_kind(condition: Condition, name: str) -> str | None:
    """The one kind top-level field ``name`` has in every record matching ``condition``.

    Only plain conjuncts count: an equality, comparison or str op on the field pins its
    kind (and its presence). None when nothing does.
    """
    conjuncts = condition.children if type(condition) is And else (condition,)
    for c in conjuncts:
        kind = _lookup_kind(c, name)
        if kind is not None:
            return kind
        if isinstance(c, Or) and c.children:
            kinds = {_lookup_kind(child, name) for child in c.children}
            if len(kinds) == 1 and None not in kinds:
                return kinds.pop()
    return None


_STR_OPS: Final = frozenset(
    {
        "startswith",
        "endswith",
        "iequals",
        "istartswith",
        "iendswith",
        "icontains",
        "matches",
        "imatches",
        "like",
    }
)


def _lookup_kind(c: Condition, name: str) -> str | None:
    if not isinstance(c, Lookup) or c.path != (name,):
        return None
    if c.op in ("equals", "gt", "gte", "lt", "lte"):
        return kind_of(c.value)
    if c.op == "between":
        return kind_of(c.value[0])
    if c.op == "in":
        kinds = {kind_of(v) for v in c.value}
        return kinds.pop() if len(kinds) == 1 else None
    if c.op in _STR_OPS:
        return "str"
    return None


@dataclasses.dataclass(frozen=True)
class OrderPlan:
    """How Tokyo orders a query: by one column (b"": the pk) in one direction."""

    column: bytes  # b"": the primary key
    tc_order: int
    keys: tuple[OrderKey, ...]

    @property
    def by_pk(self) -> bool:
        return self.column == b""

    @property
    def numeric(self) -> bool:
        """Whether Tokyo orders the column as numbers (``NUMASC``/``NUMDESC``)."""
        return self.tc_order in (Order.NUMASC, Order.NUMDESC)


# ------------------------------------------------------------ facts about the columns

#: A fact about the column of one field that holds in every record of the table:
#:
#: * ``("none", name, codes)``: no record has the field with one of these type codes;
#: * ``("only", name, codes)``: every record that has the field has one of these codes
#:   (a non-empty str has no code, so it breaks this fact);
#: * ``("int", name)``: every record that has the field holds an int of magnitude below
#:   :data:`NUM_LIMIT` there, which Tokyo's number parser reads exactly;
#: * ``("all", name)``: every record has the field.
#:
#: A backend that can prove such facts (see ``TokyoStorage._proved``) lets
#: :func:`refine` drop kind gates and tie checks they make redundant, and lets the query
#: order numbers in the engine.
Fact = tuple[Any, ...]
Prover = Callable[[Fact], bool]

#: Number operands that are whole numbers, whose ties can be settled exactly (see
#: _small_integral, :meth:`_Context._ties` and :func:`refine`).
_INTEGRAL_TEXT: Final = re.compile(rb"-?[0-9]+(?:\.0+)?")


@functools.lru_cache(maxsize=4096)
def gate_field(expr: bytes) -> tuple[str, frozenset[str]] | None:
    """The field and type codes of a kind gate's operand (None if it names several)."""
    names: set[str] = set()
    codes: set[str] = set()
    for tok in _TC_SPLIT.split(expr):
        if not tok:
            continue
        name, sep, code = tok.decode("utf-8", "replace").rpartition(":")
        if not sep:
            return None
        names.add(unquote(name))
        codes.add(code)
    if len(names) != 1:
        return None
    return names.pop(), frozenset(codes)


def refine(plan: Plan, proved: Prover) -> Plan:
    """``plan`` without what proved facts about the table make redundant: kind gates that
    every record passes, and checked tie blocks of integer bounds on columns holding only
    small ints (Tokyo compares those exactly, so the block's records are exactly the ints
    equal to the bound, which match or not as a whole).

    The result selects exactly what ``plan`` selects, in every table where the facts
    hold; fewer conditions let Tokyo answer from an index without reading records.
    """
    if not plan.blocks:
        return plan
    blocks: list[PlanBlock] = []
    changed = False
    for block in plan.blocks:
        new = _refine_block(block, proved)
        if new is not block:
            changed = True
        if new is not None:
            blocks.append(new)
    if not changed:
        return plan
    if not blocks:
        return Plan(())
    deferred = plan.deferred
    if deferred is not None:
        kept = tuple(g for g in deferred[1] if any(g in b.conds for b in blocks))
        deferred = (deferred[0], kept) if kept else None
    return Plan(tuple(blocks), plan.disjoint, deferred)


def _refine_block(block: PlanBlock, proved: Prover) -> PlanBlock | None:
    conds = block.conds
    kept = tuple(c for c in conds if not _redundant_gate(c, conds, proved))
    check = block.check
    if check is not None and type(check) is Lookup and len(check.path) == 1:
        settled = _settled_tie(kept, check, proved)
        if settled is False:
            return None
        if settled is True:
            check = None
    if len(kept) == len(conds) and check is block.check:
        return block
    return PlanBlock(kept, check)


def _redundant_gate(c: TCCond, conds: Block, proved: Prover) -> bool:
    if c.col != TYPES_COLUMN or c.op != Cond.STROR or c.noidx:
        return False
    found = gate_field(c.expr)
    if found is None:
        return False
    name, codes = found
    if c.negate:
        return proved(("none", name, codes))
    col = name_bytes(name)
    # Records lacking the field fail a positive gate: dropping it is sound only when a
    # positive condition on the column itself already excludes them.
    if not any(o.col == col and not o.negate for o in conds):
        return False
    if "i" in codes and "f" in codes and proved(("int", name)):
        return True
    return proved(("only", name, codes))


def _settled_tie(conds: Block, check: Lookup, proved: Prover) -> bool | None:
    """For a tie block (see ``_Context._ties``): True if all its records match the check,
    False if none does, None if not settled here."""
    if check.op not in ("gt", "gte", "lt", "lte", "between"):
        return None
    name = check.path[0]
    col = name_bytes(name)
    ops = {c.op for c in conds if c.col == col and not c.negate}
    bounds = [
        c.expr for c in conds if c.col == col and not c.negate and c.op in (Cond.NUMLE, Cond.NUMGE)
    ]
    if Cond.NUMBT not in ops or len(bounds) != 1:
        return None
    # Below 10**15 the window (see tie_window) is narrower than 1 around the bound, so
    # the only int in it is the bound: the block's records hold exactly that value.
    bound = _small_integral(bounds[0])
    if bound is None or not proved(("int", name)):
        return None
    return check.matches({name: bound})

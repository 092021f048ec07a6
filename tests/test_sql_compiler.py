"""The SQL compiler's caches give exactly what compiling afresh gives (both dialects).

Compiled SQL text is cached by condition shape (paths, ops and value kinds) and
statements by their WHERE text, order and slice form; only parameters are derived
anew. One compiler lives across all examples here, so shapes recur with other values.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymodels import Q
from pymodels.conditions import Condition
from pymodels.ext._sql.compiler import Compiler, Dialect
from pymodels.ext._sql.postgresql_dialect import PostgresDialect
from pymodels.ext._sql.sqlite_dialect import SQLiteDialect
from pymodels.ordering import full_order, parse_order
from pymodels.testing.strategies import conditions, record_sets, to_q

COMPILERS = {"sqlite": Compiler(SQLiteDialect()), "postgresql": Compiler(PostgresDialect())}


def _typed(params: tuple[Any, ...]) -> list[tuple[type, Any]]:
    # 1, 1.0 and True are equal in Python but different parameters for a driver.
    return [(type(p), p) for p in params]


def _same(compiler: Compiler, condition: Condition) -> None:
    cached, fresh = compiler.compile(condition), compiler._compile(condition)
    assert cached.residual == fresh.residual
    if fresh.native is None:
        assert cached.native is None
        return
    assert cached.native.sql == fresh.native.sql
    assert _typed(cached.native.params) == _typed(fresh.native.params)


@st.composite
def _conditions(draw: st.DrawFn) -> Condition:
    rows = list(draw(record_sets(4)).values())
    return to_q(draw(conditions(rows)))


@pytest.mark.parametrize("dialect", sorted(COMPILERS))
@given(condition=_conditions())
def test_cached_compilation_is_fresh_compilation(dialect: str, condition: Condition) -> None:
    compiler = COMPILERS[dialect]
    _same(compiler, condition)
    _same(compiler, condition)  # the second time the shape is surely cached


@pytest.mark.parametrize("dialect", sorted(COMPILERS))
def test_one_shape_many_values(dialect: str) -> None:
    compiler = Compiler(type(COMPILERS[dialect].dialect)())
    for value in (1, 2.5, True, "x", -(2**63), 10**16, "", "a'b"):
        _same(compiler, Q(a=value))
        _same(compiler, Q(a__exists=True) & ~Q(b__in=[value, value]))
        if type(value) is not bool:
            _same(compiler, Q(a__gte=value) | Q(a__between=(value, value)))
    first, second = compiler.compile(Q(a="x")), compiler.compile(Q(a="y"))
    assert first.native.sql is second.native.sql  # one cached text
    assert first.native.params != second.native.params


SAMPLES = {
    "int": (1, 2),
    "float": (1.5, -2.5),
    "bool": (True, False),
    "str": ("x", "y"),
    "decimal": (Decimal("1.5"), Decimal("-2")),
    "bytes": (b"x", b"y"),
    "date": (dt.date(2020, 1, 2), dt.date(1999, 12, 31)),
    "datetime": (dt.datetime(2020, 1, 2, 3, 4), dt.datetime(1999, 1, 1)),
    "datetime_tz": (dt.datetime(2020, 1, 2, tzinfo=dt.UTC), dt.datetime(1999, 1, 1, tzinfo=dt.UTC)),
}


@pytest.mark.parametrize("dialect", sorted(COMPILERS))
@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_scalar_kind_is_cached(dialect: str, kind: str) -> None:
    compiler = Compiler(type(COMPILERS[dialect].dialect)())
    a, b = SAMPLES[kind]
    first, second = compiler.compile(Q(f=a)), compiler.compile(Q(f=b))
    assert first.native.sql is second.native.sql  # the second came from the cache
    _same(compiler, Q(f=b))


def test_int_float_and_bool_keep_their_type() -> None:
    compiler = Compiler(SQLiteDialect())
    for value in (1, 1.0, True):
        (param,) = compiler.compile(Q(a=value)).native.params
        assert type(param) is (int if value is True else type(value))


def test_a_shape_whose_sql_is_not_exact_is_never_cached() -> None:
    compiler = Compiler(SQLiteDialect())
    # "$x" can never be a stored field name: such a lookup compiles to a constant.
    for value in (1, 2):
        compiled = compiler.compile(Q(**{"$x": value}))
        assert compiled.native is not None and compiled.native.params == ()
    assert None in compiler._shapes.values()


@pytest.mark.parametrize("dialect", sorted(COMPILERS))
@pytest.mark.parametrize("offset, limit", [(0, None), (0, 1), (3, None), (2, 5), (0, 0)])
def test_cached_statements_match_fresh_ones(dialect: str, offset: int, limit: int | None) -> None:
    d: Dialect = type(COMPILERS[dialect].dialect)()
    where = Compiler(d).compile(Q(a=1)).native
    for order in (full_order(()), full_order(parse_order(["-a", "b"]))):
        for _ in range(2):
            assert d.select_statement("t", where, order, offset, limit) == d.render(
                d.select("t", where, order, offset, limit)
            )


@pytest.mark.parametrize("dialect", sorted(COMPILERS))
def test_limit_params_are_the_limit_clause_s(dialect: str) -> None:
    d = COMPILERS[dialect].dialect
    for offset in (0, 1, 7):
        for limit in (None, 0, 1, 10):
            assert d.limit_params(offset, limit) == d.limit(offset, limit).params


@pytest.mark.parametrize("dialect", sorted(COMPILERS))
def test_whole_statements_are_cached_by_shape(dialect: str) -> None:
    compiler = Compiler(type(COMPILERS[dialect].dialect)())
    order = full_order(parse_order(["-n"]))
    first = compiler.select(Q(a="x") & Q(n__gt=1), "t", order, 0, 10)
    second = compiler.select(Q(a="y") & Q(n__gt=2.5), "t", order, 0, 10)
    assert first is not None and second is not None
    assert first[0] is second[0]  # one cached text
    fresh = compiler.dialect.select_statement(
        "t", compiler._compile(Q(a="y") & Q(n__gt=2.5)).native, order, 0, 10
    )
    assert second[0] == fresh[0] and _typed(second[1]) == _typed(fresh[1])
    # One comparison takes a shortcut to the same cache entry (a hit from the second use).
    for kind in sorted(SAMPLES):
        for value in SAMPLES[kind]:
            cond = Q(a=value) if kind == "bool" else Q(a__gte=value)
            got = compiler.select(cond, "t", order, 3, 10)
            fresh = compiler.dialect.select_statement(
                "t", compiler._compile(cond).native, order, 3, 10
            )
            assert got is not None and got[0] == fresh[0] and _typed(got[1]) == _typed(fresh[1])
    # Ops whose SQL may depend on more than kinds (here a regex) have no cached statement.
    assert compiler.select(Q(a__matches="x"), "t", order, 0, 10) is None

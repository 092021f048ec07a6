"""Condition trees: the reference semantics of every lookup.

A condition is an immutable, hashable value: :class:`Lookup` leaves combined by
:class:`And`, :class:`Or` and :class:`Not`. ``cond.matches(record)`` evaluates
it in Python; that evaluation *is* the contract that every backend's compiled
query must reproduce. Building a lookup validates it, so errors come at the
call to ``where`` (or ``Q``), never at run time.
"""

from __future__ import annotations

import datetime
import functools
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Final

from .errors import InvalidQuery, ValidationError
from .features import OPS
from .values import (
    MISSING,
    ORDERED_KINDS,
    Referable,
    freeze,
    get_path,
    kind_of,
    strict_equal,
    validate_value,
)

__all__ = [
    "ALL",
    "COMPARISONS",
    "And",
    "Condition",
    "Lookup",
    "Not",
    "Or",
    "Q",
    "parse_key",
    "parse_path",
    "record_test",
]

_OP_SET: Final = frozenset(OPS)
_STR_OPS: Final = frozenset(
    {
        "startswith",
        "endswith",
        "iequals",
        "icontains",
        "istartswith",
        "iendswith",
        "matches",
        "imatches",
        "like",
    }
)
_CMP_OPS: Final = frozenset({"gt", "gte", "lt", "lte"})
_DATE_PARTS: Final = frozenset({"year", "month", "day"})
_WORD = re.compile(r"\w+")


class Condition:
    """Base of condition nodes. Combine with ``&``, ``|`` and ``~``."""

    __slots__ = ()

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` satisfies this condition (the reference semantics)."""
        raise NotImplementedError

    def lookups(self) -> Iterable[Lookup]:
        """Every leaf of the tree."""
        raise NotImplementedError

    def __and__(self, other: Condition) -> Condition:
        if not isinstance(other, Condition):
            return NotImplemented
        return And.of(self, other)

    def __or__(self, other: Condition) -> Condition:
        if not isinstance(other, Condition):
            return NotImplemented
        return Or.of(self, other)

    def __invert__(self) -> Condition:
        return Not(self)


class Lookup(Condition):
    """One ``path__op=value`` test."""

    __slots__ = ("_frozen", "op", "path", "value")
    _frozen: tuple[Any, ...]
    path: tuple[str, ...]
    op: str
    value: Any

    def __init__(self, path: tuple[str, ...], op: str, value: Any) -> None:
        if type(path) is not tuple:
            path = tuple(path)
        try:
            check = _CHECKS[op]
        except KeyError:
            raise InvalidQuery(f"unknown op {op!r}; ops are: {', '.join(OPS)}") from None
        try:
            value = check(value)
        except _Expected as e:
            raise _invalid_value(path, op, value, e) from None
        except ValidationError as e:
            # A saved document stands for its pk (a reference's stored value):
            # converted only here, so the common lookup pays nothing for it.
            pks = _documents_as_pks(path, op, value)
            if pks is _NO_DOCUMENT:
                raise _invalid_value(path, op, value, e) from e
            value = check(pks)
        # The slots' own setters: object.__setattr__ on a class that overrides
        # __setattr__ costs several times more, on every where().
        _SET_PATH(self, path)
        _SET_OP(self, op)
        _SET_VALUE(self, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("conditions are immutable")

    @property
    def key(self) -> str:
        """The path as written in a lookup (``a__b``)."""
        return "__".join(self.path)

    def _identity(self) -> tuple[Any, ...]:
        # Built on first comparison: most lookups are compiled, never compared.
        try:
            return self._frozen
        except AttributeError:
            frozen = (self.path, self.op, _freeze_operand(self.op, self.value))
            object.__setattr__(self, "_frozen", frozen)
            return frozen

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lookup) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __repr__(self) -> str:
        return f"Q({self.key}__{self.op}={self.value!r})"

    def lookups(self) -> Iterable[Lookup]:
        yield self

    def matches(self, record: Mapping[str, Any]) -> bool:
        return bool(_EVALUATORS[self.op](get_path(record, self.path), self.value))

    @property
    def regex(self) -> re.Pattern[str]:
        """The compiled pattern of a ``matches``/``imatches`` lookup (compiled once per pattern)."""
        return _compile_regex(self.value, self.op == "imatches")


_SET_PATH, _SET_OP, _SET_VALUE = (Lookup.__dict__[name].__set__ for name in ("path", "op", "value"))


class _Group(Condition):
    __slots__ = ("children",)
    children: tuple[Condition, ...]
    _name: ClassVar[str]

    def __init__(self, children: Iterable[Condition]) -> None:
        object.__setattr__(self, "children", tuple(children))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("conditions are immutable")

    @classmethod
    def of(cls, *conditions: Condition) -> Condition:
        """Combine, flattening nested groups of the same type."""
        flat: list[Condition] = []
        for c in conditions:
            for child in c.children if isinstance(c, _Group) and type(c) is cls else (c,):
                # x & x is x: repeated children only cost the engine time.
                if child not in flat:
                    flat.append(child)
        return flat[0] if len(flat) == 1 else cls(flat)

    def lookups(self) -> Iterable[Lookup]:
        for child in self.children:
            yield from child.lookups()

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Group)
            and type(other) is type(self)
            and self.children == other.children
        )

    def __hash__(self) -> int:
        return hash((self._name, self.children))

    def __repr__(self) -> str:
        if not self.children:
            return f"{self._name}()"
        sep = f" {'&' if self._name == 'And' else '|'} "
        return "(" + sep.join(map(repr, self.children)) + ")"


class And(_Group):
    """Every child holds. ``And(())`` holds for every record."""

    __slots__ = ()
    _name = "And"

    def matches(self, record: Mapping[str, Any]) -> bool:
        return all(c.matches(record) for c in self.children)


class Or(_Group):
    """At least one child holds. ``Or(())`` holds for no record."""

    __slots__ = ()
    _name = "Or"

    def matches(self, record: Mapping[str, Any]) -> bool:
        return any(c.matches(record) for c in self.children)


class Not(Condition):
    """The exact Boolean opposite of its child (two-valued logic)."""

    __slots__ = ("child",)
    child: Condition

    def __init__(self, child: Condition) -> None:
        object.__setattr__(self, "child", child)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("conditions are immutable")

    def __invert__(self) -> Condition:
        return self.child

    def matches(self, record: Mapping[str, Any]) -> bool:
        return not self.child.matches(record)

    def lookups(self) -> Iterable[Lookup]:
        return self.child.lookups()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Not) and self.child == other.child

    def __hash__(self) -> int:
        return hash(("Not", self.child))

    def __repr__(self) -> str:
        return f"~{self.child!r}"


#: The condition every record satisfies.
ALL: Final[Condition] = And(())


def Q(*conditions: Condition, **lookups: Any) -> Condition:
    """Build a condition from lookups (``Q(age__gte=18, name="Ann")``), all ANDed."""
    return combine(conditions, lookups)


def combine(conditions: tuple[Condition, ...], lookups: dict[str, Any]) -> Condition:
    """What ``Q(*conditions, **lookups)`` builds (for callers that hold them already)."""
    if not conditions and len(lookups) == 1:
        # The common where(field=value): no list, no And.
        for key, value in lookups.items():
            path, op = _split_key(key)
            return Lookup(path, op, value)
    parts = list(conditions)
    for c in parts:
        if not isinstance(c, Condition):
            raise InvalidQuery(f"Q() takes conditions and lookups, not {c!r}")
    parts.extend(parse_key(key, value) for key, value in lookups.items())
    if len(parts) == 1:
        return parts[0]
    return And.of(*parts) if parts else ALL


def parse_key(key: str, value: Any) -> Lookup:
    """Parse ``path__op=value`` into a :class:`Lookup`, validating it."""
    path, op = _split_key(key)
    return Lookup(path, op, value)


@functools.lru_cache(maxsize=4096)
def _split_key(key: str) -> tuple[tuple[str, ...], str]:
    # Programs repeat the same few keys: parse each once (errors are not cached).
    parts = key.split("__")
    if any(not p for p in parts):
        raise InvalidQuery(f"lookup {key!r} has an empty path part")
    if len(parts) >= 2 and parts[-1] in _OP_SET:
        return tuple(parts[:-1]), parts[-1]
    if len(parts) >= 2 and parts[-1] in _FOREIGN_OPS:
        field = "__".join(parts[:-1])
        spelling = _FOREIGN_OPS[parts[-1]].format(field=field)
        raise InvalidQuery(
            f"lookup {key!r}: {parts[-1]!r} is not a pymodels op; write {spelling} "
            f"(to reach a key named {parts[-1]!r} write {key}__equals)"
        )
    if len(parts) >= 2:
        near = _near_op(parts[-1])
        if near is not None:
            raise InvalidQuery(
                f"lookup {key!r}: {parts[-1]!r} is not an op; did you mean {near!r}? "
                f"(to reach a key named {parts[-1]!r} write {key}__equals)"
            )
    return tuple(parts), "equals"


#: Op names of Django and MongoDB that pymodels spells otherwise: name -> the spelling.
#: As a last part after ``__`` they raise InvalidQuery with it, as one-edit typos of
#: ops do; ``__equals`` still reaches a nested key of that name.
_FOREIGN_OPS: Final = {
    "ne": "where_not({field}=...)",
    "neq": "where_not({field}=...)",
    "nin": "where_not({field}__in=[...])",
    "notin": "where_not({field}__in=[...])",
    "not_in": "where_not({field}__in=[...])",
    "eq": "{field}=... (or {field}__equals=...)",
    "exact": "{field}=... (or {field}__equals=...)",
    "iexact": "{field}__iequals=...",
    "isnull": "{field}__exists=False (isnull=True) or {field}__exists=True",
    "regex": "{field}__matches=...",
    "iregex": "{field}__imatches=...",
    "range": "{field}__between=(low, high)",
    "has_key": "{field}__KEY__exists=True",
}


def parse_path(name: str) -> tuple[str, ...]:
    """Parse a path as given to ``order_by`` or ``values`` (``a__b``)."""
    if not isinstance(name, str) or not name:
        raise InvalidQuery(f"a field path must be a non-empty str, not {name!r}")
    parts = tuple(name.split("__"))
    if any(not p for p in parts):
        raise InvalidQuery(f"path {name!r} has an empty part")
    return parts


def _near_op(word: str) -> str | None:
    return next((op for op in OPS if one_edit(word, op)), None)


def one_edit(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` differ by exactly one insertion, deletion or substitution."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) == 1
    short, long = sorted((a, b), key=len)
    i = next((i for i, (x, y) in enumerate(zip(short, long, strict=False)) if x != y), len(short))
    return short[i:] == long[i + 1 :]


# -- value checks at build time ----------------------------------------------


class _Expected(Exception):
    """A lookup value of the wrong form; the message says what the op takes."""


_NO_DOCUMENT: Final[Any] = object()
_PK_OPS: Final = frozenset({"equals", "contains", "in", "contains_all", "contains_any"})


def _documents_as_pks(path: tuple[str, ...], op: str, value: Any) -> Any:
    """``value`` with saved documents replaced by their pks (``_NO_DOCUMENT``: none there).

    An unsaved document has no pk to match: InvalidQuery says so.
    """

    def pk_of(v: Any) -> Any:
        if not isinstance(v, Referable):
            return v
        if v.pk is None:
            raise InvalidQuery(
                f"lookup {'__'.join(path)}__{op}: the {type(v).__name__} given is not saved, "
                "so it has no pk to match; save it first"
            )
        return v.pk

    if op not in _PK_OPS:
        return _NO_DOCUMENT
    if isinstance(value, Referable):
        return pk_of(value)
    if type(value) in (list, tuple) and any(isinstance(v, Referable) for v in value):
        return type(value)(pk_of(v) for v in value)
    return _NO_DOCUMENT


def _invalid_value(path: tuple[str, ...], op: str, value: Any, error: Exception) -> InvalidQuery:
    where = f"{'__'.join(path)}__{op}"
    if isinstance(error, _Expected):
        return InvalidQuery(f"lookup {where} takes {error}, not {value!r}")
    if value is None:
        return InvalidQuery(f"lookup {where}: {_NONE_IS_NO_VALUE}")
    return InvalidQuery(f"lookup {where}: {error}")


_NONE_IS_NO_VALUE: Final = "None is not a value; to match absent fields use exists"


def _domain(value: Any) -> Any:
    if value is None:
        raise ValidationError(_NONE_IS_NO_VALUE)
    return validate_value(value)


def _check_bool(value: Any) -> Any:
    if type(value) is not bool:
        raise _Expected("True or False")
    return value


def _check_int(value: Any) -> Any:
    if type(value) is not int:
        raise _Expected("an int")
    return value


def _check_str(value: Any) -> Any:
    if type(value) is not str:
        raise _Expected("a str")
    return validate_value(value)


def _check_regex(ignore_case: bool) -> Any:
    def check(value: Any) -> Any:
        value = _check_str(value)
        _compile_regex(value, ignore_case)
        return value

    return check


def _check_values(value: Any) -> Any:
    if type(value) not in (list, tuple):
        raise _Expected("a list of values")
    return tuple(_domain(v) for v in value)


def _check_between(value: Any) -> Any:
    if type(value) not in (list, tuple) or len(value) != 2:
        raise _Expected("a (low, high) pair")
    low, high = (_domain(v) for v in value)
    if kind_of(low) not in ORDERED_KINDS or kind_of(low) != kind_of(high):
        raise _Expected("two ordered values of one kind")
    return (low, high)


def _check_ordered(value: Any) -> Any:
    value = _domain(value)
    if kind_of(value) not in ORDERED_KINDS:
        raise _Expected("a number, Decimal, str, bytes, date or datetime")
    return value


#: op -> the check of its value, returning the value as the lookup keeps it.
_CHECKS: Final[dict[str, Any]] = {
    # validate_value itself refuses None; _invalid_value words that error for a query.
    "equals": validate_value,
    "contains": validate_value,
    "exists": _check_bool,
    **dict.fromkeys(_DATE_PARTS, _check_int),
    **dict.fromkeys(_STR_OPS - {"matches", "imatches"}, _check_str),
    "matches": _check_regex(False),
    "imatches": _check_regex(True),
    **dict.fromkeys(("in", "contains_all", "contains_any"), _check_values),
    "between": _check_between,
    **dict.fromkeys(_CMP_OPS, _check_ordered),
}


def _freeze_operand(op: str, value: Any) -> Any:
    if op in ("in", "contains_all", "contains_any", "between"):
        return tuple(freeze(v) for v in value)
    return freeze(value)


@functools.lru_cache(maxsize=512)
def _compile_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as e:
        raise ValidationError(f"invalid regular expression {pattern!r}: {e}") from e


# -- evaluation (the reference semantics) --------------------------------------


def _comparable(a: Any, b: Any) -> bool:
    return a is not MISSING and kind_of(a) == kind_of(b) and kind_of(a) in ORDERED_KINDS


def _contains(field: Any, item: Any) -> bool:
    if type(field) is str:
        return type(item) is str and item in field
    if type(field) is list:
        return any(strict_equal(e, item) for e in field)
    return False


def _is_date(v: Any) -> bool:
    return type(v) in (datetime.date, datetime.datetime)


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _str_op(fn: Any) -> Any:
    return lambda f, v: type(f) is str and fn(f, v)


_EVALUATORS: Final[dict[str, Any]] = {
    "equals": lambda f, v: f is not MISSING and strict_equal(f, v),
    "exists": lambda f, v: (f is not MISSING) is v,
    "gt": lambda f, v: _comparable(f, v) and f > v,
    "gte": lambda f, v: _comparable(f, v) and f >= v,
    "lt": lambda f, v: _comparable(f, v) and f < v,
    "lte": lambda f, v: _comparable(f, v) and f <= v,
    "between": lambda f, v: _comparable(f, v[0]) and v[0] <= f <= v[1],
    "in": lambda f, v: f is not MISSING and any(strict_equal(f, x) for x in v),
    "contains": lambda f, v: _contains(f, v),
    "contains_all": lambda f, v: type(f) in (str, list) and all(_contains(f, x) for x in v),
    "contains_any": lambda f, v: any(_contains(f, x) for x in v),
    "startswith": _str_op(lambda f, v: f.startswith(v)),
    "endswith": _str_op(lambda f, v: f.endswith(v)),
    "iequals": _str_op(lambda f, v: f.lower() == v.lower()),
    "icontains": _str_op(lambda f, v: v.lower() in f.lower()),
    "istartswith": _str_op(lambda f, v: f.lower().startswith(v.lower())),
    "iendswith": _str_op(lambda f, v: f.lower().endswith(v.lower())),
    "matches": _str_op(lambda f, v: _compile_regex(v, False).search(f) is not None),
    "imatches": _str_op(lambda f, v: _compile_regex(v, True).search(f) is not None),
    "year": lambda f, v: _is_date(f) and f.year == v,
    "month": lambda f, v: _is_date(f) and f.month == v,
    "day": lambda f, v: _is_date(f) and f.day == v,
    "like": _str_op(lambda f, v: _words(v) <= _words(f)),
}


# -- fast tests: the same decisions in fewer calls ------------------------------

#: The ordering comparisons, as functions of (stored value, operand).
COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def record_test(cond: Condition) -> Callable[[Mapping[str, Any]], bool]:
    """A function deciding exactly what ``cond.matches`` decides, in fewer calls.

    For checking many records against one condition (a scan, a count, what an
    engine could not filter). The common leaves at a top-level field (equality,
    comparisons and ``in`` with str or number operands, ``startswith``,
    ``exists``) get a test that skips the generic evaluator's calls (a path
    walk, three kind lookups), and ``And``, ``Or`` and ``Not`` combine their
    children's tests; they decide as the evaluator does (a str equals only a
    str; a number only an int or a float, never a bool or a Decimal). Anything
    else is ``cond.matches`` itself.
    """
    if type(cond) is Lookup:
        if len(cond.path) == 1:
            leaf = _leaf_test(cond.path[0], cond.op, cond.value)
            if leaf is not None:
                return leaf
        return cond.matches
    if type(cond) is And or type(cond) is Or:
        if not cond.children:
            return cond.matches
        tests = [record_test(c) for c in cond.children]
        if len(tests) == 1:
            return tests[0]
        if type(cond) is And:
            if len(tests) == 2:
                a, b = tests
                return lambda r: a(r) and b(r)
            return lambda r: all(test(r) for test in tests)
        if len(tests) == 2:
            a, b = tests
            return lambda r: a(r) or b(r)
        return lambda r: any(test(r) for test in tests)
    if type(cond) is Not:
        inner = record_test(cond.child)
        return lambda r: not inner(r)
    return cond.matches


def _leaf_test(name: str, op: str, value: Any) -> Callable[[Mapping[str, Any]], bool] | None:
    """:func:`record_test` of a lookup at the top-level field ``name``; ``None``
    where only the generic evaluator decides."""
    t = type(value)
    if op == "equals":
        if t is str:
            return lambda r: r.get(name) == value
        if t is int or t is float:
            return lambda r: (x := r.get(name)) == value and (type(x) is int or type(x) is float)
    elif op in COMPARISONS:
        cmp = COMPARISONS[op]
        if t is str:
            return lambda r: type(x := r.get(name)) is str and cmp(x, value)
        if t is int or t is float:
            return lambda r: (type(x := r.get(name)) is int or type(x) is float) and cmp(x, value)
    elif op == "in":
        kinds = set(map(type, value))
        # A set of the operands: int and float hash alike when equal (1 and 1.0),
        # as strict equality has them; a stored value of another type never tests.
        if kinds == {str}:
            strs = frozenset(value)
            return lambda r: type(x := r.get(name)) is str and x in strs
        if kinds and kinds <= {int, float}:
            numbers = frozenset(value)
            return lambda r: (type(x := r.get(name)) is int or type(x) is float) and x in numbers
    elif op == "startswith":
        return lambda r: type(x := r.get(name)) is str and x.startswith(value)
    elif op == "exists":
        # get_path reads only dicts: a record of another mapping type has no fields.
        if value:
            return lambda r: type(r) is dict and name in r
        return lambda r: type(r) is not dict or name not in r
    return None

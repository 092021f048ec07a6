"""Documents: pydantic models that are views over stored records.

A :class:`Document` subclass declares fields with type hints. A record belongs
to the class when it has every required field and matches ``Meta.must_have``
and none of ``Meta.must_not_have``; ``DocClass.objects(storage)`` queries
exactly the members. Loading validates in strict mode and keeps fields the
class does not declare, so saving writes them back as they were.

A field typed as another Document class is a *reference*: the record holds
the other document's pk, and the loaded document holds a placeholder instance
of the referenced class that loads itself from the same storage on first
attribute access.

Storages and queries meet documents at one small interface, the functions at
the end of this module: :func:`from_record` turns a record into a document,
:func:`is_member`/:func:`membership` say which records a class covers,
:func:`plan_save` turns a document (and the unsaved documents it references)
into the records a save writes, and :func:`mark_saved` gives the documents
their pks and versions once written; :func:`check_lookup` and
:func:`check_changes` hold queries and updates against a class's
declarations, and :func:`creation_data`/:func:`new_document` build what
``get_or_create`` creates. ``storage.py`` and ``query.py`` use no
other private name of this module.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import decimal
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple, Self, Union

import pydantic
from pydantic import Field

from . import codec
from .changes import Change
from .conditions import ALL, And, Condition, Lookup, Not, Q, one_edit, parse_key
from .errors import ConfigurationError, ConflictError, InvalidQuery, PyModelsError, ValidationError
from .values import MISSING, Referable, check_field_name, kind_of, strict_equal, validate_value

if TYPE_CHECKING:
    from .query import BaseQuery
    from .storage import BaseStorage

__all__ = [
    "Document",
    "Field",
    "Model",
    "SavePlan",
    "Write",
    "check_changes",
    "check_lookup",
    "check_query_path",
    "creation_data",
    "declared_types",
    "from_record",
    "index_entries",
    "is_member",
    "mark_saved",
    "membership",
    "new_document",
    "plan_save",
    "record_loader",
    "stored_values",
]

D = typing.TypeVar("D", bound="Document")

#: Names a Document subclass cannot declare: they are the document API.
RESERVED = frozenset(
    {"pk", "save", "delete", "objects", "object", "get", "keys", "items", "values", "Meta"}
)


class _Meta:
    """The merged ``Meta`` of a Document class (parents first, then the child)."""

    def __init__(self, cls: type[Document]) -> None:
        self.must_have: dict[str, Any] = {}
        self.must_not_have: dict[str, Any] = {}
        self.indexes: list[Any] = []
        self.version_field: str | None = None
        for klass in reversed(cls.__mro__):
            meta = klass.__dict__.get("Meta")
            if meta is None:
                continue
            self.must_have.update(getattr(meta, "must_have", {}) or {})
            self.must_not_have.update(getattr(meta, "must_not_have", {}) or {})
            for entry in getattr(meta, "indexes", ()) or ():
                if entry not in self.indexes:
                    self.indexes.append(entry)
            self.version_field = getattr(meta, "version_field", self.version_field)
        try:
            self.must_have_condition = Q(**self.must_have)
            self.must_not_have_conditions = [Q(**{k: v}) for k, v in self.must_not_have.items()]
        except InvalidQuery as e:
            raise ConfigurationError(f"{cls.__name__}.Meta: {e}") from e
        if self.version_field is not None:
            check_field_name(self.version_field)


#: What a document knows beyond its fields, one slot each, and the value of a
#: slot never set. Slots, not pydantic private attributes: loading builds many
#: documents, and every extra object per document is more work for the
#: garbage collector (a private-attribute dict and a state object were two).
_STATE_DEFAULTS: dict[str, Any] = {
    "_pk": None,
    "_storage": None,
    # Stored fields the class does not declare (the whole record for free-form documents).
    "_extra": None,
    # None: never loaded or saved; else the stored version value (maybe MISSING).
    "_version": None,
    # Loaded with only(): such a document cannot be saved.
    "_partial": False,
    # (storage, pk) while the document is an unloaded reference.
    "_lazy": None,
}

#: What pydantic's own slots read as in documents built without validation (free-form
#: ones and unloaded references), which leave them unset: setting three slots per
#: document costs more than answering the rare read. The field set is shared and
#: never mutated (such a document has no declared field to assign).
_PYDANTIC_UNSET: dict[str, Any] = {
    "__pydantic_fields_set__": frozenset(),
    "__pydantic_extra__": None,
    "__pydantic_private__": None,
}

_set = object.__setattr__

#: Document class -> its membership test (None: every record is a member), built on first use.
_MEMBER_TESTS: dict[type, Any] = {}
#: Document class -> (declares no field, its Meta.version_field): what loading asks first.
_LOAD_INFO: dict[type, tuple[bool, str | None]] = {}
_new = object.__new__
_UNSET: Any = object()


class Document(pydantic.BaseModel, Referable):
    """A record as a validated Python object; subclass it to declare fields."""

    model_config = pydantic.ConfigDict(
        extra="forbid",
        # Strict everywhere: in lax mode a union such as ``int | None`` would
        # still coerce "7" to 7 even when validation is asked to be strict.
        strict=True,
        validate_assignment=True,
        arbitrary_types_allowed=False,
        revalidate_instances="never",
    )

    __slots__ = tuple(_STATE_DEFAULTS)
    if TYPE_CHECKING:
        _pk: str | None
        _storage: BaseStorage | None
        _extra: dict[str, Any]
        _version: Any
        _partial: bool
        _lazy: tuple[BaseStorage | None, str] | None

    __pymodels_meta__: ClassVar[_Meta | None] = None

    # ------------------------------------------------------- class set-up

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in inspect.get_annotations(cls):
            if name in RESERVED or name.startswith(("_", "model_")):
                raise ConfigurationError(
                    f"{cls.__name__} cannot declare a field named {name!r}: "
                    "the name belongs to the document API"
                )
            check_field_name(name)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as e:
            raise _wrap(type(self), e, None) from e
        _set(self, "_extra", {})

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _STATE_DEFAULTS:
            _set(self, name, value)
            return
        if name.startswith("_"):
            super().__setattr__(name, value)
            return
        self._ensure_loaded()
        try:
            super().__setattr__(name, value)
        except pydantic.ValidationError as e:
            raise _wrap(type(self), e, self._pk) from e
        except (AttributeError, ValueError) as e:
            raise ValidationError(
                f"{type(self).__name__} has no field {name!r} (use doc[{name!r}] = ... "
                "to set an undeclared one)",
                field=name,
            ) from e

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: an unset state slot, a field
        # of an unloaded or partial document, or an undeclared stored field.
        if name in _STATE_DEFAULTS:
            if name == "_extra":
                extra: dict[str, Any] = {}
                _set(self, "_extra", extra)
                return extra
            return _STATE_DEFAULTS[name]
        if name in _PYDANTIC_UNSET:
            return _PYDANTIC_UNSET[name]
        if not name.startswith("_"):
            if name in type(self).__pydantic_fields__:
                if self._lazy is not None:
                    self._ensure_loaded()
                    return self.__dict__[name]
                if self._partial:
                    raise AttributeError(f"{name!r} was not loaded (the query used only())")
            elif name in self._extra:
                return self._extra[name]
        return super().__getattr__(name)  # type: ignore[misc]

    @classmethod
    def _meta(cls) -> _Meta:
        meta = cls.__dict__.get("__pymodels_meta__")
        if meta is None:
            meta = _Meta(cls)
            type.__setattr__(cls, "__pymodels_meta__", meta)
        return meta

    @classmethod
    def _membership(cls) -> Condition:
        """The condition that selects this class's members (see :func:`membership`)."""
        return membership(cls)

    @classmethod
    def _is_member(cls, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` belongs to this class (see :func:`is_member`)."""
        return is_member(cls, record)

    @classmethod
    @functools.cache
    def _references(cls) -> dict[str, tuple[type[Document], bool]]:
        """Reference fields: name -> (target class, is a list)."""
        refs: dict[str, tuple[type[Document], bool]] = {}
        for name, info in cls.model_fields.items():
            target = _reference_target(info.annotation)
            if target is not None:
                refs[name] = target
        return refs

    @classmethod
    def _from_storage(
        cls,
        storage: BaseStorage | None,
        pk: str | None,
        record: dict[str, Any],
        partial: bool = False,
    ) -> Self:
        """The document a record stands for (see :func:`from_record`)."""
        return from_record(cls, storage, pk, record, partial)

    @classmethod
    def _partial_instance(cls, declared: dict[str, Any]) -> Self:
        values = {
            name: _strict_adapter(cls, name).validate_python(value, strict=True)
            for name, value in declared.items()
        }
        doc = typing.cast(Self, cls.model_construct(**values))
        for name in set(cls.__pydantic_fields__) - set(values):
            doc.__dict__.pop(name, None)
        return doc

    @classmethod
    def _placeholder(cls, storage: BaseStorage | None, pk: str) -> Self:
        """An unloaded instance standing for the record ``pk`` (a lazy reference)."""
        doc = cls.__new__(cls)
        _set(doc, "_pk", pk)
        _set(doc, "_storage", storage)
        _set(doc, "_lazy", (storage, pk))
        return doc

    def _ensure_loaded(self) -> None:
        lazy = self._lazy
        if lazy is None:
            return
        storage, pk = lazy
        if storage is None:
            raise PyModelsError(f"reference {type(self).__name__} {pk!r} has no storage")
        self._adopt(storage.get(type(self), pk))

    def _adopt(self, other: Document) -> None:
        """Become ``other``: its fields, its field set and its state."""
        _set(self, "__dict__", other.__dict__)
        _set(self, "__pydantic_fields_set__", other.__pydantic_fields_set__)
        for name in _STATE_DEFAULTS:
            _set(self, name, getattr(other, name))

    def __copy__(self) -> Self:
        new = super().__copy__()
        for name in _STATE_DEFAULTS:
            _set(new, name, getattr(self, name))
        _set(new, "_extra", dict(self._extra))
        return new

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        new = super().__deepcopy__(memo)
        for name in _STATE_DEFAULTS:
            _set(new, name, getattr(self, name))
        _set(new, "_extra", copy.deepcopy(self._extra, memo))
        return new

    def __getstate__(self) -> dict[Any, Any]:
        # The storage (connections, locks) does not travel: an unpickled
        # document keeps its pk and values and is saved with save(storage).
        self._ensure_loaded()
        state = super().__getstate__()
        state["__pymodels__"] = (self._pk, self._extra, self._version, self._partial)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        pk, extra, version, partial = state.pop("__pymodels__")
        super().__setstate__(state)
        _set(self, "_pk", pk)
        _set(self, "_extra", extra)
        _set(self, "_version", version)
        _set(self, "_partial", partial)

    def __eq__(self, other: object) -> bool:
        """Same class, same pk and the same stored values."""
        if not isinstance(other, Document):
            return NotImplemented
        return (
            type(self) is type(other)
            and self._pk == other._pk
            # The contract's equality: 1, 1.0 and True are not the same stored value.
            and strict_equal(dict(self.items()), dict(other.items()))
        )

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------- saving

    def _to_record(self) -> dict[str, Any]:
        """The record this document stores (references as pks), validated."""
        return _record_of(self, None)

    # ------------------------------------------------------- public API

    @property
    def pk(self) -> str | None:
        """The primary key, None until saved."""
        return self._pk

    def save(self, storage: BaseStorage | None = None) -> str:
        """Save to ``storage`` (default: where it was loaded from or last saved); return the pk."""
        target = storage if storage is not None else self._storage
        if target is None:
            raise PyModelsError(
                f"{type(self).__name__}.save() needs a storage: this document was never "
                "loaded or saved"
            )
        pk: str = target.save(self)
        return pk

    def delete(self) -> None:
        """Delete this document's record from its storage."""
        if self._pk is None or self._storage is None:
            raise PyModelsError(f"{type(self).__name__} was never saved: nothing to delete")
        self._storage.delete(self._pk)

    @classmethod
    def objects(cls, storage: BaseStorage) -> BaseQuery[Self]:
        """The query of every member of this class in ``storage``."""
        return storage.query(cls)

    @classmethod
    def object(cls, storage: BaseStorage, pk: str) -> Self:
        """The member under ``pk``; :class:`DoesNotExist` otherwise."""
        return storage.get(cls, pk)

    @classmethod
    def get_or_create(
        cls, storage: BaseStorage, defaults: Mapping[str, Any] | None = None, **lookups: Any
    ) -> tuple[Self, bool]:
        """The first member matching ``lookups`` and False, or a new one saved from them and True.

        Lookups are equalities only (``name="x"``, ``name__equals="x"``,
        ``address__city="Oulu"``; any other op raises :class:`InvalidQuery`
        naming it); a new document takes its fields from them, then from
        ``defaults``. Atomic where the engine can make it so (see
        :meth:`BaseStorage.get_or_create <pymodels.storage.BaseStorage.get_or_create>`).
        """
        return storage.get_or_create(cls, defaults, **lookups)

    # ---- the mapping view of the stored values

    def _stored(self, key: str) -> Any:
        if key in type(self).__pydantic_fields__:
            self._ensure_loaded()
            value = self.__dict__.get(key)
            if value is None:
                return MISSING
            refs = type(self)._references()
            if key in refs:
                many = refs[key][1]
                return [v.pk for v in value] if many else value.pk
            return value
        return self._extra.get(key, MISSING)

    def __getitem__(self, key: str) -> Any:
        value = self._stored(key)
        if value is MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        if key in type(self).__pydantic_fields__:
            setattr(self, key, value)
            return
        check_field_name(key)
        if value is None:
            self._extra.pop(key, None)
        else:
            self._extra[key] = validate_value(value, key)

    def __delitem__(self, key: str) -> None:
        if key in type(self).__pydantic_fields__:
            setattr(self, key, None)
        elif self._extra.pop(key, MISSING) is MISSING:
            raise KeyError(key)

    def __contains__(self, key: Any) -> bool:
        return isinstance(key, str) and self._stored(key) is not MISSING

    def keys(self) -> list[str]:
        """Names of the stored fields: declared ones that are set, then undeclared ones."""
        self._ensure_loaded()
        # __pydantic_fields__: model_fields without the property's cost (a per-call
        # descriptor: about half of dict(doc) for a plain record).
        fields = type(self).__pydantic_fields__
        if not fields:
            return list(self._extra)
        names = [n for n in fields if self.__dict__.get(n) is not None]
        return names + [n for n in self._extra if n not in fields]

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]
        return iter(self.keys())

    def values(self) -> list[Any]:
        """The stored values, aligned with :meth:`keys`."""
        return [self[k] for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        """``(name, value)`` pairs of the stored values."""
        return [(k, self[k]) for k in self.keys()]

    def get(self, key: str, default: Any = None) -> Any:
        """The stored value of ``key``, or ``default``."""
        value = self._stored(key)
        return default if value is MISSING else value

    def __len__(self) -> int:
        return len(self.keys())

    # ---- interchange

    def to_json(self) -> str:
        """This document as tagged JSON (every value kind survives; ``$pk`` holds the pk)."""
        record = self._to_record()
        if self._pk is not None:
            return codec.dumps({"$pk": self._pk, **record})
        return codec.dumps(record)

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        """A document from :meth:`to_json` output (validated strictly, extras kept)."""
        record = codec.loads(text)
        if not isinstance(record, dict):
            raise ValidationError("document JSON must be an object")
        pk = record.pop("$pk", None)
        return from_record(cls, None, pk, record)

    def __repr__(self) -> str:
        name = type(self).__name__
        if self._lazy is not None:
            return f"<{name} pk={self._pk!r} (not loaded)>"
        shown = ", ".join(f"{k}={v!r}" for k, v in self.items())
        pk = f"pk={self._pk!r}" + (", " if shown else "")
        return f"<{name} {pk}{shown}>"

    __str__ = __repr__


#: The library's oldest name for :class:`Document`.
Model = Document


# ---------------------------------------------------------------------- helpers


# The slots' own setters: object.__setattr__ on a pydantic model costs several
# times more, and _attach runs once for every document a query returns.
_SET_PK, _SET_STORAGE, _SET_EXTRA, _SET_VERSION = (
    Document.__dict__[name].__set__ for name in ("_pk", "_storage", "_extra", "_version")
)
#: The slot setters that make a free-form document of a stored record: its pk, storage
#: and fields (the record itself), as from_record sets them; for storage.get's fast path.
FREE_FORM_SETTERS: Final = (_SET_PK, _SET_STORAGE, _SET_EXTRA)


def _attach(
    doc: D,
    storage: BaseStorage | None,
    pk: str | None,
    extra: dict[str, Any],
    record: Mapping[str, Any],
    version_field: str | None,
    partial: bool,
) -> D:
    """Give a document built from ``record`` its state (slots left unset read as defaults)."""
    _SET_PK(doc, pk)
    _SET_STORAGE(doc, storage)
    _SET_EXTRA(doc, extra)
    if version_field is not None:
        _SET_VERSION(doc, record.get(version_field, MISSING))
    if partial:
        _set(doc, "_partial", True)
    return doc


def _wrap(cls: type[Document], error: pydantic.ValidationError, pk: str | None) -> ValidationError:
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    where = f"{cls.__name__} {pk!r}" if pk is not None else cls.__name__
    details = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(document)'}: {err['msg']}"
        for err in error.errors()
    )
    return ValidationError(f"{where}: {details}", field=field, pk=pk)


def _ref_pk(value: Any, field: str, pks: Mapping[int, str] | None) -> str:
    if not isinstance(value, Document):
        raise ValidationError(
            f"{field}: expected a document, not {type(value).__name__}", field=field
        )
    # A pk given in this save (to an unsaved document, or to the one saved
    # under a new pk) wins over the one the document holds.
    pk = pks.get(id(value)) if pks else None
    if pk is None:
        pk = value.pk
    if pk is None:
        raise ValidationError(f"{field}: the referenced document is not saved", field=field)
    return pk


def _strip_optional(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _strip_optional(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                out.extend(_strip_optional(arg))
        return out
    return [annotation]


def _reference_target(annotation: Any) -> tuple[type[Document], bool] | None:
    options = _strip_optional(annotation)
    if len(options) != 1:
        return None
    ann = options[0]
    if isinstance(ann, type) and issubclass(ann, Document):
        return ann, False
    if typing.get_origin(ann) is list:
        args = typing.get_args(ann)
        if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], Document):
            return args[0], True
    return None


def _allows_nesting(annotation: Any) -> bool:
    for option in _strip_optional(annotation):
        if option is Any or option is object:
            return True
        origin = typing.get_origin(option) or option
        if isinstance(origin, type) and issubclass(origin, Mapping):
            return True
    return False


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)


@functools.cache
def _strict_adapter(
    cls: type[Document], name: str, constraints: bool = False
) -> pydantic.TypeAdapter[Any]:
    """A validator for one declared field (only() projections; with its constraints: updates)."""
    info = cls.model_fields[name]
    annotation: Any = info.annotation or Any
    if constraints and info.metadata:
        annotation = typing.Annotated[annotation, *info.metadata]
    return pydantic.TypeAdapter(annotation)


@functools.cache
def _near_field(cls: type[Document], name: str) -> str | None:
    """A declared field one edit away from the undeclared ``name``, if any."""
    # Names shorter than three letters are one edit from too much (``x``, ``y``).
    if len(name) < 3:
        return None
    return next((f for f in cls.__pydantic_fields__ if len(f) >= 3 and _typo_of(name, f)), None)


def _typo_of(name: str, field: str) -> bool:
    """One insertion, deletion, substitution or swap of neighbours (``nmae``) apart."""
    if one_edit(name, field):
        return True
    if len(name) != len(field):
        return False
    diff = [i for i, (a, b) in enumerate(zip(name, field, strict=True)) if a != b]
    return (
        len(diff) == 2
        and diff[1] == diff[0] + 1
        and name[diff[0]] == field[diff[1]]
        and name[diff[1]] == field[diff[0]]
    )


#: Python types whose values are of one contract kind (datetime: naive or aware).
_TYPE_KINDS: dict[Any, frozenset[str]] = {
    bool: frozenset({"bool"}),
    int: frozenset({"number"}),
    float: frozenset({"number"}),
    str: frozenset({"str"}),
    decimal.Decimal: frozenset({"decimal"}),
    bytes: frozenset({"bytes"}),
    datetime.datetime: frozenset({"datetime", "datetime_tz"}),
    datetime.date: frozenset({"date"}),
    list: frozenset({"list"}),
    dict: frozenset({"dict"}),
}
_DATE_KINDS: frozenset[str] = frozenset({"date", "datetime", "datetime_tz"})
_STR_FIELD_OPS: frozenset[str] = frozenset(
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


#: (class, declared field) -> :func:`_field_kinds` of it, worked out on first use.
_KINDS: dict[tuple[type, str], frozenset[str] | None] = {}
#: Ops whose value a field's kinds must include.
_SCALAR_OPS: frozenset[str] = frozenset({"equals", "gt", "gte", "lt", "lte"})


def _field_kinds(annotation: Any) -> frozenset[str] | None:
    """The value kinds a field declared so can hold; None when the type does not say."""
    kinds: set[str] = set()
    for option in _strip_optional(annotation):
        origin = typing.get_origin(option) or option
        if origin is typing.Literal:
            for arg in typing.get_args(option):
                if type(arg) not in _TYPE_KINDS:
                    return None
                kinds |= _TYPE_KINDS[type(arg)]
        elif isinstance(origin, type) and issubclass(origin, Document):
            kinds.add("str")  # a reference holds the pk
        elif origin in _TYPE_KINDS:
            kinds |= _TYPE_KINDS[origin]
        elif isinstance(origin, type) and issubclass(origin, Mapping):
            kinds.add("dict")
        else:
            return None  # Any, enums, custom types: the type does not say
    return frozenset(kinds)


def _kind_problem(op: str, value: Any, kinds: frozenset[str]) -> str | None:
    """Why a lookup ``op=value`` can never match a field holding ``kinds`` (None: it can)."""

    def never(v: Any) -> str | None:
        kind = kind_of(v)
        if kind in kinds:
            return None
        hint = ""
        if kind == "str" and "number" in kinds:
            with contextlib.suppress(ValueError):
                hint = f"; did you mean {int(v) if v.strip().isdigit() else float(v)!r}?"
        return f"{v!r} (a {kind}) can never match{hint}"

    if op in ("equals", "gt", "gte", "lt", "lte"):
        return never(value)
    if op == "between":
        return never(value[0])
    if op == "in":
        return next((p for p in map(never, value) if p is not None), None)
    if op in _STR_FIELD_OPS:
        return None if "str" in kinds else f"{op} (an op on str fields) can never match"
    if op in ("year", "month", "day"):
        if kinds & _DATE_KINDS:
            return None
        return f"{op} (an op on dates and datetimes) can never match"
    if op in ("contains", "contains_all", "contains_any"):
        if "list" in kinds:
            return None
        if "str" not in kinds:
            return f"{op} (an op on str and list fields) can never match"
        values = value if op != "contains" else (value,)
        bad = next((v for v in values if type(v) is not str), None)
        return None if bad is None else f"{op} {bad!r} (not a str) can never match"
    return None


def _item_annotation(annotation: Any) -> Any:
    """The type of a dict field's values (Any when open), or None when it holds no dict."""
    for option in _strip_optional(annotation):
        if option is Any or option is object:
            return Any
        origin = typing.get_origin(option) or option
        if isinstance(origin, type) and issubclass(origin, Mapping):
            args = typing.get_args(option)
            return args[1] if len(args) == 2 else Any
    return None


def _check_change(cls: type[Document], path: tuple[str, ...], op: str, value: Any) -> Any:
    """One change of a typed ``update``, validated against the declared field (see check_changes).

    ``op`` is ``set``, ``unset`` or ``inc``. Return the value to store (a
    ``float`` field given an int stores a float, as saving does); raise
    :class:`ValidationError` naming the field. Undeclared fields take any
    value, as records may hold them.
    """
    fields = cls.__pydantic_fields__
    key = "__".join(path)
    if not fields:
        return value
    info = fields.get(path[0])
    if info is None:
        near = _near_field(cls, path[0])
        if near is not None:
            raise ValidationError(
                f"update {key}: {cls.__name__} declares no field {path[0]!r}; did you "
                f"mean {near!r}? (storage.query().update(...) writes undeclared fields)",
                field=key,
            )
        return value
    label = key if op == "set" else f"{key}__{op}"
    where = f"update {label}: {cls.__name__}.{path[0]}"
    annotation: Any = info.annotation
    for part in path[1:]:
        annotation = _item_annotation(annotation)
        if annotation is None:
            raise ValidationError(
                f"{where} is declared as {_type_name(info.annotation)}, so it has no key {part!r}",
                field=key,
            )
    if op == "unset":
        if len(path) == 1 and info.is_required():
            raise ValidationError(
                f"{where} is required: without it records would no longer be "
                f"{cls.__name__} members",
                field=key,
            )
        return value
    if annotation is Any:
        return value
    if op == "inc":
        kinds = _field_kinds(annotation)
        if kinds != frozenset({"number"}):
            raise ValidationError(
                f"{where}: inc needs a number field, and the field is declared as "
                f"{_type_name(annotation)}",
                field=key,
            )
        if type(value) is float and float not in _strip_optional(annotation):
            raise ValidationError(
                f"{where} is declared as {_type_name(annotation)}: inc takes an int here",
                field=key,
            )
        return value
    if len(path) == 1 and path[0] in cls._references():
        target, many = cls._references()[path[0]]
        pks_ok = type(value) is str or (
            many and type(value) is list and all(type(v) is str for v in value)
        )
        if not pks_ok:
            shape = f"a list of {target.__name__} pks" if many else f"a {target.__name__} pk"
            raise ValidationError(
                f"{where} is a reference: it takes {shape} or saved documents, not {value!r}",
                field=key,
            )
        return value
    adapter = (
        _strict_adapter(cls, path[0], constraints=True)
        if len(path) == 1
        else pydantic.TypeAdapter(annotation)
    )
    try:
        checked = adapter.validate_python(value, strict=True)
    except pydantic.ValidationError as e:
        reason = "; ".join(err["msg"] for err in e.errors())
        raise ValidationError(f"{where}: {reason} (got {value!r})", field=key) from e
    return validate_value(checked, key)


# ================================================= records: the storage seam
# What storage.py and query.py use of documents, and nothing else.


def from_record(
    cls: type[D],
    storage: BaseStorage | None,
    pk: str | None,
    record: dict[str, Any],
    partial: bool = False,
) -> D:
    """The ``cls`` document a stored record stands for, validated strictly.

    The document adopts ``record`` (free-form documents keep it as their
    fields): the caller hands over a fresh dict, as storage hooks return.
    References become unloaded documents that load from ``storage``.
    ``partial`` marks a projection (``only()``), which cannot be saved.
    """
    info = _LOAD_INFO.get(cls)
    if info is None:
        info = _load_info(cls)
    free_form, version_field = info
    if free_form:
        # Free-form documents (storage.query(), get(None, pk)) have nothing
        # to validate: every field is undeclared and kept as stored. The
        # record is the caller's to give (storage hooks return fresh ones).
        # __dict__ is left to Python, which makes an empty one on first use.
        # So are pydantic's own slots: __getattr__ answers them (_PYDANTIC_UNSET).
        doc = _new(cls)
        if version_field is None and not partial:
            # The commonest document (first(), get(None, pk)): _attach's three
            # slots set here, without its call. BaseStorage.get builds a plain
            # Document the same way itself (FREE_FORM_SETTERS): change both.
            _SET_PK(doc, pk)
            _SET_STORAGE(doc, storage)
            _SET_EXTRA(doc, record)
            return doc
        return _attach(doc, storage, pk, record, record, version_field, partial)
    declared: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    fields = cls.__pydantic_fields__
    for key, value in record.items():
        (declared if key in fields else extra)[key] = value
    for name, (target, many) in cls._references().items():
        value = declared.get(name, MISSING)
        if many and type(value) is list and all(type(v) is str for v in value):
            declared[name] = [target._placeholder(storage, v) for v in value]
        elif not many and type(value) is str:
            declared[name] = target._placeholder(storage, value)
    try:
        if partial:
            doc = cls._partial_instance(declared)
        else:
            # As BaseModel.__init__ does: model_validate would call our
            # __init__ (pydantic's custom-init path), hiding field errors.
            doc = cls.__new__(cls)
            cls.__pydantic_validator__.validate_python(declared, strict=True, self_instance=doc)
    except pydantic.ValidationError as e:
        raise _wrap(cls, e, pk) from e
    return _attach(doc, storage, pk, extra, record, version_field, partial)


def _load_info(cls: type[Document]) -> tuple[bool, str | None]:
    """Whether ``cls`` declares no field, and its version field (cached in _LOAD_INFO)."""
    info = _LOAD_INFO.get(cls)
    if info is None:
        # __pydantic_fields__: model_fields without the property's cost.
        info = _LOAD_INFO[cls] = (not cls.__pydantic_fields__, cls._meta().version_field)
    return info


def record_loader(cls: type[D], storage: BaseStorage | None) -> Callable[[str, dict[str, Any]], D]:
    """``from_record`` bound to ``cls`` and ``storage``, for a query's results.

    A free-form class without a version field (``storage.query()``, the
    commonest query) gets a constructor doing only what ``from_record`` does
    for it: no lookups or calls per document beyond setting three slots.
    """
    free_form, version_field = _load_info(cls)
    if not free_form or version_field is not None:
        return functools.partial(from_record, cls, storage)

    def load(pk: str, record: dict[str, Any]) -> D:
        # from_record's free-form branch, through _attach, inlined.
        doc: D = _new(cls)
        _SET_PK(doc, pk)
        _SET_STORAGE(doc, storage)
        _SET_EXTRA(doc, record)
        return doc

    return load


@functools.cache
def membership(cls: type[Document]) -> Condition:
    """The condition that selects the members of ``cls``: required fields and ``Meta``."""
    meta = cls._meta()
    parts: list[Condition] = [
        Q(**{f"{name}__exists": True})
        for name, info in cls.model_fields.items()
        if info.is_required()
    ]
    if meta.must_have_condition != ALL:
        parts.append(meta.must_have_condition)
    parts.extend(Not(c) for c in meta.must_not_have_conditions)
    return And.of(*parts) if parts else ALL


def is_member(cls: type[Document], record: Mapping[str, Any]) -> bool:
    """Whether ``record`` belongs to ``cls`` (matches :func:`membership`)."""
    test = _MEMBER_TESTS.get(cls, _UNSET)
    if test is _UNSET:
        condition = membership(cls)
        test = _MEMBER_TESTS[cls] = None if condition == ALL else condition.matches
    return test is None or bool(test(record))


def check_query_path(cls: type[Document], path: tuple[str, ...], where: str) -> None:
    """Refuse a path ``cls``'s declarations show to be a mistake (InvalidQuery).

    A top-level name one edit (or one swap) away from a declared field, and
    not declared itself, is taken for a typo; a path may not pass through a
    declared field that cannot hold a dict.
    """
    fields = cls.__pydantic_fields__
    if not fields:
        return  # free-form: nothing declared, nothing to hold a path against
    if path[0] not in fields:
        near = _near_field(cls, path[0])
        if near is not None:
            raise InvalidQuery(
                f"{where}: {cls.__name__} declares no field {path[0]!r}; did you mean "
                f"{near!r}? (an undeclared field of that name is reached through "
                "storage.query())"
            )
        return
    if len(path) < 2:
        return
    annotation = fields[path[0]].annotation
    if not _allows_nesting(annotation):
        raise InvalidQuery(
            f"{where}: {cls.__name__}.{path[0]} is declared as {_type_name(annotation)}, "
            "so a path cannot pass through it"
        )


def check_lookup(cls: type[Document], lookup: Lookup) -> None:
    """As :func:`check_query_path`, and refuse a value that can never match the field.

    Only for a declared top-level field whose type names the kinds it holds
    (``born: int`` holds numbers, so ``born="1950"`` is a mistake).
    """
    path = lookup.path
    op = lookup.op
    if len(path) != 1 or path[0] not in cls.__pydantic_fields__:
        check_query_path(cls, path, f"{lookup.key}__{op}")
        return
    # The common case, a declared field and a value of a kind it holds, in few
    # steps: every where() on a class comes here.
    kinds = _KINDS.get((cls, path[0]), _UNSET)
    if kinds is _UNSET:
        kinds = _KINDS[cls, path[0]] = _field_kinds(cls.__pydantic_fields__[path[0]].annotation)
    if kinds is None or op == "exists":
        return
    if op in _SCALAR_OPS and kind_of(lookup.value) in kinds:
        return
    problem = _kind_problem(op, lookup.value, kinds)
    if problem is not None:
        annotation = cls.__pydantic_fields__[path[0]].annotation
        raise InvalidQuery(
            f"{lookup.key}__{op}: {cls.__name__}.{path[0]} is declared as "
            f"{_type_name(annotation)}, so {problem}"
        )


def check_changes(cls: type[Document], changes: list[Change]) -> list[Change]:
    """The changes of a typed ``update``, validated against ``cls`` (ValidationError).

    A set value must pass the declared field's type and constraints in strict
    mode, and becomes what saving stores (a ``float`` field given an int holds
    a float); ``inc`` needs a number field (an ``int`` field an int); a
    required field cannot be unset (records would leave the class); a path
    cannot pass through a field that holds no dict; an undeclared name one edit
    away from a declared field is taken for a typo. Undeclared fields take any
    value, as records may hold them.
    """
    if not cls.__pydantic_fields__:
        return changes
    return [c._replace(value=_check_change(cls, c.path, c.op, c.value)) for c in changes]


def creation_data(
    cls: type[Document], lookups: Mapping[str, Any], defaults: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The fields ``get_or_create`` gives a new document: equality lookups, then ``defaults``.

    Nested equalities (``address__city="Oulu"``) build dicts; any other op
    raises :class:`InvalidQuery` naming the lookups.
    """
    data: dict[str, Any] = {}
    others: list[str] = []
    for key, value in lookups.items():
        lookup = parse_key(key, value)
        if lookup.op != "equals":
            others.append(key)
            continue
        target = data
        for part in lookup.path[:-1]:
            nested = target.setdefault(part, {})
            if type(nested) is not dict:
                raise InvalidQuery(f"get_or_create: {key} conflicts with another lookup")
            target = nested
        target[lookup.path[-1]] = value
    if others:
        raise InvalidQuery(
            f"get_or_create takes equality lookups only (they become the new document's "
            f"fields), not {', '.join(others)}"
        )
    data.update(defaults or {})
    return data


def new_document(cls: type[D], storage: BaseStorage, data: Mapping[str, Any]) -> D:
    """A new, unsaved ``cls`` document from stored-form values (ValidationError if invalid).

    References may be given as pks (they load from ``storage``) or documents;
    undeclared keys are kept as undeclared fields.
    """
    fields = cls.__pydantic_fields__
    refs = cls._references()
    declared: dict[str, Any] = {}
    for name, value in data.items():
        if name in refs and value is not None:
            target, many = refs[name]
            if many and type(value) is list:
                value = [target._placeholder(storage, v) if type(v) is str else v for v in value]
            elif type(value) is str:
                value = target._placeholder(storage, value)
        if name in fields:
            declared[name] = value
    doc = cls(**declared)
    for name, value in data.items():
        if name not in fields:
            doc[name] = value
    return doc


def declared_types(cls: type[Document], name: str) -> list[Any] | None:
    """The types field ``name`` of ``cls`` is declared to hold, None if undeclared.

    ``Optional``/``| None`` and ``Annotated`` are unwrapped and unions listed:
    ``int | float | None`` gives ``[int, float]``. Backends pick index kinds by it.
    """
    info = cls.model_fields.get(name)
    return None if info is None else _strip_optional(info.annotation)


def index_entries(cls: type[Document]) -> list[Any]:
    """The entries of ``cls.Meta.indexes`` (parents' first), as declared."""
    return cls._meta().indexes


def stored_values(doc: Document) -> dict[str, Any]:
    """The record ``doc`` would store, or ``{}`` when it is not valid (for ``after()``)."""
    try:
        return _record_of(doc, None)
    except ValidationError:
        return {}


class Write(NamedTuple):
    """One record a save writes: the document, its pk and record, how to write it."""

    doc: Document
    pk: str
    record: dict[str, Any]
    #: Refuse to replace an existing record (IntegrityError).
    insert: bool
    #: ``Meta.version_field``, or None: the record then is written unconditionally.
    version_field: str | None
    #: The version the stored record must hold (None: no record yet; MISSING:
    #: stored without the field); the record holds the next one.
    expected: Any


class SavePlan(NamedTuple):
    """What saving a document writes: referenced unsaved documents first, itself last."""

    pk: str
    writes: list[Write]

    @property
    def classes(self) -> set[type[Document]]:
        """The document classes written (for their indexes)."""
        return {type(w.doc) for w in self.writes}


def plan_save(
    doc: Document, pk: str | None, *, insert: bool, new_pk: Callable[[], str]
) -> SavePlan:
    """The records that saving ``doc`` (under ``pk``, or its own) writes; nothing changes yet.

    Every unsaved document ``doc`` references (transitively, cycles included)
    gets a pk from ``new_pk`` and is written first, with insert; ``doc`` gets
    ``pk``, its own pk or a new one. References are stored as those pks, and
    versioned classes get their next version. The documents learn their pks
    and versions only from :func:`mark_saved`, after the writes succeeded.
    """
    if doc._partial:
        raise PyModelsError(
            f"{type(doc).__name__} {doc.pk!r} was loaded with only(): it cannot be saved"
        )
    graph = _unsaved_references(doc)
    pks: dict[int, str] = {}
    if pk is not None or doc.pk is None:
        insert = insert or (doc.pk is None and pk is None)
        pks[id(doc)] = pk if pk is not None else new_pk()
    for ref in graph:
        pks[id(ref)] = new_pk()
    writes = [_write(ref, pks, True) for ref in graph]
    writes.append(_write(doc, pks, insert))
    return SavePlan(writes[-1].pk, writes)


def mark_saved(plan: SavePlan, storage: BaseStorage) -> None:
    """Give the documents of ``plan`` their pks, storage and versions (all was written)."""
    for write in plan.writes:
        doc = write.doc
        _SET_PK(doc, write.pk)
        _SET_STORAGE(doc, storage)
        field = write.version_field
        if field is not None:
            version = write.record[field]
            _SET_VERSION(doc, version)
            if field in type(doc).__pydantic_fields__:
                doc.__dict__[field] = version
            else:
                doc._extra[field] = version


def _write(doc: Document, pks: Mapping[int, str], insert: bool) -> Write:
    record = _record_of(doc, pks)
    pk = pks.get(id(doc), doc.pk)
    assert pk is not None, "plan_save gives every document a pk"
    field = type(doc)._meta().version_field
    expected = None
    if field is not None:
        # None: a new document, so no record may exist yet; else the value loaded.
        expected = doc._version
        fresh = expected is None or expected is MISSING
        record[field] = 1 if fresh else _next_version(expected)
    return Write(doc, pk, record, insert, field, expected)


def _next_version(value: Any) -> Any:
    if type(value) is not int:
        raise ConflictError(f"version field holds {value!r}, not an int")
    return value + 1


def _record_of(doc: Document, pks: Mapping[int, str] | None) -> dict[str, Any]:
    """The record ``doc`` stores, validated: references as their pks (or those in ``pks``)."""
    doc._ensure_loaded()
    cls = type(doc)
    refs = cls._references()
    record: dict[str, Any] = {}
    for key, value in doc._extra.items():
        record[key] = value
    for name in cls.__pydantic_fields__:
        value = doc.__dict__.get(name)
        if value is None:
            record.pop(name, None)
            continue
        if name in refs:
            value = (
                _ref_pk(value, name, pks)
                if not refs[name][1]
                else [_ref_pk(v, name, pks) for v in value]
            )
        record[name] = validate_value(value, name)
    return record


def _unsaved_references(doc: Document) -> list[Document]:
    """Unsaved documents reachable through references (not ``doc``), each once."""
    found: list[Document] = []
    seen: set[int] = {id(doc)}

    def visit(current: Document) -> None:
        if current._lazy is not None:
            return
        for name, (_target, many) in type(current)._references().items():
            value = current.__dict__.get(name)
            for ref in (value or []) if many else ([value] if value is not None else []):
                if isinstance(ref, Document) and id(ref) not in seen:
                    seen.add(id(ref))
                    if ref.pk is None:
                        found.append(ref)
                        visit(ref)

    visit(doc)
    return found

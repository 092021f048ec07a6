"""Documents without a database: declaration rules, validation, the mapping view, JSON."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from pymodels import ConfigurationError, Document, Field, Model, ValidationError
from pymodels.conditions import ALL, Q


class Country(Document):
    name: str
    code: str = Field(min_length=2, max_length=2)


class Person(Document):
    first_name: str
    last_name: str = ""
    age: int | None = None
    birth_place: Country | None = None

    class Meta:
        must_have = {"first_name__exists": True}
        must_not_have = {"deleted": True}
        indexes = ["last_name"]


class Employee(Person):
    company: str

    class Meta:
        must_have = {"company__startswith": "A"}
        indexes = ["company"]


@pytest.mark.parametrize(
    "name",
    [
        "pk",
        "save",
        "delete",
        "objects",
        "object",
        "get",
        "keys",
        "items",
        "values",
        "model_x",
        "_private",
    ],
)
def test_reserved_names_cannot_be_declared(name: str) -> None:
    with pytest.raises(ConfigurationError, match=repr(name)):
        type("Bad", (Document,), {"__annotations__": {name: int}})


def test_model_is_document() -> None:
    assert Model is Document


def test_construction_and_assignment_validate() -> None:
    with pytest.raises(ValidationError, match="code"):
        Country(name="Finland", code="FIN")
    with pytest.raises(ValidationError, match=r"unknown|extra|not permitted"):
        Country(name="X", code="XX", population=5)  # type: ignore[call-arg]
    country = Country(name="X", code="XX")
    with pytest.raises(ValidationError, match="code") as info:
        country.code = "Q"
    assert info.value.field == "code" and isinstance(info.value, ValueError)
    with pytest.raises(ValidationError):
        Person(first_name="A", age="7")  # type: ignore[arg-type]  # strict: no coercion


def test_meta_merges_parent_then_child() -> None:
    meta = Employee._meta()
    assert meta.must_have == {"first_name__exists": True, "company__startswith": "A"}
    assert meta.must_not_have == {"deleted": True}
    assert meta.indexes == ["last_name", "company"]
    assert Employee._is_member({"first_name": "a", "company": "Acme"})
    assert not Employee._is_member({"first_name": "a", "company": "Bcme"})
    assert not Employee._is_member({"first_name": "a", "company": "Acme", "deleted": True})
    assert not Employee._is_member({"company": "Acme"})
    assert Document._membership() == ALL


def test_membership_includes_required_fields() -> None:
    assert Country._membership() == Q(name__exists=True, code__exists=True)


def test_a_saved_document_stands_for_its_pk_in_partial_changes() -> None:
    from pymodels import get_storage

    with get_storage("memory://") as storage:
        country = Country(name="Finland", code="FI")
        storage.save(country, primary_key="c1")
        pk = storage.save({"first_name": "A"})
        assert storage.update(pk, home=country, visited=[country, "c2"]) == 1
        assert storage.get(None, pk)["home"] == "c1"
        assert storage.get(None, pk)["visited"] == ["c1", "c2"]
        with pytest.raises(ValidationError, match="home: the Country given is not saved"):
            storage.update(pk, home=Country(name="Sweden", code="SE"))
        with pytest.raises(ValidationError, match="visited: the Country given is not saved"):
            storage.update(pk, visited=[country, Country(name="Sweden", code="SE")])
        assert storage.get(None, pk)["visited"] == ["c1", "c2"]  # nothing half-written


def test_mapping_view() -> None:
    country = Country(name="Finland", code="FI")
    person = Person(first_name="A", birth_place=country)
    assert person.keys() == ["first_name", "last_name", "birth_place"]
    with pytest.raises(KeyError):
        _ = person["age"]
    assert person.get("age", 5) == 5
    country._pk = "c1"
    assert person["birth_place"] == "c1"  # a reference shows as its pk
    person["extra"] = [1, 2]
    assert dict(person)["extra"] == [1, 2] and "extra" in person
    person["age"] = 3
    assert person.age == 3
    with pytest.raises(ValidationError):
        person["bad.name"] = 1
    with pytest.raises(ValidationError):
        person["nan"] = float("nan")
    del person["extra"]
    assert "extra" not in person
    with pytest.raises(ValidationError):
        person.not_a_field = 1


def test_json_round_trip_keeps_every_kind() -> None:
    values: dict[str, Any] = {
        "i": 7,
        "f": 7.0,
        "d": Decimal("2.50"),
        "b": b"\x00\xff",
        "day": dt.date(2020, 1, 2),
        "naive": dt.datetime(2020, 1, 2, 3, 4, 5, 6),
        "aware": dt.datetime(2020, 1, 2, 3, tzinfo=dt.UTC),
        "nested": {"l": [True, 1, 1.5, "s", [b""]]},
    }
    doc = Document.from_json(Document(**{}).to_json())
    assert dict(doc) == {}
    free = Document()
    for k, v in values.items():
        free[k] = v
    back = Document.from_json(free.to_json())
    assert dict(back) == values
    assert type(back["f"]) is float and type(back["i"]) is int
    assert str(back["d"]) == "2.50"


def test_loading_wraps_errors_with_pk_and_field() -> None:
    with pytest.raises(ValidationError) as info:
        Person._from_storage(None, "p1", {"first_name": 5})
    assert info.value.pk == "p1" and info.value.field == "first_name"
    assert "p1" in str(info.value)


# ---- identity, copies and pickles


def test_documents_compare_by_class_pk_and_stored_values() -> None:
    a = Person._from_storage(None, "p1", {"first_name": "Ann", "note": "x"})
    b = Person._from_storage(None, "p1", {"first_name": "Ann", "note": "x"})
    assert a == b
    assert a != Person._from_storage(None, "p2", {"first_name": "Ann", "note": "x"})
    assert a != Person._from_storage(None, "p1", {"first_name": "Ann", "note": "y"})
    assert a != Document._from_storage(None, "p1", {"first_name": "Ann", "note": "x"})
    free = Document._from_storage(None, "p1", {"a": 1})
    assert free != Document._from_storage(None, "p1", {"a": 2})
    assert free != Document._from_storage(None, "p1", {"a": True})  # strict, as in queries
    assert free == Document._from_storage(None, "p1", {"a": 1.0})  # one kind: numbers
    assert Document._from_storage(None, "d", {"x": Decimal("2.5")}) == Document._from_storage(
        None, "d", {"x": Decimal("2.50")}
    )  # Decimals compare by value
    with pytest.raises(TypeError):
        hash(a)


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_copies_keep_pk_values_and_undeclared_fields(how: str) -> None:
    import copy
    import pickle

    doc = Person._from_storage(None, "p1", {"first_name": "Ann", "extra": {"k": [1]}})
    copiers: dict[str, Callable[[Person], Person]] = {
        "copy": copy.copy,
        "deepcopy": copy.deepcopy,
        "pickle": lambda d: pickle.loads(pickle.dumps(d)),
    }
    clone = copiers[how](doc)
    assert clone == doc and clone.pk == "p1" and clone["extra"] == {"k": [1]}
    clone["other"] = 1  # the copy's undeclared fields are its own
    assert "other" not in doc


def test_pydantic_api_works_on_documents_built_from_records() -> None:
    # Free-form documents and references are built without pydantic's constructor.
    free = Document._from_storage(None, "p1", {"a": 1, "b": [1, 2]})
    assert free.model_dump() == {} and free.model_fields_set == set()
    assert free.model_copy() == free and free.model_copy(deep=True)["b"] == [1, 2]
    with pytest.raises(ValidationError):
        free.a = 2  # undeclared fields are set with free["a"] = 2
    free["a"] = 2
    assert free["a"] == 2 and free.a == 2
    ref = Country._placeholder(None, "c1")
    assert ref.pk == "c1" and repr(ref) == "<Country pk='c1' (not loaded)>"
    person = Person._from_storage(None, "p2", {"first_name": "Ann", "x": 1})
    assert person.model_dump()["first_name"] == "Ann" and "first_name" in person.model_fields_set

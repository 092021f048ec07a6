"""The seed page's models, in Python 3 and pydantic v2."""

from __future__ import annotations

import datetime

from pymodels import Document, Field


class Country(Document):
    name: str
    code: str = Field(min_length=2, max_length=2)


class Person(Document):
    first_name: str
    last_name: str = ""
    birth_date: datetime.date | None = None
    birth_place: Country | None = None  # a reference: stored as the Country's pk
    tags: list[str] = []

    class Meta:
        must_have = {"first_name__exists": True}  # which records are Persons
        indexes = ["last_name", ("tags", "-birth_date")]

"""The seed page's application: list every Person in the configured storage.

On an empty storage it first saves a few people, so a first run shows something.
"""

from __future__ import annotations

import datetime

import settings
from models import Country, Person

import pymodels

storage = pymodels.get_storage(settings.DATABASE)

if not Person.objects(storage).exists():
    finland = Country(name="Finland", code="FI")
    Person(
        first_name="John",
        last_name="Smith",
        birth_place=finland,
        birth_date=datetime.date(1990, 5, 17),
        tags=["admin"],
    ).save(storage)
    Person(
        first_name="Mary",
        last_name="Smythe",
        birth_place=finland,
        birth_date=datetime.date(1985, 1, 2),
    ).save(storage)
    Person(first_name="Ann", last_name="Doe", tags=["retired"]).save(storage)

print(Person.objects(storage))  # prints all Person objects from DB

recent = (
    Person.objects(storage)
    .where(last_name__startswith="Sm", birth_date__gte=datetime.date(1980, 1, 1))
    .where_not(tags__contains="retired")
    .order_by("-birth_date", "first_name")
)
for person in recent:
    place = person.birth_place.name if person.birth_place else "unknown"
    print(f"{person.first_name} {person.last_name}, born {person.birth_date} in {place}")
print(f"{recent.count()} of {Person.objects(storage).count()} people match")

storage.close()

"""The backend contract in one import: what a backend module subclasses and uses.

A backend is a module exposing ``Storage`` (a :class:`BaseStorage` subclass),
``Query`` (a :class:`BaseQuery` subclass) and ``features`` (a
:class:`Features`). See ``docs/backends.md`` for the hooks to implement.
"""

from .conditions import ALL, And, Condition, Lookup, Not, Or
from .features import OPS, Features
from .ordering import OrderKey
from .query import BaseQuery, Compiled
from .storage import BaseSettings, BaseStorage, Change, IndexSpec, apply_changes

__all__ = [
    "ALL",
    "OPS",
    "And",
    "BaseQuery",
    "BaseSettings",
    "BaseStorage",
    "Change",
    "Compiled",
    "Condition",
    "Features",
    "IndexSpec",
    "Lookup",
    "Not",
    "Or",
    "OrderKey",
    "apply_changes",
]

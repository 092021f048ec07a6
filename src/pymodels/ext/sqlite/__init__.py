"""SQLite backend: the embedded default.

Engine: SQLite 3.38+ through the standard library's :mod:`sqlite3` (JSON1 built
in; tested with 3.40). Dependencies: none.
Suits: applications and tools on one machine, tests, examples; several
processes may share one file (WAL, busy timeout, ``BEGIN IMMEDIATE``).
Layout: one table per storage (setting ``table``, default ``documents``) with
``pk TEXT PRIMARY KEY`` and ``body TEXT`` holding the record as tagged JSON
(:mod:`pymodels.ext._sql.encoding`), and beside it two shadow columns per
top-level field (up to :data:`SHADOW_MAX` fields; none for a field first written
with a long value, :data:`SHADOW_VALUE_MAX`) holding the field's kind rank and
value, written with ``body`` (docs/sqlite.md, "Shadow columns"); the library's
own data lives in the separate table ``pymodels_meta``.
Queries: every lookup runs in SQL (some through functions registered on each
connection, such as ``pm_lower`` for ``str.lower()``); ordering, offset and
limit too, except among lists and dicts at an order key, sorted in Python.
Indexes are on the shadow columns the queries use (expression indexes for nested
paths and for tables of the earlier format, which has no shadow columns).
Limits: one writer at a time (SQLite's rule); ``sqlite://`` (in memory) lives
as long as the storage and serialises its threads; list and dict values in a
unique index compare by their JSON text (``[1]`` and ``[1.0]`` differ there).
"""

from __future__ import annotations

from ._storage import (
    CACHE_KIB,
    FORMAT_VERSION,
    MMAP_SIZE,
    PAGE_SIZE,
    PREFIX_WALK_MAX,
    SHADOW_MAX,
    SHADOW_RECHECK,
    SHADOW_VALUE_MAX,
    Query,
    Settings,
    Storage,
    features,
    memory_features,
)

__all__ = [
    "CACHE_KIB",
    "FORMAT_VERSION",
    "MMAP_SIZE",
    "PAGE_SIZE",
    "PREFIX_WALK_MAX",
    "SHADOW_MAX",
    "SHADOW_RECHECK",
    "SHADOW_VALUE_MAX",
    "Query",
    "Settings",
    "Storage",
    "features",
    "memory_features",
]

"""Capabilities a backend declares, as data.

Each backend module exposes ``features``, an instance of :class:`Features`.
Defaults are conservative: a backend says what it can do, never the reverse.
Tests and callers ask for capabilities here instead of naming backends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

__all__ = ["OPS", "Features", "OpSupport"]

#: How a lookup op runs: entirely in the engine, as an engine-side superset
#: re-checked in Python, or only in Python.
OpSupport = Literal["native", "prefilter", "python"]

#: Every lookup op of the contract; docs/queries.md shows each with an example.
OPS: tuple[str, ...] = (
    "equals",
    "exists",
    "gt",
    "gte",
    "lt",
    "lte",
    "between",
    "in",
    "contains",
    "contains_all",
    "contains_any",
    "startswith",
    "endswith",
    "iequals",
    "icontains",
    "istartswith",
    "iendswith",
    "matches",
    "imatches",
    "year",
    "month",
    "day",
    "like",
)


def _all_python() -> Mapping[str, OpSupport]:
    return MappingProxyType(dict.fromkeys(OPS, "python"))


@dataclasses.dataclass(frozen=True)
class Features:
    """What one backend's engine can do. One flag per capability."""

    # How does each lookup op run: "native", "prefilter" or "python"?
    ops: Mapping[str, OpSupport] = dataclasses.field(default_factory=_all_python)
    # Does storage.transaction() work (all or nothing, nothing visible before the end)?
    transactions: bool = False
    # Does create_index() build an index the engine uses?
    indexes: bool = False
    # Does create_index(unique=True) enforce uniqueness?
    unique_indexes: bool = False
    # Does create_index() accept a tuple of paths (a compound index)?
    compound_indexes: bool = False
    # Which index kinds does create_index(kind=...) accept (besides None)?
    index_kinds: frozenset[str] = frozenset()
    # Does update() change fields without reading the record into Python first?
    partial_update: bool = False
    # May one storage object be used from several threads at once?
    thread_safe: bool = False
    # May a storage object opened before fork() be used in the child?
    fork_safe: bool = False
    # May several processes use the same database at the same time?
    concurrent_processes: bool = False
    # Does a Meta.version_field save stay an exact compare-and-swap when other processes
    # write the same record? None when declared: the same as concurrent_processes (an
    # engine shared between processes normally has a conditional write); set False where
    # the engine has none (Tokyo Tyrant), so the check holds only between threads.
    compare_and_swap_across_processes: bool | None = None
    # Does every acknowledged write survive SIGKILL of the writing process?
    crash_safe: bool = False
    # On a full disk, does a write either raise a typed error and leave the store as it was,
    # or succeed durably?
    disk_full_safe: bool = False
    # Does the data outlive the process (a file or a server)?
    persistent: bool = True
    # Does the engine run in a server process, so the files are written by that process
    # (and a file-size limit set on this process does not reach them)?
    networked: bool = False

    def __post_init__(self) -> None:
        if self.compare_and_swap_across_processes is None:
            object.__setattr__(self, "compare_and_swap_across_processes", self.concurrent_processes)

    def op(self, name: str) -> OpSupport:
        """How the op ``name`` runs on this backend."""
        return self.ops.get(name, "python")

    def replace(self, **changes: object) -> Features:
        """A copy with some flags changed (for backends that derive from another)."""
        if (
            "concurrent_processes" in changes
            and "compare_and_swap_across_processes" not in changes
            and self.compare_and_swap_across_processes == self.concurrent_processes
        ):
            # It followed concurrent_processes: it follows the new value too.
            changes["compare_and_swap_across_processes"] = None
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

"""The exceptions pymodels raises.

Every error is a :class:`PyModelsError`. Where a driver or the standard library
raised first, the original is chained (``raise ... from e``) so nothing is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "BackendNotFound",
    "BackendUnavailable",
    "BulkWriteError",
    "ConfigurationError",
    "ConflictError",
    "ConnectionFailed",
    "CorruptData",
    "DoesNotExist",
    "IntegrityError",
    "InvalidQuery",
    "LockTimeout",
    "NotSupported",
    "PyModelsError",
    "StorageNotFound",
    "ValidationError",
    "check_usable",
]


class PyModelsError(Exception):
    """Base class of every error raised by pymodels."""


class ValidationError(PyModelsError, ValueError):
    """A value, field name or document failed validation.

    ``field`` names the offending field (dotted for nested ones) and ``pk`` the
    record when the error arose while loading one.
    """

    def __init__(self, message: str, *, field: str | None = None, pk: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.pk = pk


class InvalidQuery(PyModelsError, ValueError):
    """A lookup, ordering or slice that can never be run (raised when it is built)."""


class DoesNotExist(PyModelsError, KeyError):
    """The record is missing or is not a member of the requested class."""

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message, quoting it.
        return str(self.args[0]) if self.args else ""


class ConfigurationError(PyModelsError):
    """Settings are missing, unknown or malformed."""


class BackendNotFound(ConfigurationError):
    """No backend is known by that name; ``known`` lists the names that are.

    ``suggestion`` is the known name (or URL scheme) closest to a misspelt one.
    """

    def __init__(self, name: str, known: Sequence[str], *, suggestion: str | None = None) -> None:
        self.name = name
        self.known = tuple(known)
        hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
        super().__init__(f"unknown backend {name!r}{hint}; known backends: {', '.join(self.known)}")


class StorageNotFound(ConfigurationError):
    """A storage opened read-only does not exist (no file, no table); nothing was created.

    ``path`` names what is missing: the file, or the table.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class BackendUnavailable(PyModelsError):
    """The backend exists but its driver or C library is missing; says what to install."""


class NotSupported(PyModelsError):
    """The engine lacks a storage capability (transactions, an index kind, ...)."""


class ConnectionFailed(PyModelsError):
    """The server could not be reached (or the connection broke).

    After this error the outcome of the last write is unknown: pymodels never
    retries a write by itself.
    """

    def __init__(self, message: str, *, host: str | None = None, port: int | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.port = port


class LockTimeout(PyModelsError):
    """Another connection or process held a lock for the whole wait the settings allow.

    The operation wrote nothing, so retrying it later is safe. SQLite waits up to
    ``timeout``, Tokyo Cabinet and shelve up to ``lock_timeout``; PostgreSQL raises
    it when the server's own ``lock_timeout`` runs out.
    """


class CorruptData(PyModelsError):
    """A file or record the engine cannot read back (truncated, damaged, planted, foreign).

    ``path`` names the file and ``pk`` the record where it is known. Nothing in
    the damaged data was run or trusted to get this far.
    """

    def __init__(self, message: str, *, path: str | None = None, pk: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.pk = pk


class IntegrityError(PyModelsError):
    """A write would break a uniqueness rule (existing pk, unique index)."""


class ConflictError(IntegrityError):
    """An optimistic-concurrency save found a newer version than the one loaded."""


class BulkWriteError(PyModelsError):
    """``save_many`` failed on one record.

    ``index`` is the position of the failing record in the input and
    ``written_pks`` the pks that are stored (committed) despite the failure.
    The cause (an :class:`IntegrityError` or :class:`ValidationError`) is
    ``__cause__``.
    """

    def __init__(self, message: str, *, index: int, written_pks: Sequence[str]) -> None:
        super().__init__(message)
        self.index = index
        self.written_pks = list(written_pks)


def check_usable(storage: Any, *, write: bool = False) -> None:
    """Raise if ``storage`` is closed (or, for a ``write``, open read-only).

    Storages and queries both guard their public methods with it, through
    the storage's public ``closed``, ``read_only`` and ``backend``.
    """
    if storage.closed:
        raise PyModelsError(f"{storage.backend} storage is closed")
    if write and storage.read_only:
        raise NotSupported(f"{storage.backend} storage is open read-only")

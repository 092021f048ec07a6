"""pymodels: one API to store, fetch, remove and search records in many databases.

Every backend gives the same answer to the same query; switching databases is
one line of settings.
"""

from .conditions import Q
from .documents import Document, Field, Model
from .errors import (
    BackendNotFound,
    BackendUnavailable,
    BulkWriteError,
    ConfigurationError,
    ConflictError,
    ConnectionFailed,
    CorruptData,
    DoesNotExist,
    IntegrityError,
    InvalidQuery,
    LockTimeout,
    NotSupported,
    PyModelsError,
    StorageNotFound,
    ValidationError,
)
from .features import Features
from .registry import get_db, get_storage

__version__ = "0.1.0.dev0"

__all__ = [
    "BackendNotFound",
    "BackendUnavailable",
    "BulkWriteError",
    "ConfigurationError",
    "ConflictError",
    "ConnectionFailed",
    "CorruptData",
    "Document",
    "DoesNotExist",
    "Features",
    "Field",
    "IntegrityError",
    "InvalidQuery",
    "LockTimeout",
    "Model",
    "NotSupported",
    "PyModelsError",
    "Q",
    "StorageNotFound",
    "ValidationError",
    "get_db",
    "get_storage",
]

"""The backend contract: everything a backend module imports from pymodels.

A backend is a module exposing ``Storage``, a :class:`BaseStorage` subclass
(its ``query_class`` and ``features`` give the registry the query class and
the capabilities). ``docs/backends.md`` describes the hooks to implement.

A backend imports pymodels names only from this module (in-tree backends may
also import their own private submodules and the shared private package
``pymodels.ext._sql``); ``tests/test_backend_contract.py`` enforces it for
``pymodels/ext/**`` and the test plug-in. What is here is the contract: a
name added here is one more thing every backend may depend on, so add with
care and never rename.
"""

from . import spill
from .codec import decode as decode_tagged
from .codec import encode as encode_tagged
from .conditions import ALL, COMPARISONS, And, Condition, Lookup, Not, Or, record_test
from .documents import Document, declared_types
from .errors import (
    BackendUnavailable,
    BulkWriteError,
    ConfigurationError,
    ConnectionFailed,
    CorruptData,
    IntegrityError,
    LockTimeout,
    NotSupported,
    PyModelsError,
    StorageNotFound,
    ValidationError,
)
from .features import OPS, Features, OpSupport
from .files import file_problem, open_failure
from .ordering import PK_ORDER, OrderKey, pks_in_order, sort_items
from .query import BATCH_SIZE, BaseQuery, Compiled, Item
from .registry import url_path
from .spill import KeySorter
from .storage import (
    BaseSettings,
    BaseStorage,
    Change,
    IndexSpec,
    apply_changes,
    batch_has_documents,
    batch_records,
)
from .values import (
    INT_MAX,
    INT_MIN,
    KINDS,
    MISSING,
    check_field_name,
    copy_value,
    freeze,
    get_path,
    kind_of,
    sort_key,
    stored_record,
)

__all__ = [
    "ALL",
    "BATCH_SIZE",
    "COMPARISONS",
    "INT_MAX",
    "INT_MIN",
    "KINDS",
    "MISSING",
    "OPS",
    "PK_ORDER",
    "And",
    "BackendUnavailable",
    "BaseQuery",
    "BaseSettings",
    "BaseStorage",
    "BulkWriteError",
    "Change",
    "Compiled",
    "Condition",
    "ConfigurationError",
    "ConnectionFailed",
    "CorruptData",
    "Document",
    "Features",
    "IndexSpec",
    "IntegrityError",
    "Item",
    "KeySorter",
    "LockTimeout",
    "Lookup",
    "Not",
    "NotSupported",
    "OpSupport",
    "Or",
    "OrderKey",
    "PyModelsError",
    "StorageNotFound",
    "ValidationError",
    "apply_changes",
    "batch_has_documents",
    "batch_records",
    "check_field_name",
    "copy_value",
    "declared_types",
    "decode_tagged",
    "encode_tagged",
    "file_problem",
    "freeze",
    "get_path",
    "kind_of",
    "open_failure",
    "pks_in_order",
    "record_test",
    "sort_items",
    "sort_key",
    "spill",
    "stored_record",
    "url_path",
]

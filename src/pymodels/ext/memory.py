"""In-memory backend: the reference.

Engine: Python dicts in this process. Dependencies: none.
Suits: tests, prototypes, caches; it defines the answers every other backend
must give (queries evaluate :mod:`pymodels.conditions` directly).
Limits: nothing persists; one process. Storages opened with the same
``name`` (``memory://name``) share one namespace within the process.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

from ..backend import (
    ALL,
    OPS,
    BaseQuery,
    BaseSettings,
    BaseStorage,
    Compiled,
    Condition,
    Features,
    OrderKey,
    copy_value,
    sort_items,
)

__all__ = ["Query", "Settings", "Storage", "features"]

features = Features(
    ops=dict.fromkeys(OPS, "native"),
    transactions=True,
    indexes=False,
    thread_safe=True,
    fork_safe=True,
    concurrent_processes=False,
    persistent=False,
)

# Named namespaces shared by every storage of this process opened with that name.
_NAMED: dict[str, dict[str, dict[str, Any]]] = {}
_NAMED_LOCK = threading.Lock()


class Settings(BaseSettings):
    """Settings of the memory backend."""

    #: Share the records with other storages opened with the same name.
    name: str | None = None


class Query(BaseQuery[Any]):
    """Its engine is Python: it evaluates the condition tree and sorts exactly."""

    storage: Storage

    def _engine_order(self, order: tuple[OrderKey, ...], native: Any) -> bool:
        return True

    def _engine_count(self, native: Any) -> int:
        return self.storage._count_where(native)


class Storage(BaseStorage):
    """Records in a dict; transactions by copy-on-begin for the owning thread."""

    features: ClassVar[Features] = features
    query_class: ClassVar[type[BaseQuery[Any]]] = Query
    settings_class: ClassVar[type[BaseSettings]] = Settings
    url_schemes: ClassVar[tuple[str, ...]] = ("memory",)
    settings: Settings

    @classmethod
    def settings_from_url(cls, url: str) -> dict[str, Any]:
        parts = urlsplit(url)
        name = (parts.netloc + parts.path).strip("/")
        return {"name": name} if name else {}

    # The transaction's working copy, visible only to the thread that owns it.
    _tx_copy: dict[str, dict[str, Any]] | None = None
    _tx_owner: int | None = None

    def _open(self) -> None:
        if self.settings.name is None:
            self._records: dict[str, dict[str, Any]] = {}
        else:
            with _NAMED_LOCK:
                self._records = _NAMED.setdefault(self.settings.name, {})

    def _data(self) -> dict[str, dict[str, Any]]:
        if self._tx_copy is not None and self._tx_owner == threading.get_ident():
            return self._tx_copy
        return self._records

    def _load(self, pk: str) -> dict[str, Any] | None:
        record = self._data().get(pk)
        return None if record is None else copy_value(record)

    def _store(self, pk: str, record: dict[str, Any], *, overwrite: bool) -> bool:
        with self._lock:
            data = self._data()
            if not overwrite and pk in data:
                return False
            data[pk] = copy_value(record)
            return True

    def _remove(self, pk: str) -> bool:
        with self._lock:
            return self._data().pop(pk, None) is not None

    def _scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for pk, record in list(self._data().items()):
            yield pk, copy_value(record)

    def _keys(self) -> Iterator[str]:
        return iter(list(self._data()))

    def _count(self) -> int:
        return len(self._data())

    def _contains(self, pk: str) -> bool:
        return pk in self._data()

    def _clear(self) -> None:
        with self._lock:
            self._data().clear()

    def _compile_condition(self, condition: Condition) -> Compiled:
        return Compiled(condition, None, "evaluate the condition tree over dicts")

    def _select(
        self, native: Any, order: tuple[OrderKey, ...] | None, offset: int, limit: int | None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        items = [
            (pk, rec)
            for pk, rec in list(self._data().items())
            if native == ALL or native.matches(rec)
        ]
        if order is not None:
            sort_items(items, order)
        stop = None if limit is None else offset + limit
        for pk, record in itertools.islice(items, offset, stop):
            yield pk, copy_value(record)

    def _count_where(self, native: Any) -> int:
        return sum(1 for rec in list(self._data().values()) if native.matches(rec))

    def _close(self) -> None:
        pass

    def _begin(self) -> None:
        self._tx_copy = dict(self._records)
        self._tx_owner = threading.get_ident()

    def _commit(self) -> None:
        assert self._tx_copy is not None
        # Update in place: other storages may share this dict by name.
        self._records.clear()
        self._records.update(self._tx_copy)
        self._tx_copy = self._tx_owner = None

    def _rollback(self) -> None:
        self._tx_copy = self._tx_owner = None

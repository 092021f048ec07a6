"""A minimal third-party backend: records in a dict, every query run by pymodels.

It is the smallest complete backend (``docs/backends.md`` shows it) and it is
installed as a real distribution, so pymodels' tests check plug-in discovery
through its entry point, and the conformance suite runs on it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pymodels.backend import BaseSettings, BaseStorage, Features, copy_value

#: Records of storages opened with a name, shared by name within the process.
_NAMED: dict[str, dict[str, dict[str, Any]]] = {}
_NAMED_LOCK = threading.Lock()


class Settings(BaseSettings):
    """The keys this backend accepts besides ``read_only``."""

    #: Share the records with other storages of this process opened with that name.
    name: str | None = None
    #: A key of no use but to show that settings reach the plug-in.
    greeting: str = "hello"


class Storage(BaseStorage):
    """The required hooks over a dict; the base class does everything else."""

    features: ClassVar[Features] = Features(persistent=False)
    settings_class: ClassVar[type[BaseSettings]] = Settings
    url_schemes: ClassVar[tuple[str, ...]] = ("testbackend",)
    settings: Settings

    @classmethod
    def settings_from_url(cls, url: str) -> dict[str, Any]:
        name = (urlsplit(url).netloc + urlsplit(url).path).strip("/")
        return {"name": name} if name else {}

    def _open(self) -> None:
        self._records: dict[str, dict[str, Any]] = {}
        if self.settings.name is not None:
            with _NAMED_LOCK:
                self._records = _NAMED.setdefault(self.settings.name, {})

    def _load(self, pk: str) -> dict[str, Any] | None:
        record = self._records.get(pk)
        return None if record is None else copy_value(record)  # a fresh dict, never ours

    def _store(self, pk: str, record: dict[str, Any], *, overwrite: bool) -> bool:
        with self._lock:  # the check and the write as one step
            if not overwrite and pk in self._records:
                return False
            self._records[pk] = copy_value(record)  # never keep the caller's dict
            return True

    def _remove(self, pk: str) -> bool:
        return self._records.pop(pk, None) is not None

    def _scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for pk, record in list(self._records.items()):
            yield pk, copy_value(record)

    def _clear(self) -> None:
        self._records.clear()

    def _close(self) -> None:
        pass

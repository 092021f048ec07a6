"""shelve backend: a seed backend over the standard library.

Engine: :mod:`shelve` over one explicitly chosen :mod:`dbm` module
(``dbm.gnu``, ``dbm.ndbm``, ``dbm.dumb``, or ``dbm.sqlite3`` on Python 3.13+).
Dependencies: none beyond the standard library (``dbm.gnu`` needs the
interpreter's ``_gdbm`` module: Debian's ``python3-gdbm``).
Suits: small single-process data, scripts, tests. Records are plain pickled
dicts, so ``shelve.open(path)`` alone reads them.
Limits: no indexes; every query scans and filters in Python; no transactions;
one process at a time (``dbm.dumb`` does not even lock the file).

The module that wrote a file is recorded in the file and checked on every
open: a file is never opened through another dbm module (plain
``shelve.open`` would silently pick whichever module the interpreter has).
"""

from __future__ import annotations

import dbm
import importlib
import pickle
import shelve
from collections.abc import Iterator
from types import ModuleType
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from ..backend import (
    BackendUnavailable,
    BaseQuery,
    BaseSettings,
    BaseStorage,
    ConfigurationError,
    Features,
    PyModelsError,
    url_path,
)

__all__ = ["Query", "Settings", "Storage", "features"]

features = Features(
    thread_safe=True,
    fork_safe=False,
    concurrent_processes=False,
)

#: Where the library keeps its own data: pks never contain NUL, so no record can use it.
META_KEY = "\x00pymodels"
FORMAT_VERSION = 1
#: Preference order when a new file is created without a ``dbm`` setting.
PREFERRED = ("dbm.gnu", "dbm.ndbm", "dbm.dumb")


class Settings(BaseSettings):
    """Settings of the shelve backend."""

    #: The database file (dbm modules may add suffixes such as .db or .dat/.dir).
    path: str
    #: The dbm module: "dbm.gnu", "dbm.ndbm", "dbm.dumb" or "dbm.sqlite3" (short
    #: forms "gnu", ... accepted). Default: the file's own module, or for a new
    #: file the first importable of gnu, ndbm, dumb.
    dbm: str | None = None
    #: Pickle protocol for new records.
    protocol: int = pickle.HIGHEST_PROTOCOL


class Query(BaseQuery[Any]):
    """Every query scans the shelf; conditions, order and slices run in Python."""


class Storage(BaseStorage):
    """A shelf of plain dicts keyed by pk."""

    features: ClassVar[Features] = features
    query_class: ClassVar[type[BaseQuery[Any]]] = Query
    settings_class: ClassVar[type[BaseSettings]] = Settings
    url_schemes: ClassVar[tuple[str, ...]] = ("shelve",)
    settings: Settings

    @classmethod
    def settings_from_url(cls, url: str) -> dict[str, Any]:
        parts = urlsplit(url)
        settings: dict[str, Any] = {"path": url_path(url)}
        for key, value in parse_qsl(parts.query):
            settings[key] = value
        return settings

    def _open(self) -> None:
        path = self.settings.path
        existing = dbm.whichdb(path)
        wanted = _normalise(self.settings.dbm) if self.settings.dbm else None
        if existing:  # "" means "exists but unknown"; None means "no such file"
            name = existing if existing.startswith("dbm.") else f"dbm.{existing}"
            if wanted is not None and wanted != name:
                raise ConfigurationError(
                    f"{path} was written by {name}; refusing to open it with {wanted} "
                    "(setting 'dbm')"
                )
        elif existing == "":
            raise ConfigurationError(f"{path} exists but is not a dbm file any module here reads")
        else:
            if self.read_only:
                raise ConfigurationError(f"{path} does not exist (read_only is set)")
            name = wanted or next(n for n in PREFERRED if _importable(n))
        module = _import_dbm(name)
        flag = "r" if self.read_only else "c"
        try:
            db = module.open(path, flag)
        except Exception as e:
            raise PyModelsError(f"cannot open {path} with {name}: {e}") from e
        self._shelf: shelve.Shelf[Any] = shelve.Shelf(db, protocol=self.settings.protocol)
        self.dbm_module = name
        meta = self._shelf.get(META_KEY)
        if meta is None:
            if not self.read_only:
                self._shelf[META_KEY] = {"format": FORMAT_VERSION, "dbm": name}
        elif meta.get("dbm") != name:
            self._shelf.close()
            raise ConfigurationError(
                f"{path} records dbm module {meta.get('dbm')!r} but opens as {name}"
            )

    def _load(self, pk: str) -> dict[str, Any] | None:
        with self._lock:
            try:
                record: dict[str, Any] = self._shelf[pk]
            except KeyError:
                return None
            return record

    def _store(self, pk: str, record: dict[str, Any], *, overwrite: bool) -> bool:
        with self._lock:
            if not overwrite and pk in self._shelf:
                return False
            self._shelf[pk] = record
            return True

    def _remove(self, pk: str) -> bool:
        with self._lock:
            try:
                del self._shelf[pk]
            except KeyError:
                return False
            return True

    def _keys(self) -> Iterator[str]:
        with self._lock:
            keys = [k for k in self._shelf if k != META_KEY]
        return iter(keys)

    def _scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for pk in self._keys():
            record = self._load(pk)
            if record is not None:
                yield pk, record

    def _count(self) -> int:
        with self._lock:
            return len(self._shelf) - (META_KEY in self._shelf)

    def _contains(self, pk: str) -> bool:
        with self._lock:
            return pk in self._shelf

    def _clear(self) -> None:
        with self._lock:
            for pk in list(self._keys()):
                del self._shelf[pk]

    def _close(self) -> None:
        with self._lock:
            self._shelf.close()


def _normalise(name: str) -> str:
    full = name if name.startswith("dbm.") else f"dbm.{name}"
    if full not in ("dbm.gnu", "dbm.ndbm", "dbm.dumb", "dbm.sqlite3"):
        raise ConfigurationError(
            f"setting 'dbm': unknown module {name!r} (accepted: dbm.gnu, dbm.ndbm, dbm.dumb, "
            "dbm.sqlite3)"
        )
    return full


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _import_dbm(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        hint = {
            "dbm.gnu": "apt-get install python3-gdbm (and use Debian's Python, or copy its "
            "_gdbm module into your environment)",
            "dbm.ndbm": "a Python built with the _dbm module",
            "dbm.sqlite3": "Python 3.13 or newer",
        }.get(name, "")
        raise BackendUnavailable(f"{name} is not available in this Python: {hint}") from e

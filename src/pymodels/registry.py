"""Finding backends: names, aliases, entry points, dotted paths and URLs.

``get_storage`` accepts a settings dict (``{"backend": "shelve", "path": ...}``)
or a URL (``"sqlite:///app.db"``). A backend is a module exposing ``Storage``,
a :class:`~pymodels.backend.BaseStorage` subclass, whose ``query_class`` and
``features`` are the backend's query class and capabilities (modules also
export them as ``Query`` and ``features`` by convention; the registry needs
only ``Storage``). Third-party backends register under the entry-point group
``pymodels.backends`` or are named by dotted module path.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
from collections.abc import Mapping
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import BackendNotFound, BackendUnavailable, ConfigurationError
from .storage import BaseStorage

__all__ = [
    "DEFAULT_URL",
    "ENTRY_POINT_GROUP",
    "get_db",
    "get_storage",
    "known_backends",
    "load_backend",
]

#: The entry-point group third-party backends register under.
ENTRY_POINT_GROUP = "pymodels.backends"

#: What ``get_storage()`` opens with no settings: the embedded default.
DEFAULT_URL = "sqlite:///pymodels.db"

#: Built-in backends: short name -> (module, what to install if its driver is missing).
BUILTIN: dict[str, tuple[str, str]] = {
    "memory": ("pymodels.ext.memory", ""),
    "shelve": ("pymodels.ext.shelve", ""),
    "sqlite": ("pymodels.ext.sqlite", ""),
    "postgresql": ("pymodels.ext.postgresql", "pip install 'pymodels[postgresql]'"),
    "mongodb": ("pymodels.ext.mongodb", "pip install 'pymodels[mongodb]'"),
    "tokyo_cabinet": ("pymodels.ext.tokyo_cabinet", "apt-get install libtokyocabinet9"),
    "tokyo_tyrant": ("pymodels.ext.tokyo_tyrant", ""),
}

#: Other names (and URL schemes) for the built-in backends.
ALIASES: dict[str, str] = {
    "postgres": "postgresql",
    "sqlite3": "sqlite",
    "mongo": "mongodb",
    "mongodb+srv": "mongodb",
    "tokyo-cabinet": "tokyo_cabinet",
    "tokyo-tyrant": "tokyo_tyrant",
}


def _builtin_available(name: str) -> bool:
    return importlib.util.find_spec(BUILTIN[name][0]) is not None


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def known_backends() -> list[str]:
    """Names ``get_storage`` accepts: built-in backends present here, then plug-ins."""
    names = [n for n in BUILTIN if _builtin_available(n)]
    names += sorted(n for n in _entry_points() if n not in names)
    return names


def load_backend(name: str) -> ModuleType:
    """The backend module for a short name, alias, entry-point name or dotted path."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"setting 'backend' must be a non-empty str, not {name!r}")
    short = ALIASES.get(name, name)
    hint = ""
    if short in BUILTIN and _builtin_available(short):
        module_name, hint = BUILTIN[short]
        module = _import(module_name, hint)
    else:
        eps = _entry_points()
        if name in eps:
            try:
                loaded = eps[name].load()
            except ImportError as e:
                raise BackendUnavailable(f"backend {name!r} failed to import: {e}") from e
            module = (
                loaded
                if isinstance(loaded, ModuleType)
                else importlib.import_module(eps[name].module)
            )
        elif "." in name:
            try:
                spec = importlib.util.find_spec(name)
            except ModuleNotFoundError:  # a parent package is missing
                spec = None
            if spec is None:
                raise _not_found(name)
            module = _import(name, "")
        else:
            raise _not_found(name)
    # Only Storage is required: the query class and the features are
    # Storage.query_class and Storage.features (modules name them Query and
    # features by convention, and the message lists those it lacks too).
    storage_class = getattr(module, "Storage", None)
    if storage_class is None:
        missing = [attr for attr in ("Storage", "Query", "features") if not hasattr(module, attr)]
        raise ConfigurationError(
            f"{module.__name__} is not a pymodels backend: it lacks {', '.join(missing)}"
        )
    if not (isinstance(storage_class, type) and issubclass(storage_class, BaseStorage)):
        raise ConfigurationError(
            f"{module.__name__} is not a pymodels backend: its Storage is not a subclass "
            "of pymodels.backend.BaseStorage"
        )
    return module


def _import(module_name: str, hint: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except BackendUnavailable:
        raise
    except ImportError as e:
        advice = f": {hint}" if hint else ""
        raise BackendUnavailable(f"backend {module_name} cannot load ({e}){advice}") from e


def _backend_for_scheme(scheme: str) -> ModuleType:
    short = ALIASES.get(scheme, scheme)
    if short in BUILTIN:
        return load_backend(short)
    for module_name in _entry_points():
        module = load_backend(module_name)
        if scheme in getattr(module.Storage, "url_schemes", ()):
            return module
    raise _not_found(scheme, scheme=True)


def _not_found(name: str, *, scheme: bool = False) -> BackendNotFound:
    """The error for an unknown backend name or URL scheme, with the closest known one."""
    known = known_backends()
    candidates = [*known, *(alias for alias, short in ALIASES.items() if short in known)]
    if scheme:
        # A URL scheme takes letters, digits, "+", "-" and "." only.
        candidates = [c for c in candidates if "_" not in c]
    close = difflib.get_close_matches(name.lower(), candidates, n=1)
    suffix = "://" if scheme else ""
    suggestion = f"{close[0]}{suffix}" if close else None
    return BackendNotFound(f"{name}{suffix}", known, suggestion=suggestion)


def url_path(url: str) -> str:
    """The file path of a URL by SQLAlchemy's rule.

    ``scheme:///rel/path`` is relative to the working directory and
    ``scheme:////abs/path`` absolute.
    """
    parts = urlsplit(url)
    if parts.netloc:
        raise ConfigurationError(
            f"{url!r}: a file URL has three slashes (scheme:///relative or scheme:////absolute)"
        )
    path = unquote(parts.path)
    if not path.startswith("/") or path == "/":
        raise ConfigurationError(f"{url!r} names no file")
    return path[1:]


def get_storage(settings: Mapping[str, Any] | str | None = None, **overrides: Any) -> BaseStorage:
    """Open a storage from a settings dict or a URL; keyword overrides replace keys.

    With no settings, opens the embedded default (:data:`DEFAULT_URL`).
    """
    if settings is None:
        settings = DEFAULT_URL
    if isinstance(settings, str):
        settings = _hyphenated_scheme(settings)
        try:
            scheme = urlsplit(settings).scheme
        except ValueError as e:  # "Invalid IPv6 URL" and the like
            raise ConfigurationError(f"{settings!r} is not a valid URL: {e}") from e
        if not scheme:
            head, sep, _ = settings.partition("://")
            if sep and head and "/" not in head:
                # urllib read no scheme in "foo_bar://...": name the unknown backend.
                raise _not_found(head, scheme=True)
            raise ConfigurationError(f"{settings!r} is not a URL (expected scheme://...)")
        module = _backend_for_scheme(scheme)
        try:
            options = dict(module.Storage.settings_from_url(settings))
        except ValueError as e:  # urllib's parsers raise it for a malformed netloc or port
            raise ConfigurationError(f"{settings!r} is not a valid URL: {e}") from e
    elif isinstance(settings, Mapping):
        options = dict(settings)
        if "backend" not in options:
            raise ConfigurationError(
                "missing setting 'backend' (a name such as "
                f"{', '.join(repr(n) for n in known_backends())}, or a dotted module path)"
            )
        module = load_backend(options.pop("backend"))
    else:
        raise ConfigurationError(
            f"settings must be a dict or a URL string, not {type(settings).__name__}"
        )
    if "backend" in overrides:
        raise ConfigurationError("'backend' cannot be overridden; pass it in the settings")
    options.update(overrides)
    storage: BaseStorage = module.Storage(**options)
    return storage


def _hyphenated_scheme(url: str) -> str:
    """``tokyo_cabinet:///x.tct`` as ``tokyo-cabinet:///x.tct``.

    Backend names hold ``_``, which a URL scheme cannot (urllib reads no scheme at all
    in ``tokyo_cabinet://``), so a user who writes a backend's name as the scheme gets
    its hyphenated alias. Other texts are returned as given.
    """
    head, sep, rest = url.partition("://")
    hyphenated = head.lower().replace("_", "-")
    if sep and "_" in head and (hyphenated in ALIASES or hyphenated in BUILTIN):
        return f"{hyphenated}://{rest}"
    return url


#: The library's later name for :func:`get_storage`.
get_db = get_storage

"""get_storage: settings dicts, overrides, aliases, dotted paths, entry points and URLs."""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from pathlib import Path

import pytest

import pymodels
from pymodels import BackendNotFound, BackendUnavailable, ConfigurationError
from pymodels.ext import memory, shelve
from pymodels.registry import ENTRY_POINT_GROUP, known_backends, url_path
from pymodels.storage import backend_module


def test_short_name_alias_and_dotted_path() -> None:
    assert isinstance(pymodels.get_storage({"backend": "memory"}), memory.Storage)
    assert isinstance(pymodels.get_storage({"backend": "pymodels.ext.memory"}), memory.Storage)
    assert pymodels.get_db is pymodels.get_storage


def test_a_storage_is_named_by_its_public_module() -> None:
    s = pymodels.get_storage("memory://")
    assert s.backend == "pymodels.ext.memory" and repr(s) == "<pymodels.ext.memory.Storage>"
    # A backend kept in private submodules is named by its package, the name
    # users import and give as "backend".
    fake = type("Storage", (), {"__module__": "vendor.backend._impl.storage"})
    assert backend_module(fake) == "vendor.backend"
    assert backend_module(type("S", (), {"__module__": "__main__"})) == "__main__"


def test_keyword_overrides_replace_dict_keys(tmp_path: Path) -> None:
    settings = {"backend": "shelve", "path": str(tmp_path / "a"), "dbm": "dbm.dumb"}
    with pymodels.get_storage(settings, path=str(tmp_path / "b")) as s:
        assert s.settings.path == str(tmp_path / "b")  # type: ignore[attr-defined]
    assert settings["path"] == str(tmp_path / "a")  # the caller's dict is untouched


def test_missing_backend_key() -> None:
    with pytest.raises(ConfigurationError, match="'backend'"):
        pymodels.get_storage({"path": "x"})


def test_unknown_and_missing_settings_name_the_key_and_what_is_accepted() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown setting 'colour'.*accepted settings"):
        pymodels.get_storage({"backend": "memory", "colour": "red"})
    with pytest.raises(ConfigurationError, match=r"missing setting 'path'.*dbm"):
        pymodels.get_storage({"backend": "shelve"})
    with pytest.raises(ConfigurationError, match="'read_only'"):
        pymodels.get_storage({"backend": "memory"}, read_only="perhaps")


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(BackendNotFound) as info:
        pymodels.get_storage({"backend": "nosuchdb"})
    assert "memory" in info.value.known and "shelve" in info.value.known
    assert "memory" in str(info.value)
    with pytest.raises(BackendNotFound):
        pymodels.get_storage({"backend": "no.such.module"})
    with pytest.raises(BackendNotFound):
        pymodels.get_storage("nosuchscheme://x")


def test_a_misspelt_backend_is_answered_with_the_closest_known_name() -> None:
    with pytest.raises(BackendNotFound, match=r"'sqlit' \(did you mean 'sqlite'\?\)"):
        pymodels.get_storage({"backend": "sqlit"})
    # A URL gets a scheme back, in the form a URL can hold (no "_").
    with pytest.raises(BackendNotFound, match=r"'tyrant://' \(did you mean 'tokyo-tyrant://'\?\)"):
        pymodels.get_storage("tyrant://127.0.0.1:1978")
    with pytest.raises(BackendNotFound, match=r"'mongo_db://' \(did you mean 'mongodb://'\?\)"):
        pymodels.get_storage("mongo_db://localhost/app")
    with pytest.raises(BackendNotFound) as info:
        pymodels.get_storage("nosuchscheme://x")
    assert "did you mean" not in str(info.value)
    assert info.value.name == "nosuchscheme://"


def test_a_backend_name_with_an_underscore_serves_as_its_url_scheme() -> None:
    """urllib reads no scheme in ``tokyo_tyrant://``; the registry reads its alias."""
    from pymodels import ConnectionFailed

    for scheme in ("tokyo_tyrant", "Tokyo_Tyrant", "tokyo-tyrant"):
        # Port 1: nothing listens, so reaching the backend is proven by its own error.
        with pytest.raises(ConnectionFailed, match=r"Tokyo Tyrant at 127\.0\.0\.1:1"):
            pymodels.get_storage(f"{scheme}://127.0.0.1:1?timeout=0.5")


def test_a_module_that_is_not_a_backend() -> None:
    with pytest.raises(ConfigurationError, match="lacks Storage, Query, features"):
        pymodels.get_storage({"backend": "pymodels.errors"})


def test_missing_driver_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "thirdparty_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "needs_driver.py").write_text("import a_driver_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendUnavailable, match="a_driver_that_is_not_installed") as info:
        pymodels.get_storage({"backend": "thirdparty_pkg.needs_driver"})
    assert isinstance(info.value.__cause__, ImportError)
    for name in ("thirdparty_pkg.needs_driver", "thirdparty_pkg"):
        sys.modules.pop(name, None)


def test_installed_plugin_is_found_by_entry_point() -> None:
    try:
        importlib.metadata.distribution("pymodels-testbackend")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - setup error
        pytest.fail("tests/plugins/pymodels_testbackend is not installed; scripts/test installs it")
    names = [ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]
    assert "testbackend" in names
    assert "testbackend" in known_backends()
    with pymodels.get_storage({"backend": "testbackend", "greeting": "hi"}) as s:
        assert type(s).__module__ == "pymodels_testbackend"
        assert s.settings.greeting == "hi"  # type: ignore[attr-defined]
        s.save({"a": 1}, primary_key="k")
        assert s.get(None, "k")["a"] == 1
    with pymodels.get_storage("testbackend://shared") as s:
        assert type(s).__module__ == "pymodels_testbackend"


def test_url_path_rule() -> None:
    assert url_path("shelve:///data.db") == "data.db"
    assert url_path("shelve:///dir/data.db") == "dir/data.db"
    assert url_path("shelve:////abs/data.db") == "/abs/data.db"
    assert url_path("sqlite:///with%20space.db") == "with space.db"
    with pytest.raises(ConfigurationError):
        url_path("shelve://host/data.db")
    with pytest.raises(ConfigurationError):
        url_path("shelve:///")


def test_shelve_urls_are_relative_or_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pymodels.get_storage("shelve:///rel.db?dbm=dbm.dumb") as s:
        assert isinstance(s, shelve.Storage)
        s.save({"a": 1}, primary_key="k")
    assert any(p.name.startswith("rel.db") for p in tmp_path.iterdir())
    absolute = tmp_path / "sub"
    absolute.mkdir()
    with pymodels.get_storage(f"shelve:///{absolute}/abs.db", dbm="dbm.dumb") as s:
        s.save({"a": 1}, primary_key="k")
    assert any(p.name.startswith("abs.db") for p in absolute.iterdir())
    assert os.path.isabs(str(absolute))


def test_memory_urls_share_by_name() -> None:
    with (
        pymodels.get_storage("memory://registry-test") as a,
        pymodels.get_storage("memory://registry-test") as b,
    ):
        a.save({"x": 1}, primary_key="k")
        assert b.get(None, "k")["x"] == 1
    with pymodels.get_storage("memory://") as fresh:
        assert len(fresh) == 0


def test_settings_must_be_dict_or_url() -> None:
    with pytest.raises(ConfigurationError):
        pymodels.get_storage(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        pymodels.get_storage("no-scheme-here")
    with pytest.raises(ConfigurationError):
        pymodels.get_storage({"backend": "memory"}, backend="shelve")


@pytest.mark.parametrize(
    ("name", "driver", "advice"),
    [
        ("postgresql", "psycopg", "pip install 'pymodels[postgresql]'"),
        (
            "tokyo_cabinet",
            "pymodels.ext.tokyo_cabinet._binding",
            "apt-get install libtokyocabinet9",
        ),
    ],
)
def test_a_builtin_backend_without_its_driver_says_what_to_install(
    name: str, driver: str, advice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the driver were not installed: importing it fails, and the backend
    # module is imported afresh (monkeypatch puts every module back afterwards).
    monkeypatch.setitem(sys.modules, driver, None)
    for module in [m for m in sys.modules if m.startswith(f"pymodels.ext.{name}")]:
        if module != driver:
            monkeypatch.delitem(sys.modules, module)
    with pytest.raises(BackendUnavailable, match=re.escape(advice)) as info:
        pymodels.get_storage({"backend": name})
    assert isinstance(info.value.__cause__, ImportError)
    assert name in known_backends()  # still known: only its driver is missing


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ("shelve:///x?protocol=99", "protocol"),
        ("postgresql://[::1", "[::1"),
        ("postgresql://h:abc/x", "abc"),
        ("sqlite:///x?timeout=nan", "timeout"),
        ("sqlite:///x?timeout=-1", "timeout"),
        ("sqlite:///x?timeout=inf", "timeout"),
        (
            {"backend": "tokyo_cabinet", "path": "x.tct", "lock_timeout": float("nan")},
            "lock_timeout",
        ),
        ({"backend": "shelve", "path": "x", "lock_timeout": -1.0}, "lock_timeout"),
        ({"backend": "shelve", "path": "a\x00b"}, "path"),
        ({"backend": "sqlite", "path": "a\udcffb"}, "path"),
        ("shelve:///a%00b", "path"),
    ],
)
def test_bad_settings_name_the_value_and_create_nothing(
    settings: object, named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One shared check in BaseSettings (and the URL parser): never a raw ValueError."""
    monkeypatch.chdir(tmp_path)
    try:
        with pytest.raises(ConfigurationError, match=named.replace("[", r"\[")):
            pymodels.get_storage(settings)  # type: ignore[arg-type]
    except BackendUnavailable:  # pragma: no cover - Tokyo's C library missing here
        pytest.skip("backend unavailable")
    assert os.listdir(tmp_path) == []

"""shelve-specific behaviour: the recorded dbm module, plain-shelve readability, read-only."""

from __future__ import annotations

import dbm
import importlib
import shelve
import warnings
from pathlib import Path

import pytest

import pymodels
from pymodels import ConfigurationError, Document
from pymodels.ext.shelve import META_KEY


def _has(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


needs_gnu = pytest.mark.skipif(not _has("dbm.gnu"), reason="dbm.gnu is not importable here")


class Thing(Document):
    name: str

    class Meta:
        indexes = ["name"]


def open_shelf(path: Path, **settings: object) -> pymodels.storage.BaseStorage:
    return pymodels.get_storage({"backend": "shelve", "path": str(path), **settings})


def test_records_are_plain_dicts_that_plain_shelve_reads(tmp_path: Path) -> None:
    path = tmp_path / "data"
    with open_shelf(path, dbm="dbm.dumb") as s:
        s.save({"a": 1, "nested": {"b": [1, 2]}}, primary_key="k")
    with shelve.open(str(path)) as raw:
        assert raw["k"] == {"a": 1, "nested": {"b": [1, 2]}}
        assert raw[META_KEY] == {"format": 1, "dbm": "dbm.dumb"}


@needs_gnu
def test_the_module_that_wrote_a_file_is_recorded_and_enforced(tmp_path: Path) -> None:
    path = tmp_path / "data"
    with open_shelf(path, dbm="gnu") as s:
        assert s.dbm_module == "dbm.gnu"  # type: ignore[attr-defined]
        s.save({"a": 1}, primary_key="k")
    assert dbm.whichdb(str(path)) == "dbm.gnu"
    with pytest.raises(ConfigurationError, match=r"dbm\.gnu.*dbm\.dumb"):
        open_shelf(path, dbm="dbm.dumb")
    with open_shelf(path) as again:  # no setting: the file's own module
        assert again.dbm_module == "dbm.gnu"  # type: ignore[attr-defined]
        assert again.get(None, "k")["a"] == 1


def test_unknown_dbm_module_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="'dbm'"):
        open_shelf(tmp_path / "x", dbm="dbm.berkeley")


def test_metadata_is_invisible(tmp_path: Path) -> None:
    with open_shelf(tmp_path / "data", dbm="dbm.dumb") as s:
        assert len(s) == 0 and list(s) == [] and s.query().count() == 0
        s.save({"a": 1}, primary_key="k")
        s.clear()
        assert len(s) == 0
    with shelve.open(str(tmp_path / "data")) as raw:
        assert list(raw) == [META_KEY]  # clear() keeps the library's own key


def test_read_only_skips_indexes_and_needs_the_file(tmp_path: Path) -> None:
    # Reads and refused writes are the conformance suite's.
    path = tmp_path / "data"
    with open_shelf(path, dbm="dbm.dumb") as s:
        s.save({"name": "x"}, primary_key="k")
    with open_shelf(path, read_only=True) as ro:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ro.ensure_indexes(Thing)
        assert any("read-only" in str(w.message) for w in caught)
    with pytest.raises(ConfigurationError, match="does not exist"):
        open_shelf(tmp_path / "missing", read_only=True)


def test_features_say_scan() -> None:
    from pymodels.ext.shelve import features

    assert set(features.ops.values()) == {"python"}
    assert not features.transactions and not features.indexes

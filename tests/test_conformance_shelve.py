"""The conformance suite on the shelve backend, once per dbm module available here."""

from __future__ import annotations

import importlib

import pytest

import pymodels
from pymodels.testing.suite import StorageTests


def _available(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


DBM_MODULES = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(not _available(name), reason=f"{name} is not importable here"),
    )
    for name in ("dbm.gnu", "dbm.ndbm", "dbm.dumb")
]


class TestShelve(StorageTests):
    @pytest.fixture(params=DBM_MODULES)
    def storage_factory(self, request, tmp_path):  # type: ignore[no-untyped-def]
        path = str(tmp_path / "shelf")
        return lambda: pymodels.get_storage(
            {"backend": "shelve", "path": path, "dbm": request.param}
        )

"""The conformance suite on SQLite, in a file and in memory."""

from __future__ import annotations

import pytest

import pymodels
from pymodels.testing.suite import StorageTests


class TestSQLiteFile(StorageTests):
    @pytest.fixture
    def storage_factory(self, tmp_path):  # type: ignore[no-untyped-def]
        path = str(tmp_path / "db.sqlite")
        return lambda: pymodels.get_storage({"backend": "sqlite", "path": path})

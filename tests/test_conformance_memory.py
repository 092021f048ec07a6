"""The conformance suite on the in-memory reference backend."""

from __future__ import annotations

import itertools

import pytest

import pymodels
from pymodels.testing.suite import StorageTests

_names = itertools.count()


class TestMemory(StorageTests):
    @pytest.fixture
    def storage_factory(self):  # type: ignore[no-untyped-def]
        name = f"conformance-{next(_names)}"
        return lambda: pymodels.get_storage(f"memory://{name}")

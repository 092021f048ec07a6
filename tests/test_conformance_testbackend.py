"""The conformance suite on the test plug-in: the minimal backend of docs/backends.md.

It implements only the required hooks, so this checks that the base classes'
defaults alone make a complete, correct backend.
"""

from __future__ import annotations

import itertools

import pytest

import pymodels
from pymodels.testing.suite import StorageTests

_names = itertools.count()


class TestMinimalPlugin(StorageTests):
    @pytest.fixture
    def storage_factory(self):  # type: ignore[no-untyped-def]
        name = f"conformance-{next(_names)}"
        return lambda: pymodels.get_storage(f"testbackend://{name}")

"""The conformance suite on the Tokyo Cabinet backend, against real .tct files."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pymodels
from pymodels.errors import BackendUnavailable
from pymodels.storage import BaseStorage
from pymodels.testing.suite import StorageTests

try:
    import pymodels.ext.tokyo_cabinet
    from pymodels.ext.tokyo_cabinet._binding import live_pointer_kinds, live_pointers
except BackendUnavailable as e:  # the C library is missing here
    pytest.skip(f"Tokyo Cabinet backend unavailable: {e}", allow_module_level=True)


class TestTokyoCabinet(StorageTests):
    @pytest.fixture
    def storage_factory(self, tmp_path: Path) -> Iterator[Callable[[], BaseStorage]]:
        path = str(tmp_path / "storage.tct")
        opened: list[BaseStorage] = []

        def factory() -> BaseStorage:
            storage = pymodels.get_storage({"backend": "tokyo_cabinet", "path": path})
            opened.append(storage)
            return storage

        yield factory
        for storage in opened:
            storage.close()
        gc.collect()
        # Whatever the test did, every pointer the binding took is freed again.
        assert live_pointers() == 0, live_pointer_kinds()

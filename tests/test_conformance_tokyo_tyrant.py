"""The conformance suite (and its hypothesis differential tests) on the Tokyo Tyrant
backend, against a throwaway server: a real ``ttserver`` when ``PYMODELS_TEST_TTSERVER``
names one (or one is on PATH), else the project's own protocol server over Tokyo
Cabinet (see :mod:`pymodels.testing.tyrant`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

import pymodels
from pymodels.errors import BackendUnavailable
from pymodels.storage import BaseStorage
from pymodels.testing.suite import StorageTests

try:
    from pymodels.testing.tyrant import ENV_TTSERVER, TemporaryTyrant
    from pymodels.testing.tyrant import find_ttserver as _find

    if _find() is None:
        import pymodels.testing._tyrant_server  # the fallback needs the Cabinet library
except BackendUnavailable as e:  # pragma: no cover - the C library is missing here
    pytest.skip(f"no Tokyo Tyrant test server: {e}", allow_module_level=True)


@pytest.fixture(scope="module")
def tyrant() -> Iterator[TemporaryTyrant]:
    with TemporaryTyrant() as tt:
        # With PYMODELS_TEST_TTSERVER set, the whole suite (4 processes x 2,000 saves
        # included) runs on that ttserver.
        assert tt.real or not os.environ.get(ENV_TTSERVER)
        yield tt


class TestTokyoTyrant(StorageTests):
    @pytest.fixture
    def storage_factory(self, tyrant: TemporaryTyrant) -> Iterator[Callable[[], BaseStorage]]:
        opened: list[BaseStorage] = []
        # Each test starts on an empty table without indexes (one server for the module).
        with pymodels.get_storage(tyrant.url) as s:
            s.clear()
            for column in s.index_kinds():  # type: ignore[attr-defined]
                s.client.setindex(column.encode("utf-8"), b"void")  # type: ignore[attr-defined]

        def factory() -> BaseStorage:
            storage = pymodels.get_storage(tyrant.url, timeout=30)
            opened.append(storage)
            return storage

        yield factory
        for storage in opened:
            storage.close()

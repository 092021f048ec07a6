"""The conformance suite on a real MongoDB wire-protocol server, one for the session
(and once more on a standalone server, which has no transactions).

The server is ``PYMODELS_TEST_MONGODB_URL`` when set, else a throwaway
``mongod`` or SecantusDB (:mod:`pymodels.testing.mongodb`); each test gets a
collection of its own.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

import pymodels
from pymodels.testing.mongodb import mongodb_skip_reason, mongodb_url_for_tests
from pymodels.testing.suite import StorageTests

_reason = mongodb_skip_reason()
try:
    import pymongo  # noqa: F401 - the backend's driver
except ImportError as e:  # pragma: no cover - depends on the environment
    _reason = _reason or f"pymongo is not installed ({e})"
if _reason is not None and os.environ.get("PYMODELS_REQUIRE_ENGINES"):
    # scripts/test installs a server and pymongo: a skip there would hide a broken setup.
    raise RuntimeError(f"MongoDB is required (PYMODELS_REQUIRE_ENGINES is set): {_reason}")
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")
_collections = itertools.count()


@pytest.fixture(scope="session")
def mongodb_url() -> Iterator[str]:
    with mongodb_url_for_tests() as url:
        yield url


class TestMongoDB(StorageTests):
    @pytest.fixture
    def storage_factory(self, mongodb_url):  # type: ignore[no-untyped-def]
        collection = f"conformance_{os.getpid()}_{next(_collections)}"
        return lambda: pymodels.get_storage(mongodb_url, collection=collection)


@pytest.fixture(scope="session")
def standalone_url() -> Iterator[str]:
    from pymodels.testing.mongodb import TemporaryMongo

    with TemporaryMongo(standalone=True) as server:
        yield server.url


class TestMongoDBStandalone(StorageTests):
    """A server without a replica set: no transactions, save_many batches without one."""

    @pytest.fixture
    def storage_factory(self, standalone_url):  # type: ignore[no-untyped-def]
        collection = f"standalone_{os.getpid()}_{next(_collections)}"
        return lambda: pymodels.get_storage(standalone_url, collection=collection)

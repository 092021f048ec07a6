"""The conformance suite on a real PostgreSQL server started for the test run."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

import pymodels
from pymodels.testing.postgresql import postgres_skip_reason, postgres_url_for_tests
from pymodels.testing.suite import StorageTests

_reason = postgres_skip_reason()
if _reason is not None and os.environ.get("PYMODELS_REQUIRE_ENGINES"):
    # scripts/test installs PostgreSQL: a skip there would hide a broken setup.
    raise RuntimeError(f"PostgreSQL is required (PYMODELS_REQUIRE_ENGINES is set): {_reason}")
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")
_tables = itertools.count()


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with postgres_url_for_tests() as url:
        yield url


class TestPostgreSQL(StorageTests):
    @pytest.fixture
    def storage_factory(self, server_url):  # type: ignore[no-untyped-def]
        table = f"conformance_{next(_tables)}"
        return lambda: pymodels.get_storage(server_url, table=table)

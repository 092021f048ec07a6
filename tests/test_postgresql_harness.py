"""Tests for pymodels.testing.postgresql, the throwaway PostgreSQL server harness.

The server tests need Debian's PostgreSQL binaries (``apt-get install postgresql``)
and psycopg; they skip with that reason when either is absent. The tests of the
environment-variable and missing-binaries paths run everywhere.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymodels.testing import postgresql as harness
from pymodels.testing.postgresql import (
    ENV_URL,
    PostgresNotInstalledError,
    PostgresStartError,
    TemporaryPostgres,
    find_postgres_bin_dir,
    postgres_skip_reason,
    postgres_url_for_tests,
)

try:
    find_postgres_bin_dir()
    _NO_BINARIES: str | None = None
except PostgresNotInstalledError as exc:
    _NO_BINARIES = str(exc)

needs_binaries = pytest.mark.skipif(
    _NO_BINARIES is not None, reason=f"PostgreSQL binaries absent: {_NO_BINARIES}"
)


def _process_gone(pid: int) -> bool:
    """True when *pid* no longer runs; a zombie awaiting its reaper counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] == "Z"


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) with a LISTEN socket on *port*."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A = TCP_LISTEN
                found.add(address)
    return found


@pytest.fixture
def parent_dir() -> Iterator[Path]:
    """A parent for the harness's temp dir that the postgres user can traverse.

    pytest's tmp_path lives under a 0700 directory, which the postgres user
    could not enter when the suite runs as root.
    """
    path = Path(tempfile.mkdtemp(prefix="pymodels-harness-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            raise AssertionError(f"harness left {child} behind")
        path.rmdir()


@needs_binaries
def test_server_starts_accepts_connections_and_is_cleaned_up(parent_dir: Path) -> None:
    psycopg = pytest.importorskip("psycopg")
    with TemporaryPostgres(parent_dir=parent_dir) as pg:
        pid, base_dir, port = pg.pid, pg.base_dir, pg.port
        assert pg.url == f"postgresql://postgres@127.0.0.1:{port}/postgres"
        assert base_dir.parent == parent_dir
        assert not _process_gone(pid)
        with psycopg.connect(pg.url, connect_timeout=10) as conn:
            assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            assert conn.execute("SHOW port").fetchone() == (str(port),)
            assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
            assert conn.execute("SHOW lc_collate").fetchone() == ("C.UTF-8",)
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                assert conn.execute(f"SHOW {setting}").fetchone() == ("off",)
            # The pid we will signal is the server's own postmaster.
            assert conn.execute("SELECT pg_postmaster_start_time() IS NOT NULL").fetchone()
        # Only 127.0.0.1 (hex 0100007F) listens: no wildcard, no IPv6, no other interface.
        assert _listening_addresses(port) == {"0100007F"}
    assert _process_gone(pid)
    assert not base_dir.exists()
    assert not pg.running
    with pytest.raises(harness.PostgresError):
        _ = pg.url


@needs_binaries
def test_exception_inside_block_still_stops_server(parent_dir: Path) -> None:
    psycopg = pytest.importorskip("psycopg")
    pid = None
    with pytest.raises(RuntimeError, match="boom"), TemporaryPostgres(parent_dir=parent_dir) as pg:
        pid = pg.pid
        # A leaked open connection must not block shutdown (fast, not smart, stop).
        conn = psycopg.connect(pg.url)
        raise RuntimeError("boom")
    assert pid is not None and _process_gone(pid)
    conn.close()
    pg.stop()  # idempotent


@needs_binaries
def test_failed_start_leaves_nothing_behind(parent_dir: Path) -> None:
    bad = TemporaryPostgres(parent_dir=parent_dir, settings={"shared_buffers": "not-a-size"})
    with pytest.raises(PostgresStartError, match="shared_buffers"):
        bad.start()
    assert not bad.running
    assert bad not in harness._LIVE
    # parent_dir's fixture asserts the temp dir was removed.


@needs_binaries
def test_two_servers_run_side_by_side(parent_dir: Path) -> None:
    with (
        TemporaryPostgres(parent_dir=parent_dir) as one,
        TemporaryPostgres(parent_dir=parent_dir) as two,
    ):
        assert one.port != two.port
        assert one.pid != two.pid
        assert one.base_dir != two.base_dir


def test_env_var_url_is_used_without_starting_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://someone@127.0.0.1:1/elsewhere"
    monkeypatch.setenv(ENV_URL, url)
    monkeypatch.setattr(harness, "TemporaryPostgres", None)  # any use would fail
    with postgres_url_for_tests() as got:
        assert got == url
    assert postgres_skip_reason(Path("/nonexistent")) is None


@needs_binaries
def test_url_for_tests_starts_a_server_when_env_var_unset(
    monkeypatch: pytest.MonkeyPatch, parent_dir: Path
) -> None:
    monkeypatch.delenv(ENV_URL, raising=False)
    with postgres_url_for_tests(parent_dir=parent_dir) as url:
        assert url.startswith("postgresql://postgres@127.0.0.1:")
        (live,) = [pg for pg in harness._LIVE if pg.url == url]
        pid = live.pid
    assert _process_gone(pid)


def test_missing_binaries_give_an_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_URL, raising=False)
    (tmp_path / "15" / "bin").mkdir(parents=True)  # a version dir without the tools
    with pytest.raises(PostgresNotInstalledError, match="apt-get install postgresql"):
        find_postgres_bin_dir(tmp_path)
    reason = postgres_skip_reason(tmp_path)
    assert reason is not None and "apt-get install postgresql" in reason


def test_newest_version_is_chosen_numerically(tmp_path: Path) -> None:
    for version in ("9.6", "15", "13"):
        bin_dir = tmp_path / version / "bin"
        bin_dir.mkdir(parents=True)
        for tool in ("initdb", "pg_ctl", "postgres"):
            (bin_dir / tool).write_text("#!/bin/sh\n")
            (bin_dir / tool).chmod(0o755)
    assert find_postgres_bin_dir(tmp_path) == tmp_path / "15" / "bin"

"""Throwaway servers die with the process that started them, even on SIGKILL.

Each server kind that can run here (PostgreSQL, a MongoDB server, a Tokyo Tyrant
server) is started from a child process; the child is killed with SIGKILL, which runs
no ``finally`` and no ``atexit``; the server's pid and its directory must be gone within
seconds (the watchdog of :mod:`pymodels.testing._servers`). Also: a forked child that
stops or closes its parent's server leaves it alone, and a normal close leaves no
watchdog process behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pymodels.errors import BackendUnavailable
from pymodels.testing._servers import ThrowawayServer, process_gone
from pymodels.testing.mongodb import TemporaryMongo, mongodb_skip_reason
from pymodels.testing.postgresql import (
    PostgresNotInstalledError,
    TemporaryPostgres,
    find_postgres_bin_dir,
)


def _postgres_reason() -> str | None:
    try:
        find_postgres_bin_dir()
    except PostgresNotInstalledError as e:
        return str(e)
    return None


def _tyrant_reason() -> str | None:
    try:
        import pymodels.testing._tyrant_server  # noqa: F401 - needs the Cabinet library
    except BackendUnavailable as e:  # pragma: no cover - the C library is missing here
        return f"no Tokyo Tyrant test server: {e}"
    return None


REASONS: dict[str, str | None] = {
    "postgresql": _postgres_reason(),
    "mongodb": mongodb_skip_reason(),
    "tyrant": _tyrant_reason(),
}

# Seconds a killed owner's server may take to go: the watchdog's first signal, then
# SIGKILL after the server's stop timeout, on a loaded machine.
GONE_WITHIN = 30.0

# The child: start one server, say its pid and directory, then wait to be killed.
CHILD = """
import sys, time
kind, parent = sys.argv[1], sys.argv[2]
if kind == "postgresql":
    from pymodels.testing.postgresql import TemporaryPostgres
    server = TemporaryPostgres(parent_dir=parent)
elif kind == "mongodb":
    from pymodels.testing.mongodb import TemporaryMongo
    server = TemporaryMongo()
else:
    from pymodels.testing.tyrant import TemporaryTyrant
    server = TemporaryTyrant()
server.start()
print(server.pid, server.base_dir, flush=True)
time.sleep(600)
"""

# The child dies in PostgreSQL's start window: pg_ctl has started the postmaster, and
# the helper is killed before it records the pid.
CHILD_DIES_IN_START_WINDOW = """
import os, sys, time
from pymodels.testing.postgresql import TemporaryPostgres
read_pid = TemporaryPostgres._read_postmaster_pid
def report_and_wait(self):
    print(read_pid(self), self.base_dir, flush=True)
    time.sleep(600)
TemporaryPostgres._read_postmaster_pid = report_and_wait
TemporaryPostgres(parent_dir=sys.argv[1]).start()
"""


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def parent_dir() -> Iterator[Path]:
    """A parent folder the postgres user can traverse (when the tests run as root)."""
    path = Path(tempfile.mkdtemp(prefix="pymodels-watchdog-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _start_in_child(code: str, *args: str) -> tuple[subprocess.Popen[str], int, Path]:
    """Run *code* in a child; return it, and the server pid and directory it printed."""
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.wait(30)
        pytest.fail(f"the child did not start a server (exit code {child.returncode})")
    pid, base_dir = line.split(maxsplit=1)
    return child, int(pid), Path(base_dir.strip())


def _kill_and_check(child: subprocess.Popen[str], pid: int, base_dir: Path) -> None:
    try:
        assert not process_gone(pid), "the server was not running before the kill"
        assert base_dir.is_dir()
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        assert child.returncode == -signal.SIGKILL
        assert _wait_until(lambda: process_gone(pid), GONE_WITHIN), f"server {pid} outlived"
        assert _wait_until(lambda: not base_dir.exists(), GONE_WITHIN), f"{base_dir} is left"
    finally:
        # Only if the test failed: stop what the test started, by pid.
        if child.poll() is None:
            child.kill()
            child.wait(30)
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_server_dies_with_its_owner_on_sigkill(kind: str, parent_dir: Path) -> None:
    if REASONS[kind]:
        pytest.skip(REASONS[kind] or "")
    child, pid, base_dir = _start_in_child(CHILD, kind, str(parent_dir))
    _kill_and_check(child, pid, base_dir)


def test_postgres_started_but_pid_unrecorded_dies_with_its_owner(parent_dir: Path) -> None:
    if REASONS["postgresql"]:
        pytest.skip(REASONS["postgresql"] or "")
    child, pid, base_dir = _start_in_child(CHILD_DIES_IN_START_WINDOW, str(parent_dir))
    _kill_and_check(child, pid, base_dir)


def _make(kind: str) -> ThrowawayServer:
    if kind == "mongodb":
        return TemporaryMongo()
    if kind == "postgresql":
        return TemporaryPostgres()
    from pymodels.testing.tyrant import TemporaryTyrant

    return TemporaryTyrant()


@pytest.mark.parametrize("kind", ["mongodb", "tyrant"])
@pytest.mark.parametrize("how", ["stop", "close"])
def test_a_forked_child_leaves_its_parents_server_alone(kind: str, how: str) -> None:
    if REASONS[kind]:
        pytest.skip(REASONS[kind] or "")
    with _make(kind) as server:
        pid, base_dir = server.pid, server.base_dir
        assert server._watchdog is not None
        watchdog_pid = server._watchdog.pid
        child = os.fork()
        if child == 0:  # pragma: no cover - the forked child
            code = 0
            try:
                getattr(server, how)()
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The child's exit closed no pipe the watchdog waits on: it stays armed.
        time.sleep(0.2)
        assert not process_gone(pid)
        assert base_dir.is_dir()
        assert server.running
        assert not process_gone(watchdog_pid)
    assert process_gone(pid)
    assert not base_dir.exists()
    # A clean close disarms the watchdog, which exits.
    assert _wait_until(lambda: process_gone(watchdog_pid), 10.0)

"""Throwaway MongoDB servers for tests, benchmarks and the examples.

:func:`mongodb_url_for_tests` gives a server URL, the first of:

1. the environment variable ``PYMODELS_TEST_MONGODB_URL`` (a real ``mongod``
   or cluster chosen by the developer), used as it is;
2. a ``mongod`` on ``PATH``, started as a one-member replica set (so that
   transactions work) and initiated;
3. SecantusDB's ``secantusd-py`` (PyPI ``secantusdb``, a MongoDB wire-protocol
   server which scripts/test installs), which is a one-member replica set by
   itself.

``TemporaryMongo(standalone=True)`` starts a server that advertises no replica
set (``mongod`` without ``--replSet``, ``secantusd-py --standalone``): the
paths a standalone deployment takes (no transactions) against a real server.

A server started here listens on 127.0.0.1 on a free port, keeps its data in
a fresh temporary folder (with an empty configuration file, so that it reads
no other), and is stopped by its own process id when the ``with`` block
ends, then its folder is removed::

    with mongodb_url_for_tests() as url:
        storage = pymodels.get_storage(url + "&collection=people")

``python -m pymodels.testing.mongodb -- CMD ARGS...`` runs one command with
``PYMODELS_TEST_MONGODB_URL`` set to a throwaway server.

The module needs only the standard library, plus pymongo to initiate a
``mongod`` replica set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Self

from pymodels.testing._servers import ThrowawayServer, free_port, run_command, url_from_env_or

__all__ = [
    "ENV_URL",
    "MongoError",
    "TemporaryMongo",
    "find_server",
    "mongodb_skip_reason",
    "mongodb_url_for_tests",
]

#: Environment variable naming an existing server to use instead of a throwaway one.
ENV_URL = "PYMODELS_TEST_MONGODB_URL"

_HINT = (
    "no MongoDB server: install mongod, or pip install 'secantusdb==0.7.0b3' "
    f"(scripts/test does), or set {ENV_URL}"
)


class MongoError(RuntimeError):
    """A throwaway server could not be found, started or stopped."""


def find_server() -> tuple[str, Path]:
    """``("mongod" | "secantus", path)`` of the server program to start."""
    found = shutil.which("mongod")
    if found:
        return "mongod", Path(found)
    here = Path(sys.executable).parent / "secantusd-py"
    found = str(here) if here.exists() else shutil.which("secantusd-py")
    if found:
        return "secantus", Path(found)
    raise MongoError(_HINT)


def mongodb_skip_reason() -> str | None:
    """Why MongoDB tests cannot run here, or None when they can."""
    if os.environ.get(ENV_URL):
        return None
    try:
        find_server()
    except MongoError as e:
        return str(e)
    return None


@contextlib.contextmanager
def mongodb_url_for_tests() -> Iterator[str]:
    """Yield a server URL: :data:`ENV_URL` if set, else a throwaway server's."""
    with url_from_env_or(ENV_URL, TemporaryMongo) as url:
        yield url


class TemporaryMongo(ThrowawayServer):
    """A MongoDB server in a temporary folder, for one ``with`` block.

    Should this process die without stopping the server (even by SIGKILL), the
    :class:`~pymodels.testing._servers.Watchdog` stops it and removes the folder.
    """

    error = MongoError
    dir_prefix = "pymodels-mongo-"

    def __init__(
        self, *, start_timeout: float = 60.0, stop_timeout: float = 10.0, standalone: bool = False
    ) -> None:
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)
        #: A server that advertises no replica set (so no transactions): a
        #: ``mongod`` without ``--replSet``, SecantusDB with ``--standalone``.
        self.standalone = standalone
        self.kind, self.program = find_server()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def _dir(self) -> Path | None:
        # The base class's directory, by the name this class's helpers use.
        return self._base_dir

    @property
    def running(self) -> bool:
        """Whether the server was started and not stopped."""
        return self._proc is not None

    @property
    def url(self) -> str:
        """The server's URL (a direct connection to the one member)."""
        if self._proc is None:
            raise MongoError("the server is not running")
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    @property
    def replica_set_url(self) -> str:
        """The URL naming the replica set, as applications of a replica set write it."""
        if self.standalone:
            raise MongoError("a standalone server has no replica set")
        name = "secantus" if self.kind == "secantus" else "pymodels"
        return f"mongodb://{self.host}:{self.port}/?replicaSet={name}"

    def _server_pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> Self:
        """Start the server and wait until it answers; on failure stop everything."""
        if self._dir is not None:
            raise MongoError("this TemporaryMongo was already started")
        self._create_base_dir()
        try:
            for attempt in range(5):
                self._port = free_port(self.host)
                self._spawn()
                if self._wait_ready():
                    break
                self._kill()
                if attempt == 4:
                    raise MongoError(f"{self.program} did not start:\n{self._log()}")
            if self.kind == "mongod" and not self.standalone:
                self._initiate()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server by its pid and remove the folder (idempotent).

        Only the process that started the server does so: in a forked child it does
        nothing, and the parent's server and folder stay.
        """
        self.close()

    def _stop_server(self) -> None:
        self._kill()

    # ------------------------------------------------------------------ helpers

    def _spawn(self) -> None:
        assert self._dir is not None
        data = self._dir / f"data-{self.port}"
        data.mkdir()
        log = open(self._dir / "server.log", "ab")  # noqa: SIM115 - owned by the child
        if self.kind == "secantus":
            config = self._dir / "empty.toml"
            config.write_text("")  # read no ./secantusd.toml nor the home folder's
            argv = [
                str(self.program),
                *("--config", str(config), "--host", self.host, "--port", str(self.port)),
                *("--storage-path", str(data), "--log-level", "WARNING", "--cache-size", "256M"),
                *(["--standalone"] if self.standalone else []),
            ]
        else:
            argv = [
                str(self.program),
                *("--bind_ip", self.host, "--port", str(self.port), "--dbpath", str(data)),
                *(() if self.standalone else ("--replSet", "pymodels")),
                *("--quiet", "--nounixsocket"),
            ]
        with log:
            self._proc = subprocess.Popen(
                argv, cwd=self._dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            if _answers_ping(self.host, self.port):
                return True
            time.sleep(0.05)
        return False

    def _initiate(self) -> None:
        import pymongo  # only a mongod needs it: a replica set must be initiated

        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            self.host, self.port, directConnection=True, serverSelectionTimeoutMS=10_000
        )
        try:
            client.admin.command(
                "replSetInitiate",
                {"_id": "pymodels", "members": [{"_id": 0, "host": f"{self.host}:{self.port}"}]},
            )
            deadline = time.monotonic() + self.start_timeout
            while not client.admin.command("hello").get("isWritablePrimary"):
                if time.monotonic() > deadline:
                    raise MongoError("mongod did not become primary")
                time.sleep(0.1)
        finally:
            client.close()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
                return
        raise MongoError(f"server {proc.pid} survived SIGKILL")

    def _log(self) -> str:
        if self._dir is None:
            return ""
        try:
            return (self._dir / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


# OP_MSG {ping: 1, $db: "admin"}: readiness without a driver.
def _answers_ping(host: str, port: int) -> bool:
    body = b"\x10ping\x00\x01\x00\x00\x00\x02$db\x00\x06\x00\x00\x00admin\x00\x00"
    doc = (len(body) + 4).to_bytes(4, "little") + body
    msg = b"\x00\x00\x00\x00" + b"\x00" + doc  # flagBits, section kind 0, document
    header = (16 + len(msg)).to_bytes(4, "little") + (1).to_bytes(4, "little")
    header += b"\x00\x00\x00\x00" + (2013).to_bytes(4, "little")
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(header + msg)
            reply = sock.recv(4096)
    except OSError:
        return False
    return len(reply) > 21 and b"ok" in reply


# Servers started and not yet stopped, which an atexit hook stops as a last resort.
_LIVE = TemporaryMongo._live


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command with :data:`ENV_URL` set to a throwaway server; return its exit code."""
    return run_command(
        argv,
        lambda: TemporaryMongo().start(),
        MongoError,
        lambda server: server.stop(),
        lambda server: {ENV_URL: server.url},
    )


if __name__ == "__main__":
    raise SystemExit(main())

"""Throwaway Tokyo Tyrant servers for tests and benchmarks.

:class:`TemporaryTyrant` serves a table database (``storage.tct`` in a fresh temporary
directory, or a file you name) on ``127.0.0.1`` and a free port, and on exit stops that
one server by its own process id (SIGTERM: a clean shutdown that closes the file) and
deletes the directory::

    with TemporaryTyrant() as tt:
        storage = pymodels.get_storage(tt.url)        # tokyo-tyrant://127.0.0.1:PORT

Which server runs:

* a real ``ttserver`` when the environment variable ``PYMODELS_TEST_TTSERVER`` names one,
  or when one is on ``PATH``;
* otherwise the project's own protocol server (:mod:`pymodels.testing._tyrant_server`),
  which serves a real ``.tct`` through Tokyo Cabinet's own C library, so the file,
  its indexes and every query are Tokyo's.

:attr:`TemporaryTyrant.real` says which. Running ``python -m pymodels.testing.tyrant --
CMD ARGS...`` runs one command with ``PYMODELS_TEST_TYRANT_URL`` (and
``PYMODELS_TYRANT_HOST`` / ``PYMODELS_TYRANT_PORT``, which ``examples/seed/settings.py``
reads) pointing at a throwaway server, and stops the server afterwards.

The module uses only the standard library (and, for the project's own server, the
Tokyo Cabinet C library).
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
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from pymodels.testing._servers import ThrowawayServer, free_port, run_command

__all__ = [
    "ENV_TTSERVER",
    "ENV_URL",
    "TemporaryTyrant",
    "TyrantError",
    "find_ttserver",
]

#: Environment variable naming a real ``ttserver`` binary to use.
ENV_TTSERVER = "PYMODELS_TEST_TTSERVER"
#: Set for the command run by ``python -m pymodels.testing.tyrant -- CMD``.
ENV_URL = "PYMODELS_TEST_TYRANT_URL"


class TyrantError(RuntimeError):
    """The server did not start or stop; the message carries its log."""


def find_ttserver() -> str | None:
    """The real ``ttserver`` to use: :data:`ENV_TTSERVER`, else one on ``PATH``, else None.

    Raises:
        TyrantError: :data:`ENV_TTSERVER` names something that is not an executable.
    """
    named = os.environ.get(ENV_TTSERVER)
    if named:
        if not os.access(named, os.X_OK):
            raise TyrantError(f"{ENV_TTSERVER}={named!r} is not an executable ttserver")
        return named
    return shutil.which("ttserver")


class TemporaryTyrant(ThrowawayServer):
    """A Tokyo Tyrant server for one ``with`` block.

    Args:
        path: the database file to serve (its directory must exist); default:
            ``storage.tct`` in the temporary directory. Options such as
            ``#idx=name:lex`` may follow, as ``ttserver`` takes them.
        ttserver: a ``ttserver`` binary; default: :func:`find_ttserver`. ``False`` forces
            the project's own server.
        port: TCP port; default: a free one (retried if another process takes it first).
        start_timeout, stop_timeout: seconds to wait for the server to accept
            connections, and to exit after SIGTERM (then SIGKILL).

    :meth:`start` and :meth:`stop` may be called again (a restart on the same port and
    file), which fault tests use; :meth:`kill` stops the server with SIGKILL. Should this
    process die without closing (even by SIGKILL), the
    :class:`~pymodels.testing._servers.Watchdog` stops the server and removes the directory.
    """

    error = TyrantError
    dir_prefix = "pymodels-tt-"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        ttserver: str | bool | None = None,
        port: int | None = None,
        start_timeout: float = 20.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)
        self._path_arg = None if path is None else os.fspath(path)
        if ttserver is False:
            self.ttserver: str | None = None
        elif isinstance(ttserver, str):
            self.ttserver = ttserver
        else:
            self.ttserver = find_ttserver()
        self._fixed_port = port
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ properties

    @property
    def real(self) -> bool:
        """Whether this is a real ``ttserver`` (False: the project's own server)."""
        return self.ttserver is not None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self) -> str:
        """``tokyo-tyrant://127.0.0.1:PORT``."""
        return f"tokyo-tyrant://{self.host}:{self.port}"

    @property
    def settings(self) -> dict[str, object]:
        """Settings for :func:`pymodels.get_storage`."""
        return {"backend": "tokyo_tyrant", "host": self.host, "port": self.port}

    @property
    def dbname(self) -> str:
        """What the server was told to serve (file name plus options)."""
        return self._path_arg or str(self.base_dir / "storage.tct")

    @property
    def path(self) -> str:
        """The database file (without ``#`` options)."""
        return self.dbname.split("#", 1)[0]

    @property
    def log_path(self) -> Path:
        return self.base_dir / "tt.log"

    @property
    def pid_path(self) -> Path:
        return self.base_dir / "tt.pid"

    def __repr__(self) -> str:
        kind = "ttserver" if self.real else "test server"
        state = (
            f"pid={self._proc.pid} port={self._port}" if self.running and self._proc else "stopped"
        )
        return f"<TemporaryTyrant {kind} {state}>"

    # ------------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Start the server (again) and wait until it accepts connections."""
        with self._lock:
            if self.running:
                raise TyrantError("the server is already running")
            if self._base_dir is None:
                self._create_base_dir()
            for attempt in range(5):
                port = self._port or self._fixed_port or free_port(self.host)
                if self._try_start(port):
                    self._port = port
                    return self
                if self._fixed_port or self._port or attempt == 4:
                    break
            raise TyrantError(f"the server did not start on port {port}:\n{self._read_log()}")

    def _command(self, port: int) -> list[str]:
        args = ["-host", self.host, "-port", str(port), "-pid", str(self.pid_path)]
        if self.ttserver:
            return [self.ttserver, *args, "-log", str(self.log_path), "-thnum", "4", self.dbname]
        return [sys.executable, "-m", "pymodels.testing._tyrant_server", *args, self.dbname]

    def _try_start(self, port: int) -> bool:
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                self._command(port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if self.pid_path.exists():
                try:
                    with socket.create_connection((self.host, port), timeout=1):
                        return True
                except OSError:
                    pass
            time.sleep(0.01)
        self._terminate(signal.SIGKILL)
        raise TyrantError(f"the server did not accept connections within {self.start_timeout} s")

    def stop(self) -> None:
        """Stop the server with SIGTERM (a clean close of the file); keep the directory."""
        with self._lock:
            self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """Stop the server with SIGKILL (a crash); keep the directory."""
        with self._lock:
            self._terminate(signal.SIGKILL)

    def _terminate(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)  # our own child, by its pid
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise TyrantError(f"the server ignored {sig.name}:\n{self._read_log()}") from None

    def _server_pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _stop_server(self) -> None:
        self._terminate(signal.SIGTERM)

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")[-4000:]
        except OSError:
            return "(no log)"


# Servers started and not yet closed, which an atexit hook stops as a last resort.
_LIVE = TemporaryTyrant._live


# ------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command with :data:`ENV_URL` set to a throwaway server; return its exit code.

    Usage: ``python -m pymodels.testing.tyrant [--] CMD [ARGS...]``. Without a command,
    print the URL and wait for Ctrl-C.
    """
    return run_command(
        argv,
        lambda: TemporaryTyrant().start(),
        TyrantError,
        lambda tt: tt.close(),
        lambda tt: {
            ENV_URL: tt.url,
            "PYMODELS_TYRANT_HOST": tt.host,
            "PYMODELS_TYRANT_PORT": str(tt.port),
        },
    )


if __name__ == "__main__":
    raise SystemExit(main())

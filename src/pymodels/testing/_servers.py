"""What the throwaway-server helpers (:mod:`.postgresql`, :mod:`.tyrant`, :mod:`.mongodb`) share.

:class:`ThrowawayServer`, the lifecycle all three have (a temporary directory owned by
the process that started the server, ``with`` blocks, the last-resort stop at
interpreter exit, a watchdog), a free port on a host, the "environment variable first,
else a throwaway server" rule, and the ``python -m pymodels.testing.X -- CMD ARGS...``
runner. Each helper keeps its own server-specific start and stop. Standard library only.

Why a watchdog process and not ``prctl(PR_SET_PDEATHSIG)``: a server must die with the
process that started it even when that process is killed with SIGKILL, which runs no
``finally`` and no ``atexit``. PDEATHSIG fires when the *thread* that created the child
exits (a fixture started from a worker thread would lose its server early), it reaches
only a direct child (pg_ctl daemonises the postmaster, runuser sits in between when we
are root), and it cannot remove the directory. So each server directory gets a
:class:`Watchdog`: a small child process in its own session that blocks reading a pipe
whose write end only the owning process holds. When the owner stops the server it
disarms the watchdog; when the owner dies the kernel closes the pipe, and the watchdog
stops every process whose command line names the directory (the server, and a
``pg_ctl``/``initdb`` still running), then removes the directory. Because processes are
found by the directory and not by a recorded pid, a server started a moment before its
owner died, whose pid was never recorded, is found too.

This file runs as that watchdog (``python -I _servers.py --watchdog DIR SIGNAL GRACE``),
so it must import nothing outside the standard library.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, TypeVar

T = TypeVar("T")


class _HasUrl(Protocol):
    @property
    def url(self) -> str: ...


S = TypeVar("S", bound=_HasUrl)


def free_port(host: str) -> int:
    """A TCP port on *host* that was free a moment ago (the caller retries on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def url_from_env_or(
    env_var: str, throwaway: Callable[[], AbstractContextManager[S]]
) -> Iterator[str]:
    """Yield the URL in *env_var* if set, else the URL of a throwaway server for the block."""
    url = os.environ.get(env_var)
    if url:
        yield url
        return
    with throwaway() as server:
        yield server.url


def stop_at_exit(
    live: set[T], owner_pid: Callable[[T], int | None], stop: Callable[[T], None]
) -> None:
    """At interpreter exit, stop every server still in *live* that this process started.

    The last resort for a caller that never reached its finally/__exit__ (e.g. sys.exit
    in a fixture); a forked child never stops its parent's servers.
    """

    def _stop_all() -> None:
        for server in list(live):
            if owner_pid(server) == os.getpid():
                with contextlib.suppress(Exception):
                    stop(server)

    atexit.register(_stop_all)


def run_command(
    argv: Sequence[str] | None,
    start: Callable[[], S],
    start_error: type[Exception],
    stop: Callable[[S], None],
    env: Callable[[S], Mapping[str, str]],
) -> int:
    """The ``python -m pymodels.testing.X [--] CMD [ARGS...]`` runner; return CMD's exit code.

    Starts a server with *start* (a *start_error* becomes ``error: ...`` and exit code 2),
    runs CMD with *env* added to the environment, and stops the server with *stop*
    whatever CMD does. Without a command, print the URL and wait for Ctrl-C.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    try:
        server = start()
    except start_error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if not args:
            print(server.url, flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
            return 0
        child_env = {**os.environ, **env(server)}
        # SIGTERM (e.g. from a CI timeout) should still run the finally below.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return subprocess.call(args, env=child_env)
    finally:
        stop(server)


# ------------------------------------------------------------------------ watchdog

# Write ends of armed watchdogs' pipes in this process. A forked child closes its
# copies at once: the watchdog must fire when the *owner* dies, not wait for every
# child that happened to inherit the pipe (see :func:`_close_in_child`).
_ARMED_FDS: set[int] = set()


def _close_in_child() -> None:
    for fd in list(_ARMED_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _ARMED_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)

# Disarmed watchdogs, exiting on their own: reaped later (_reap), so that a close does
# not wait for a Python start-up.
_EXITING: list[subprocess.Popen[bytes]] = []


def _reap() -> None:
    _EXITING[:] = [proc for proc in _EXITING if proc.poll() is None]


@atexit.register
def _wait_for_exiting() -> None:
    # A disarmed watchdog exits within a Python start-up: waiting for it at exit spares
    # its Popen object the "subprocess is still running" ResourceWarning.
    for proc in _EXITING:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)


class Watchdog:
    """Stops the processes using *directory* and removes it if this process dies first.

    Armed on creation; :meth:`disarm` after a clean stop, :meth:`release` to let it
    sweep now (a stop that may have left something behind). Only the process that
    armed it can disarm or release it.
    """

    def __init__(self, directory: Path, first_signal: int, grace: float) -> None:
        _reap()
        read_end, write_end = os.pipe()  # both non-inheritable: servers never hold them
        _ARMED_FDS.add(write_end)  # before anything, so that a fork from now on closes it
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    # -I: no PYTHONPATH, user site or script folder, so nothing can
                    # shadow the standard library the watchdog imports.
                    *("-I", __file__, "--watchdog", str(directory)),
                    *(str(int(first_signal)), str(grace)),
                ],
                stdin=read_end,
                # Holding no pipe of ours: a caller reading our output to EOF must
                # not wait for the watchdog.
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                # Out of our process group: a signal to the whole group (Ctrl-C, a CI
                # timeout killing the group) must leave the watchdog to do its job.
                start_new_session=True,
            )
        except BaseException:
            _ARMED_FDS.discard(write_end)
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._fd: int | None = write_end
        self._owner = os.getpid()

    @property
    def pid(self) -> int:
        """The watchdog process's id."""
        return self._proc.pid

    def disarm(self) -> None:
        """The owner cleaned up: the watchdog exits without touching anything."""
        if self._close(b"disarm\n"):
            _EXITING.append(self._proc)
            _reap()

    def release(self) -> None:
        """Let the watchdog sweep the directory now, as if this process had died.

        Waits for the sweep (a few seconds at most).
        """
        if self._close(b""):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(60.0)

    def _close(self, message: bytes) -> bool:
        fd, self._fd = self._fd, None
        if fd is None or os.getpid() != self._owner:
            return False
        _ARMED_FDS.discard(fd)
        try:
            if message:
                with contextlib.suppress(OSError):
                    os.write(fd, message)
        finally:
            os.close(fd)
        return True


def _pids_naming(directory: str) -> list[int]:
    """Processes (other than this one) with a command-line argument naming *directory*.

    The directory is a fresh ``mkdtemp`` name, so an argument that contains it (``-D
    DIR/pg/data``, ``--storage-path DIR/data-1``, pg_ctl's ``sh -c 'exec postgres -D
    "DIR/..."'``) belongs to a process started for this server.
    """
    pattern = re.compile(re.escape(directory.encode()) + rb"(?![^/\"' ])")
    found: list[int] = []
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return found  # no /proc (not Linux): only the directory is removed
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
        except OSError:
            continue
        if any(pattern.search(arg) for arg in args):
            found.append(int(entry.name))
    return found


def process_gone(pid: int) -> bool:
    """True when *pid* no longer runs; a zombie waiting for its reaper counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return True
    # The state follows the parenthesised command name, which may hold spaces.
    return stat.rpartition(b")")[2].split()[:1] == [b"Z"]


def _sweep(directory: str, first_signal: int, grace: float) -> None:
    """Stop every process naming *directory* (*first_signal*, then SIGKILL), remove it."""
    # Several rounds: a pg_ctl stopped in one round may have just started a postmaster.
    for _ in range(10):
        pids = _pids_naming(directory)
        if not pids:
            break
        for sig, wait in ((first_signal, grace), (int(signal.SIGKILL), 5.0)):
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                time.sleep(0.05)
                pids = [pid for pid in pids if not process_gone(pid)]
            if not pids:
                break
    shutil.rmtree(directory, ignore_errors=True)


def _watchdog_main(directory: str, first_signal: int, grace: float) -> int:
    # The terminal's signals are not for us: only the owner's death or word counts.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    received = b""
    while chunk := os.read(0, 4096):
        received += chunk
    if received.endswith(b"disarm\n"):
        return 0
    _sweep(directory, first_signal, grace)
    return 0


# ------------------------------------------------------------------- base class


class ThrowawayServer(abc.ABC):
    """The lifecycle every throwaway server shares.

    A subclass sets :attr:`error`, :attr:`dir_prefix` and :attr:`watchdog_signal`,
    implements :attr:`url`, :attr:`running`, :meth:`start`, :meth:`_server_pid` and
    :meth:`_stop_server`, and calls :meth:`_create_base_dir` when it starts. The
    temporary directory, the server in it and the :class:`Watchdog` belong to the
    process that created the directory: a forked child never stops its parent's server
    nor removes its directory.
    """

    host: ClassVar[str] = "127.0.0.1"
    #: The subclass's error type, raised e.g. for the pid of a server not running.
    error: ClassVar[type[Exception]] = RuntimeError
    #: Prefix of the temporary directory's name.
    dir_prefix: ClassVar[str] = "pymodels-server-"
    #: What the watchdog sends first when the owner died (SIGKILL follows).
    watchdog_signal: ClassVar[signal.Signals] = signal.SIGTERM
    #: Servers of this kind started and not yet cleaned up (one set per direct subclass,
    #: shared with its own subclasses).
    _live: ClassVar[set[ThrowawayServer]] = set()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if ThrowawayServer not in cls.__bases__:
            return
        cls._live = set()
        stop_at_exit(cls._live, lambda server: server._owner_pid, lambda server: server._cleanup())

    def __init__(self, *, start_timeout: float, stop_timeout: float) -> None:
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._base_dir: Path | None = None
        self._port: int | None = None
        # The process that created the directory; a forked child must not clean up.
        self._owner_pid: int | None = None
        self._watchdog: Watchdog | None = None
        # Reentrant: a failed start() cleans up from inside its own lock.
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ properties

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The server's URL."""

    @property
    @abc.abstractmethod
    def running(self) -> bool:
        """Whether the server process runs."""

    @property
    def pid(self) -> int:
        """The server's process id."""
        pid = self._server_pid()
        if pid is None:
            raise self.error("the server is not running")
        return pid

    @property
    def port(self) -> int:
        """The TCP port the server listens on, on :attr:`host`."""
        if self._port is None:
            raise self.error("the server has not been started")
        return self._port

    @property
    def base_dir(self) -> Path:
        """The temporary directory that holds everything (removed on close)."""
        if self._base_dir is None:
            raise self.error("the server has not been started")
        return self._base_dir

    # ------------------------------------------------------------- context manager

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        pid = self._server_pid()
        state = f"pid={pid} port={self._port}" if self.running and pid else "stopped"
        return f"<{type(self).__name__} {state}>"

    # ------------------------------------------------------------------- lifecycle

    @abc.abstractmethod
    def start(self) -> Self:
        """Start the server and wait until it answers."""

    def close(self) -> None:
        """Stop the server and remove the temporary directory. Idempotent."""
        with self._lock:
            self._cleanup()

    @abc.abstractmethod
    def _server_pid(self) -> int | None:
        """The server's process id, or None when it is not running."""

    @abc.abstractmethod
    def _stop_server(self) -> None:
        """Stop the server process (if any) by its pid; raise if it survives."""

    def _create_base_dir(self, parent_dir: Path | None = None) -> Path:
        """Create the temporary directory, owned by this process and watched."""
        self._owner_pid = os.getpid()
        self._base_dir = Path(tempfile.mkdtemp(prefix=self.dir_prefix, dir=parent_dir))
        # Registered before anything runs, so even an interpreter exit in the middle
        # of start() stops whatever was started.
        self._live.add(self)
        try:
            grace = max(self.stop_timeout, 1.0)
            self._watchdog = Watchdog(self._base_dir, self.watchdog_signal, grace)
        except BaseException:
            self._cleanup()
            raise
        return self._base_dir

    def _cleanup(self) -> None:
        """Stop the server, remove the directory, disarm the watchdog (owner only)."""
        if self._owner_pid is not None and self._owner_pid != os.getpid():
            return  # a forked child: the server and the directory are the parent's
        watchdog, self._watchdog = self._watchdog, None
        clean = False
        try:
            self._stop_server()
            clean = True
        finally:
            if self._base_dir is not None:
                shutil.rmtree(self._base_dir, ignore_errors=True)
                self._base_dir = None
            self._live.discard(self)
            if watchdog is not None:
                # A stop that failed may have left a process behind: let the watchdog
                # look for it now rather than never.
                watchdog.disarm() if clean else watchdog.release()


if __name__ == "__main__" and sys.argv[1:2] == ["--watchdog"]:
    raise SystemExit(_watchdog_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))

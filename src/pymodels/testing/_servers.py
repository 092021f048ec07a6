"""What the throwaway-server helpers (:mod:`.postgresql`, :mod:`.tyrant`, :mod:`.mongodb`) share.

A free port on a host, the "environment variable first, else a throwaway server" rule,
the last-resort stop at interpreter exit, and the ``python -m pymodels.testing.X --
CMD ARGS...`` runner. Each helper keeps its own server-specific start and stop; only
what is the same in all of them lives here. Standard library only.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol, TypeVar

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

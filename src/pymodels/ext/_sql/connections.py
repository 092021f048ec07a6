"""Per-thread connections, safe across fork(), and a cheap error-translating guard.

Both SQL backends give each thread its own connection: a transaction or an
open cursor of one thread never mixes with another thread's statements, and
neither sqlite3 nor psycopg connections need locking. A forked child never
touches the parent's connections (SQLite forbids carrying one across fork;
closing a libpq one would end the parent's session): they are only kept
referenced (so that garbage collection does not close them either) and the
child opens its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

__all__ = ["Guard", "ThreadConnections"]

C = TypeVar("C")

# Bumped in every forked child: connections made under an older generation
# belong to the parent.
_generation = 0
_INHERITED: list[Any] = []


def _after_fork() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_after_fork)


class ThreadConnections(Generic[C]):
    """One connection per thread, opened on first use by ``connect``: a pool keyed by thread.

    A thread keeps its connection for its whole life, so its transactions and
    cursors never meet another thread's. When a thread has finished, its
    connection goes back to the pool if ``reusable`` says it is clean (open, no
    transaction in progress), and the next thread that needs one takes it
    instead of connecting: a server that spawns a thread per request pays for
    a connection once, not per request. At most ``max_idle`` wait there; the
    rest, and every connection ``reusable`` refuses, are closed.
    """

    def __init__(
        self,
        connect: Callable[[], C],
        close: Callable[[C], None],
        reusable: Callable[[C], bool] | None = None,
        max_idle: int = 4,
    ) -> None:
        self._connect = connect
        self._close = close
        self._reusable = reusable
        self._max_idle = max_idle
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[tuple[threading.Thread, C]] = []
        self._idle: list[C] = []
        self._generation = _generation

    def get(self) -> C:
        """This thread's connection."""
        local = self._local
        conn: C | None = getattr(local, "conn", None)
        if conn is not None and local.generation == _generation:
            return conn
        return self._new()

    def _new(self) -> C:
        if self._generation != _generation:
            # A forked child: the parent's connections are not ours to use or close.
            _INHERITED.extend(conn for _, conn in self._open)
            _INHERITED.extend(self._idle)
            self._open, self._idle = [], []
            self._lock = threading.Lock()
            self._generation = _generation
        with self._lock:
            finished = [c for t, c in self._open if not t.is_alive()]
            self._open = [(t, c) for t, c in self._open if t.is_alive()]
        # Outside the lock: asking a connection about itself may take a moment.
        clean: list[C] = []
        to_close: list[C] = []
        for old in finished:
            (clean if self._reusable is not None and self._reusable(old) else to_close).append(old)
        with self._lock:
            self._idle += clean
            to_close += self._idle[self._max_idle :]
            del self._idle[self._max_idle :]
            conn = self._idle.pop() if self._idle else None
        for old in to_close:
            self._close(old)
        if conn is None:
            conn = self._connect()
        self._local.conn = conn
        self._local.generation = _generation
        with self._lock:
            self._open.append((threading.current_thread(), conn))
        return conn

    def discard(self) -> None:
        """Forget (and close) this thread's connection, e.g. after the server dropped it."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is None:
            return
        with self._lock:
            self._open = [(t, c) for t, c in self._open if c is not conn]
        self._close(conn)

    def current(self) -> C | None:
        """This thread's connection if it has one (never opens one)."""
        conn: C | None = getattr(self._local, "conn", None)
        return conn if conn is not None and self._local.generation == _generation else None

    def close_all(self) -> None:
        """Close every connection this process opened (those of a parent stay untouched)."""
        with self._lock:
            mine = self._generation == _generation
            conns = [c for _, c in self._open] + self._idle if mine else []
            self._open, self._idle = [], []
        self._local = threading.local()
        for conn in conns:
            self._close(conn)


class Guard(Generic[C]):
    """``with guard as conn:`` hands out a connection and translates driver errors.

    A class rather than a generator context manager: it runs on every
    statement, and this costs a fraction of ``contextlib.contextmanager``.
    ``translate`` returns the library's exception for a driver error (raised
    from it) or None to let the error through unchanged.
    """

    __slots__ = ("_conn", "_lock", "_translate")

    def __init__(
        self,
        conn: C,
        translate: Callable[[BaseException], BaseException | None],
        lock: Any = None,
    ) -> None:
        self._conn = conn
        self._translate = translate
        self._lock = lock

    def __enter__(self) -> C:
        if self._lock is not None:
            self._lock.acquire()
        return self._conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._lock is not None:
            self._lock.release()
        if exc is not None:
            translated = self._translate(exc)
            if translated is not None:
                raise translated from exc

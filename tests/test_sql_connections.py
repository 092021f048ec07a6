"""Per-thread connections: each thread its own, finished threads' clean ones reused."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from pymodels.ext._sql.connections import ThreadConnections


@dataclass
class Conn:
    number: int
    dirty: bool = False
    closed: bool = False
    users: set[int] = field(default_factory=set)


class Pool:
    def __init__(self, *, reuse: bool, max_idle: int = 4) -> None:
        self.numbers = itertools.count()
        self.made: list[Conn] = []
        self.conns = ThreadConnections(
            self.connect, self.close, (lambda c: not c.dirty) if reuse else None, max_idle
        )

    def connect(self) -> Conn:
        conn = Conn(next(self.numbers))
        self.made.append(conn)
        return conn

    def close(self, conn: Conn) -> None:
        assert not conn.closed, "closed twice"
        conn.closed = True

    def use(self, dirty: bool = False) -> Conn:
        conn = self.conns.get()
        assert conn is self.conns.get()  # one connection for the thread's whole life
        conn.users.add(threading.get_ident())
        conn.dirty = dirty
        return conn

    def in_thread(self, dirty: bool = False) -> Conn:
        got: list[Conn] = []
        t = threading.Thread(target=lambda: got.append(self.use(dirty)))
        t.start()
        t.join()
        return got[0]


def test_threads_one_after_another_share_one_connection() -> None:
    pool = Pool(reuse=True)
    conns = [pool.in_thread() for _ in range(20)]
    pool.use()  # this thread takes the last one back too
    assert len(pool.made) == 1 and all(c is conns[0] for c in conns)
    assert not conns[0].closed


@contextlib.contextmanager
def threads_holding(pool: Pool, count: int) -> Iterator[list[Conn]]:
    """``count`` live threads, each holding its connection, until the block ends."""
    ready, done = threading.Barrier(count + 1), threading.Event()
    got: list[Conn] = []

    def hold() -> None:
        got.append(pool.use())
        ready.wait()
        done.wait()

    threads = [threading.Thread(target=hold) for _ in range(count)]
    for t in threads:
        t.start()
    ready.wait()
    try:
        yield got
    finally:
        done.set()
        for t in threads:
            t.join()


def test_live_threads_never_share() -> None:
    pool = Pool(reuse=True)
    with threads_holding(pool, 4) as got:
        assert len({id(c) for c in got}) == 4 and len(pool.made) == 4


def test_a_dirty_connection_is_closed_not_reused() -> None:
    pool = Pool(reuse=True)
    first = pool.in_thread(dirty=True)
    second = pool.in_thread()
    assert first is not second and first.closed and not second.closed


def test_without_reuse_finished_threads_connections_are_closed() -> None:
    pool = Pool(reuse=False)
    first = pool.in_thread()
    second = pool.in_thread()
    assert first is not second and first.closed


def test_idle_connections_are_bounded_and_closed_with_the_pool() -> None:
    pool = Pool(reuse=True, max_idle=2)
    with threads_holding(pool, 5):
        pass
    pool.use()  # sweeps five finished threads: keeps two idle, takes one, closes three
    assert sum(c.closed for c in pool.made) == 3
    pool.conns.close_all()
    assert all(c.closed for c in pool.made)

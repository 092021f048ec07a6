"""Tests of the Tokyo Tyrant backend itself: the protocol client, connections and faults,
the switch between the Cabinet and Tyrant backends on one file, and concurrency.

The conformance suite runs in test_conformance_tokyo_tyrant.py. Servers come from
:mod:`pymodels.testing.tyrant`: a real ``ttserver`` when ``PYMODELS_TEST_TTSERVER`` names
one (or one is on PATH), else the project's test server over Tokyo Cabinet.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

import pymodels
from pymodels import Document, Q, spill
from pymodels.errors import (
    BackendUnavailable,
    ConfigurationError,
    ConflictError,
    ConnectionFailed,
    NotSupported,
)
from pymodels.ext._tokyo import _engine
from pymodels.ext.tokyo_tyrant import Storage, _protocol, features
from pymodels.ext.tokyo_tyrant._protocol import Client
from pymodels.testing import strategies as pst
from pymodels.testing.suite import check_query_case, run_in_threads

try:
    import pymodels.testing._tyrant_server  # the fallback server needs the Cabinet library
    from pymodels.testing.tyrant import ENV_TTSERVER, TemporaryTyrant, find_ttserver
except BackendUnavailable as e:  # pragma: no cover - the C library is missing here
    pytest.skip(f"no Tokyo Tyrant test server: {e}", allow_module_level=True)

TCTMGR = shutil.which("tctmgr")


class Person(Document):
    name: str
    age: int
    born: dt.date | None = None

    class Meta:
        indexes = ["name"]


@pytest.fixture
def tyrant(tmp_path: Path) -> Iterator[TemporaryTyrant]:
    with TemporaryTyrant(str(tmp_path / "storage.tct")) as tt:
        # With PYMODELS_TEST_TTSERVER set, the faults and load here run on that ttserver.
        assert tt.real or not os.environ.get(ENV_TTSERVER)
        yield tt


@pytest.fixture
def client(tyrant: TemporaryTyrant) -> Iterator[Client]:
    c = Client(tyrant.host, tyrant.port, timeout=10)
    yield c
    c.close()


# ------------------------------------------------------------------------- client


def test_misc_records_are_binary_safe(client: Client) -> None:
    value = b"a\x00b\xff\xfe\x00"
    assert client.table_put(b"k\x00\xff", [b"col", value, b"other", b"\x00"])
    assert client.table_get(b"k\x00\xff") == [b"col", value, b"other", b"\x00"]
    assert client.table_record(b"k\x00\xff") == {b"col": value, b"other": b"\x00"}
    assert client.table_records([b"k\x00\xff", b"missing", b"k\x00\xff"]) == [
        {b"col": value, b"other": b"\x00"},
        None,
        {b"col": value, b"other": b"\x00"},
    ]
    assert client.table_put(b"k\x00\xff", [b"col", b"x"], keep=True) is False
    assert client.table_out(b"k\x00\xff") is True
    assert client.table_out(b"k\x00\xff") is False
    assert client.table_get(b"k\x00\xff") is None
    assert client.table_record(b"k\x00\xff") is None


def test_search_commands(client: Client) -> None:
    for i in range(10):
        client.table_put(b"p%d" % i, [b"n", b"%d" % i, b"w", b"even" if i % 2 == 0 else b"odd"])
    assert client.setindex(b"n", b"decimal")
    conds = [b"addcond\x00n\x00NUMGE\x005"]
    assert client.search([*conds, b"setorder\x00n\x00NUMDESC", b"setlimit\x002\x001"]) == [
        b"p8",
        b"p7",
    ]
    assert client.search([*conds, b"count"]) == [b"5"]
    assert client.search([b"addcond\x00n\x00~NUMGE\x005", b"count"]) == [b"5"]
    odd = b"addcond\x00w\x00STREQ\x00odd"
    assert sorted(client.search([*conds, odd])) == [b"p5", b"p7", b"p9"]
    assert client.search([*conds, odd, b"get\x00w"]) == [b"w\x00odd"] * 3
    union = client.search([b"addcond\x00n\x00NUMEQ\x001", b"next", b"addcond\x00n\x00NUMEQ\x002"])
    assert sorted(union) == [b"p1", b"p2"]
    assert client.search([b"addcond\x00w\x00STREQ\x00odd", b"out", b"count"]) == [b"5"]
    assert client.rnum() == 5
    assert client.mget([b"p0", b"p1"]) == {b"p0": b"n\x000\x00w\x00even"}
    assert client.genuid() >= 1
    assert client.size() > 0
    assert client.sync()
    assert client.stat()["type"] == "table"
    assert client.vanish() and client.rnum() == 0


def test_replies_are_parsed_whatever_the_reads_bring() -> None:
    """The reader's own buffer: a reply trickling in byte by byte, then many in one read."""
    from pymodels.ext.tokyo_tyrant._protocol import _Connection, _read_misc, _read_record

    big = b"\x00\xff" * 40_000  # larger than one recv
    elements = [b"", b"a\x00b", big, b"z"]
    reply = b"\x00" + struct.pack(">I", len(elements))
    reply += b"".join(struct.pack(">I", len(e)) + e for e in elements)
    left, right = socket.socketpair()
    try:
        conn = _Connection(left, "test")

        def trickle() -> None:
            for i in range(0, 200):
                right.sendall(reply[i : i + 1])
            right.sendall(reply[200:] + reply * 3)

        thread = threading.Thread(target=trickle)
        thread.start()
        for _ in range(4):
            assert _read_misc(conn) == (True, elements)
        thread.join()
        assert not conn.stale()
        # A record's columns read as pairs, whatever the reads bring.
        record = b"\x00" + struct.pack(">I", 4)
        record += b"".join(struct.pack(">I", len(e)) + e for e in [b"a", big, b"\x00", b""])

        def trickle_record() -> None:
            for i in range(0, 30, 3):  # head, names and sizes cut anywhere
                right.sendall(record[i : i + 3])
            right.sendall(record[30:] + record)

        thread = threading.Thread(target=trickle_record)
        thread.start()
        for _ in range(2):
            assert _read_record(conn) == {b"a": big, b"\x00": b""}
        thread.join()
        right.sendall(b"\x01\x00\x00\x00\x00")
        assert _read_record(conn) is None
        assert not conn.stale()
        right.sendall(b"\x01")  # bytes nobody asked for: the connection is not reused
        time.sleep(0.05)
        assert conn.stale()
        right.close()
        assert conn.status() == 1
        with pytest.raises(EOFError):
            conn.status()
    finally:
        left.close()
        right.close()


def test_unreachable_server_names_host_and_port_within_the_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        start = time.monotonic()
        with pytest.raises(ConnectionFailed, match=f"127.0.0.1:{port}"):
            pymodels.get_storage(f"tokyo-tyrant://127.0.0.1:{port}?timeout=2")
        assert time.monotonic() - start < 2


class _SilentServer:
    """Accepts connections, reads requests and never answers (or closes at once)."""

    def __init__(self, close: bool) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.close = close
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            data = conn.recv(65536)
            self.requests.append(data)
            if self.close:
                conn.close()

    def stop(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_a_server_that_does_not_answer_fails_within_the_timeout() -> None:
    server = _SilentServer(close=False)
    try:
        client = Client("127.0.0.1", server.port, timeout=0.5)
        start = time.monotonic()
        with pytest.raises(ConnectionFailed, match=f"127.0.0.1:{server.port}"):
            client.rnum()
        assert time.monotonic() - start < 1.5
    finally:
        server.stop()


def test_a_write_whose_reply_is_lost_is_not_repeated() -> None:
    server = _SilentServer(close=True)
    try:
        client = Client("127.0.0.1", server.port, timeout=2)
        with pytest.raises(ConnectionFailed, match="outcome is unknown"):
            client.table_put(b"k", [b"c", b"v"])
        time.sleep(0.1)
        assert len(server.requests) == 1  # sent once, never again by itself
        # A read is sent once more on a fresh connection before giving up.
        with pytest.raises(ConnectionFailed):
            client.table_get(b"k")
        time.sleep(0.1)
        assert len(server.requests) == 3
    finally:
        server.stop()


def test_pooled_connections_survive_a_server_restart(tyrant: TemporaryTyrant) -> None:
    with pymodels.get_storage(tyrant.url, timeout=5) as storage:
        storage.save({"n": 1}, primary_key="a")
        tyrant.stop()
        with pytest.raises(ConnectionFailed, match=f"127.0.0.1:{tyrant.port}"):
            storage.save({"n": 2}, primary_key="b")
        tyrant.start()
        # The pooled socket died with the old server: it is replaced, nothing is lost.
        storage.save({"n": 3}, primary_key="c")
        assert sorted(storage) == ["a", "c"]


def test_reads_after_a_server_restart_succeed_on_a_pool_of_dead_sockets(
    tyrant: TemporaryTyrant,
) -> None:
    # A read takes a pooled socket without asking the kernel whether it still lives:
    # on a dead one it must go out again on a fresh connection, not on the next dead one.
    with pymodels.get_storage(tyrant.url, timeout=5) as storage:
        storage.save({"n": 1}, primary_key="a")
        client = _client(storage)
        held = [client._acquire() for _ in range(3)]
        for conn in held:
            client._release(conn)
        tyrant.stop()
        tyrant.start()
        assert storage.get(None, "a")["n"] == 1
        assert list(storage.query().where(n=1)) == [storage.get(None, "a")]
        storage.save({"n": 2}, primary_key="b")
        assert sorted(storage) == ["a", "b"]


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    # Steps wait on what happened, not on fixed sleeps: under load a thread may take
    # longer than any sleep to get going.
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_kill_the_server_mid_run_nothing_acknowledged_is_lost(
    tyrant: TemporaryTyrant, how: str
) -> None:
    """SIGTERM (a clean stop) or SIGKILL (a crash of the server, not of the machine:
    what the server wrote is in the operating system's cache) while a client writes.

    Against a real ``ttserver`` when ``PYMODELS_TEST_TTSERVER`` names one."""
    acknowledged: list[str] = []
    failures: list[float] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    storage = pymodels.get_storage(tyrant.url, timeout=2)

    def writer() -> None:
        i = 0
        try:
            while not stop.is_set():
                pk = f"r{i:06d}"
                start = time.monotonic()
                try:
                    storage.save({"i": i}, primary_key=pk)
                except ConnectionFailed:
                    failures.append(time.monotonic() - start)
                    time.sleep(0.01)
                else:
                    acknowledged.append(pk)
                i += 1
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        _wait_for(lambda: len(acknowledged) > 20, "the writer has written")
        tyrant.stop() if how == "stop" else tyrant.kill()  # while writes are in flight
        _wait_for(lambda: bool(failures), "the writer saw the server gone")
        tyrant.start()
        after = len(acknowledged)
        # The client recovers by itself: writes are acknowledged again.
        _wait_for(lambda: len(acknowledged) > after + 20, "the writer recovered")
    finally:
        stop.set()
        thread.join()
        storage.close()
    assert not errors
    assert max(failures) < 2.5  # each failure within the timeout
    with pymodels.get_storage(tyrant.url) as check:
        stored = set(check)
        assert set(acknowledged) <= stored
        assert acknowledged[-1] in stored


def test_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "tt.sock")
    # The real ttserver when one is given, else the project's server (same options).
    ttserver = find_ttserver()
    server = [ttserver] if ttserver else [sys.executable, "-m", "pymodels.testing._tyrant_server"]
    proc = subprocess.Popen(
        [
            *server,
            *("-host", path, "-port", "0", "-pid", str(tmp_path / "pid")),
            str(tmp_path / "s.tct"),
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while not _accepts(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        with pymodels.get_storage({"backend": "tokyo_tyrant", "socket": path}) as storage:
            storage.save({"a": 1}, primary_key="x")
            assert storage.get(None, "x")["a"] == 1
    finally:
        proc.terminate()
        proc.wait(10)


def _client(storage: object) -> Client:
    """The protocol client of a Tokyo Tyrant storage."""
    assert isinstance(storage, Storage)
    return storage.client


def _accepts(path: str) -> bool:
    """Whether a server listens on the unix socket ``path`` (the file exists from its
    ``bind``, a moment before its ``listen``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


# ------------------------------------------------------------------------ backend


def test_url_and_settings() -> None:
    assert Storage.settings_from_url("tokyo-tyrant://db.example:1999?timeout=3") == {
        "host": "db.example",
        "port": 1999,
        "timeout": "3",
    }
    with pytest.raises(ConfigurationError, match="port"):
        pymodels.get_storage({"backend": "tokyo_tyrant", "port": 70000})


def test_features_say_no_transactions(tyrant: TemporaryTyrant) -> None:
    assert features.transactions is False
    assert features.concurrent_processes is True
    with (
        pymodels.get_storage(tyrant.url) as storage,
        pytest.raises(NotSupported),
        storage.transaction(),
    ):
        pass


class Counter(Document):
    n: int = 0

    class Meta:
        version_field = "v"


def test_compare_and_swap_is_not_claimed_across_processes(tyrant: TemporaryTyrant) -> None:
    """ttserver has no conditional replace: the flag says so (the conformance suite then
    skips its cross-process test) and what holds is exact."""
    assert features.compare_and_swap_across_processes is False
    with (
        pymodels.get_storage(tyrant.url) as one,
        pymodels.get_storage(tyrant.url) as other,
    ):
        # Creating is atomic on the server (putkeep), even between two storages.
        assert one._compare_and_store("c", {"n": 0, "v": 1}, "v", None)
        assert not other._compare_and_store("c", {"n": 9, "v": 1}, "v", None)
        assert one.get(None, "c")["n"] == 0

        # Replacing is exact between the threads sharing one storage.
        def work(t: int) -> None:
            done = 0
            while done < 50:
                counter = Counter.object(one, "c")
                counter.n += 1
                try:
                    counter.save(one)
                except ConflictError:
                    continue
                done += 1

        run_in_threads(work, 4)
        assert one.get(None, "c")["n"] == 200
        # A stale version is refused.
        assert not other._compare_and_store("c", {"n": -1, "v": 1}, "v", 1)


def test_a_void_database_is_refused(tmp_path: Path) -> None:
    # ttserver on a name without a table suffix serves a "void" database and listens.
    with TemporaryTyrant(str(tmp_path / "storage")) as tt:
        assert Client(tt.host, tt.port).stat()["type"] == "void"
        with pytest.raises(ConfigurationError, match=r"not a table database.*\.tct"):
            pymodels.get_storage(tt.url)


def test_cabinet_then_tyrant_then_cabinet(tmp_path: Path) -> None:
    """The switching story: one file, written and read through both backends."""
    path = str(tmp_path / "storage.tct")
    people = [
        Person(name="ann", age=31, born=dt.date(1990, 1, 2)),
        Person(name="bob", age=17),
        Person(name="cid", age=45),
    ]
    with pymodels.get_storage({"backend": "tokyo_cabinet", "path": path}) as cabinet:
        pks = [p.save(cabinet) for p in people]
        cabinet.save({"price": Decimal("2.50"), "blob": b"\x00\xff", "tags": ["a b", 1]}, "odd")
        cabinet.create_index("age", kind="decimal")
        indexes = cabinet.index_kinds()  # type: ignore[attr-defined]
    assert indexes == {"name": "lexical", "age": "decimal"}

    with TemporaryTyrant(path) as tt, pymodels.get_storage(tt.url) as tyrant:
        assert tyrant.index_kinds() == indexes  # type: ignore[attr-defined]
        assert [p.name for p in Person.objects(tyrant).order_by("name")] == ["ann", "bob", "cid"]
        assert tyrant.get(Person, pks[0]).born == dt.date(1990, 1, 2)
        assert dict(tyrant.get(None, "odd")) == {
            "price": Decimal("2.50"),
            "blob": b"\x00\xff",
            "tags": ["a b", 1],
        }
        q = Person.objects(tyrant).where(name="bob")
        assert [p.pk for p in q] == [pks[1]]
        assert "using an index" in q.explain()
        assert Person.objects(tyrant).where(age__gte=30).count() == 2
        carl = Person(name="carl", age=60)
        carl.save(tyrant)
        tyrant.delete(pks[1])
        assert tt.running

    with pymodels.get_storage({"backend": "tokyo_cabinet", "path": path}) as cabinet:
        names = sorted(p.name for p in Person.objects(cabinet))
        assert names == ["ann", "carl", "cid"]
        assert carl.pk is not None
        assert cabinet.get(Person, carl.pk).age == 60
        assert Person.objects(cabinet).where(age__gt=50).count() == 1
        assert dict(cabinet.get(None, "odd"))["blob"] == b"\x00\xff"
    if TCTMGR:
        out = subprocess.run([TCTMGR, "list", "-pv", path], capture_output=True, check=True)
        assert b"carl" in out.stdout and b"bob" not in out.stdout


def test_threads_share_one_storage(tyrant: TemporaryTyrant) -> None:
    with pymodels.get_storage(tyrant.url) as storage:

        def work(t: int) -> None:
            for i in range(200):
                storage.save({"t": t, "i": i})
            assert storage.query().where(t=t).count() == 200

        run_in_threads(work, 4)
        assert len(storage) == 800


def test_a_query_iterated_while_another_client_writes_yields_each_record_once(
    tyrant: TemporaryTyrant,
) -> None:
    with pymodels.get_storage(tyrant.url) as reader, pymodels.get_storage(tyrant.url) as writer:
        reader.save_many({"n": i} for i in range(3000))
        stop = threading.Event()

        def write() -> None:
            i = 0
            while not stop.is_set():
                writer.save({"n": 10_000 + i})  # new records matching the query
                i += 1

        thread = threading.Thread(target=write)
        thread.start()
        try:
            seen = [doc.pk for doc in reader.query().where(n__gte=0)]
            ordered = [doc.pk for doc in reader.query().order_by("pk")]
        finally:
            stop.set()
            thread.join()
        assert len(seen) == len(set(seen)) >= 3000
        assert len(ordered) == len(set(ordered)) >= 3000


class _Requests:
    """The key-listing requests of a client (search, fwmkeys; streamed or not): how many
    were sent and the most elements one step of reading a reply parsed at once."""

    def __init__(self, client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[bytes] = []
        self.widest = 0
        elements = _protocol._Connection.elements

        def parsing(conn: Any, count: int) -> list[bytes]:
            self.widest = max(self.widest, count)
            return elements(conn, count)

        monkeypatch.setattr(_protocol._Connection, "elements", parsing)
        for name in ("search", "search_each", "fwmkeys_each"):
            original = getattr(client, name)
            monkeypatch.setattr(client, name, self._recording(name, original))

    def _recording(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.sent.append(name.encode())
            return original(*args, **kwargs)

        return call

    def clear(self) -> None:
        self.sent.clear()
        self.widest = 0


@pytest.fixture
def small_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # Replies parsed 3 keys at a time, sorted in runs of 7 spilled to disk: many runs
    # and steps, small data.
    monkeypatch.setattr(_protocol, "STREAM_BLOCK", 3)
    monkeypatch.setattr(spill, "RUN_SIZE", 7)
    monkeypatch.setattr(_engine, "_PAGE_MAX", 2)  # one-field lookups of 3 or more too


@pytest.mark.usefixtures("small_runs")
def test_a_long_stream_is_one_request_sorted_in_bounded_memory(
    tyrant: TemporaryTyrant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each stream lists its keys with one request (the server searches once), read off
    # the socket a step of 3 keys at a time into a sort that spills runs of 7: nothing
    # in the client holds the whole list, and every match comes once, in order.
    with pymodels.get_storage(tyrant.url) as storage:
        pks = [f"k {i:03}," for i in range(100)]  # spaces and commas: no token anywhere
        for i, pk in reversed(list(enumerate(pks))):  # stored out of pk order
            storage.save({"n": i, "odd": i % 2, "name": f"x{99 - i:02}"}, primary_key=pk)
        requests = _Requests(_client(storage), monkeypatch)
        spilled: list[int] = []
        write_run = spill._write_run

        def counting(directory: str, number: int, run: list[Any]) -> Any:
            spilled.append(len(run))
            return write_run(directory, number, run)

        monkeypatch.setattr(spill, "_write_run", counting)
        odd = sorted(pk for i, pk in enumerate(pks) if i % 2)
        one, every = [b"search_each"], [b"fwmkeys_each"]
        q = storage.query()
        cases: list[tuple[Callable[[], Iterable[Any]], list[str], list[bytes]]] = [
            (lambda: q.where(odd=1), odd, one),
            (lambda: q.where(odd=1).order_by("-pk"), odd[::-1], one),
            (lambda: q, sorted(pks), every),
            (lambda: q.order_by("-pk"), sorted(pks)[::-1], every),
            (lambda: q.where(odd=1)[3:], odd[3:], one),
            (lambda: sorted(storage), sorted(pks), every),
            # A range on n whose floats near 0 Tokyo cannot tell apart: the sure blocks'
            # metasearch and the checked block's search, merged.
            (lambda: q.where(odd=1, n__gte=0), odd, one * 2),
            # Ordered by a column Tokyo orders exactly (the condition makes it a str):
            # one search, spooled in the server's order.
            (lambda: q.where(name__startswith="x").order_by("name"), pks[::-1], one),
            (lambda: q.where(name__startswith="x").order_by("-name"), pks, one),
            # An order Tokyo cannot be trusted with: every key, then the sort keys of
            # the records, each through the bounded sort.
            (lambda: q.order_by("-n"), pks[::-1], every),
        ]
        for run, expected, sent in cases:
            requests.clear()
            spilled.clear()
            assert [getattr(d, "pk", d) for d in run()] == expected
            assert requests.sent == sent
            assert 0 < requests.widest <= 3
            assert len(spilled) >= len(expected) // 7 and max(spilled) == 7


def test_a_stream_whose_connection_breaks_mid_reply_starts_its_sort_over(
    tyrant: TemporaryTyrant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection drops after two steps of the reply, when a run of 4 keys is already
    # spilled: the search goes out again on a fresh connection and the sort starts over,
    # so no key of the broken attempt comes twice.
    monkeypatch.setattr(_protocol, "STREAM_BLOCK", 3)
    monkeypatch.setattr(spill, "RUN_SIZE", 4)
    with pymodels.get_storage(tyrant.url) as storage:
        pks = [f"k{i:02}" for i in range(30)]
        for pk in reversed(pks):
            storage.save({"n": 1}, primary_key=pk)
        steps: list[int] = []
        elements = _protocol._Connection.elements

        def breaking(conn: Any, count: int) -> list[bytes]:
            steps.append(count)
            if len(steps) == 3:
                raise EOFError("the server closed the connection")
            return elements(conn, count)

        monkeypatch.setattr(_protocol._Connection, "elements", breaking)
        assert [d.pk for d in storage.query().where(n=1)] == pks
        assert len(steps) == 3 + 30 // 3  # the first attempt's three steps, then all ten


@pytest.mark.usefixtures("small_runs")
def test_a_stream_under_other_writers_yields_each_key_once_in_order(
    tyrant: TemporaryTyrant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between the batches of records the stream loads, another client deletes records
    # just ahead of it and adds new ones: keys still come once each and in order, a
    # record deleted before the stream reached it does not come, and every record
    # present from start to end comes.
    monkeypatch.setattr(_engine, "BATCH_SIZE", 5)
    with pymodels.get_storage(tyrant.url) as reader, pymodels.get_storage(tyrant.url) as writer:
        pks = [f"p{i:04}" for i in range(0, 400, 2)]
        for pk in pks:
            reader.save({"n": 1}, primary_key=pk)
        deleted: set[str] = set()
        loaded: list[str] = []
        load_raw = reader._load_raw  # type: ignore[attr-defined]

        def load_between_writes(keys: list[bytes]) -> list[dict[bytes, bytes] | None]:
            if loaded:
                i = int(loaded[-1][1:])
                for pk in (f"p{i + 12:04}", f"p{i + 14:04}"):  # ahead of the stream
                    if pk in writer:
                        writer.delete(pk)
                        deleted.add(pk)
                writer.save({"n": 1}, primary_key=f"p{i - 1:04}")
                writer.save({"n": 1}, primary_key=f"p{i + 3:04}")
            loaded.extend(k.decode() for k in keys)
            result: list[dict[bytes, bytes] | None] = load_raw(keys)
            return result

        monkeypatch.setattr(reader, "_load_raw", load_between_writes)
        seen = [str(doc.pk) for doc in reader.query().where(n=1)]
        assert len(deleted) > 50  # the writes did happen between many batches
        assert seen == sorted(set(seen))
        assert set(pks) - deleted == set(seen)


@pytest.mark.usefixtures("small_runs")
def test_unions_and_checked_plans_stream_each_match_once_in_pk_order(
    tyrant: TemporaryTyrant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A union (one metasearch) and a range whose bound Tokyo's 16 digits cannot tell
    # apart from its neighbours (a block of records checked in Python, a search of its
    # own) come in pk order, each match once; counts of blocks that may overlap count
    # the keys of one metasearch as they are read, and no step parses more than 3.
    with pymodels.get_storage(tyrant.url) as storage:
        records: dict[str, dict[str, Any]] = {}
        for i in range(60):
            # 10 + 1e-15 is 10.000000000000002: 17 digits, equal to 10 for Tokyo.
            age = 10 if i % 5 == 0 else 10 + 1e-15 if i % 5 == 1 else i
            records[f"k {i:03},"] = {"n": i, "age": age, "odd": i % 2}
        for pk, record in records.items():
            storage.save(record, primary_key=pk)
        requests = _Requests(_client(storage), monkeypatch)
        # Requests a stream sends: one metasearch for the sure blocks, one search per
        # checked block (n__lt=10 checks the floats Tokyo cannot tell from 10).
        cases: list[tuple[Any, Callable[[dict[str, Any]], bool], int]] = [
            (Q(odd=1) | Q(n__lt=10), lambda r: r["odd"] == 1 or r["n"] < 10, 2),
            (Q(age__gt=10), lambda r: r["age"] > 10, 2),
            (Q(age__gt=10) | Q(n__lt=3), lambda r: r["age"] > 10 or r["n"] < 3, 3),
        ]
        for condition, test, searches in cases:
            expected = sorted(pk for pk, r in records.items() if test(r))
            assert len(expected) > 20
            q = storage.query().where(condition)
            assert "checked in Python" in q.explain() or "UNION" in q.explain()
            requests.clear()  # explain() asked for Tokyo's hint: a search of every key
            assert [d.pk for d in q] == expected, condition
            assert requests.sent == [b"search_each"] * searches, requests.sent
            assert 0 < requests.widest <= 3
            assert [d.pk for d in q.order_by("-pk")] == expected[::-1]
            assert [d.pk for d in q[5:]] == expected[5:]
            requests.clear()
            assert q.count() == len(expected)
            assert requests.widest <= 3, requests.widest


def test_ints_at_a_whole_bound_are_settled_by_tokyo_and_floats_checked(
    tyrant: TemporaryTyrant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tokyo reads small ints exactly, so the ints equal to a whole bound match or not as
    # a whole: only floats that Tokyo's 16 digits cannot tell from the bound are loaded
    # and checked in Python, for counts and queries alike.
    with pymodels.get_storage(tyrant.url) as storage:
        storage.create_index("age", kind="decimal")
        records: dict[str, dict[str, Any]] = {}
        for i in range(40):
            # 10 + 1e-15 is 10.000000000000002: 17 digits, equal to 10 for Tokyo.
            age: Any = [10, 10.0, 10 + 1e-15, 10 - 1e-15][i % 4] if i < 12 else i % 20
            records[f"k{i:02}"] = {"age": age}
        for pk, record in records.items():
            storage.save(record, primary_key=pk)
        loaded: list[bytes] = []
        load_raw = storage._load_raw  # type: ignore[attr-defined]

        def recording(keys: list[bytes]) -> list[dict[bytes, bytes] | None]:
            loaded.extend(keys)
            result: list[dict[bytes, bytes] | None] = load_raw(keys)
            return result

        monkeypatch.setattr(storage, "_load_raw", recording)
        floats_at_10 = {pk for pk, r in records.items() if type(r["age"]) is float}
        cases: list[tuple[dict[str, Any], Callable[[Any], bool]]] = [
            ({"age__gt": 10}, lambda a: a > 10),
            ({"age__gte": 10}, lambda a: a >= 10),
            ({"age__lt": 10.0}, lambda a: a < 10),
            ({"age__lte": 10}, lambda a: a <= 10),
            ({"age__between": (10, 15)}, lambda a: 10 <= a <= 15),
        ]
        for lookup, test in cases:
            expected = sorted(pk for pk, r in records.items() if test(r["age"]))
            q = storage.query().where(**lookup)
            loaded.clear()
            assert q.count() == len(expected), lookup
            assert {k.decode() for k in loaded} <= floats_at_10, lookup
            assert sorted(str(d.pk) for d in q) == expected, lookup
        # Without a float at the bound nothing is loaded to be checked at all.
        for pk in floats_at_10:
            storage.delete(pk)
        loaded.clear()
        assert storage.query().where(age__gt=10).count() == sum(
            1 for pk, r in records.items() if pk not in floats_at_10 and r["age"] > 10
        )
        assert loaded == []


@pytest.mark.parametrize("indexed", [False, True])
def test_ranges_at_whole_and_near_bounds_match_the_oracle(
    tyrant: TemporaryTyrant, indexed: bool
) -> None:
    # Ints, floats equal to them, floats Tokyo's 16 digits cannot tell from them, and
    # other kinds whose text parses as the same number, under every range at whole
    # bounds (ints settled by kind) and at near ones (everything checked).
    values: list[Any] = [
        10, 10.0, 10 + 1e-15, 10 - 2e-15, 9, 11, 9.5, "10", True, Decimal("10"),
        -3, -3.0, -3 - 4e-16, 0, -0.0, 2**53, float(2**53), 10**15, 10**15 + 1,
    ]  # fmt: skip
    records = {f"k{i:02}": {"n": v} for i, v in enumerate(values)}
    records["none"] = {"other": 1}
    bounds: list[Any] = [10, 10.0, 10 + 1e-15, -3, -3.0, 0, -0.0, 2**53, 10**15]
    with pymodels.get_storage(tyrant.url) as s:
        if indexed:
            s.create_index("n", kind="decimal")
        for bound in bounds:
            specs: list[tuple[str, Any]] = [(op, bound) for op in ("gt", "gte", "lt", "lte")]
            specs += [("between", (bound, 11)), ("between", (-5, bound))]
            for op, operand in specs:
                for negate in (False, True):
                    spec = {"where_not" if negate else "where": [("lookup", f"n__{op}", operand)]}
                    check_query_case(s, records, spec)


def test_a_one_field_lookup_is_one_search_when_short_and_streams_when_long(
    tyrant: TemporaryTyrant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # where(email=X) of a page or fewer matches: one search (asked for one key more than
    # a page), then the records. More than a page: that search is spent and the query
    # streams (one more search, no limit, sorted in the client), every match once, in
    # order, both directions.
    monkeypatch.setattr(_engine, "_PAGE_MAX", 4)
    monkeypatch.setattr(spill, "RUN_SIZE", 3)
    with pymodels.get_storage(tyrant.url) as storage:
        for i in range(12):
            storage.save({"city": "a" if i < 4 else "b", "n": i}, primary_key=f"k {i:02},")
        storage.save({"city": 7}, primary_key="int")  # another kind: the gate keeps it out
        limits: list[bytes] = []
        client = _client(storage)
        search, search_each = client.search, client.search_each

        def recording(args: Sequence[bytes], *, write: bool = False) -> list[bytes]:
            limits.extend(a for a in args if a.startswith(b"setlimit"))
            keys: list[bytes] = search(args, write=write)
            return keys

        def recording_each(args: Sequence[bytes], consume: Callable[[Any], Any]) -> Any:
            limits.extend(a for a in args if a.startswith(b"setlimit"))
            limits.append(b"each")
            return search_each(args, consume)

        # The shape's first query compiles it (the general path); later ones fill it in.
        assert storage.query().where(city="none").first() is None
        monkeypatch.setattr(client, "search", recording)
        monkeypatch.setattr(client, "search_each", recording_each)
        short = [d.pk for d in storage.query().where(city="a")]
        assert short == [f"k {i:02}," for i in range(4)]
        assert limits == [b"setlimit\x005\x000"]
        limits.clear()
        long = [f"k {i:02}," for i in range(4, 12)]
        assert [d.pk for d in storage.query().where(city="b")] == long
        assert limits == [b"setlimit\x005\x000", b"each"]  # then one unlimited search
        assert [d.pk for d in storage.query().where(city="b").order_by("-pk")] == long[::-1]
        assert [d.pk for d in storage.query().where(city="b")[2:]] == long[2:]
        assert storage.query().where(city="zzz").first() is None


def test_queries_through_sorted_streams_match_the_oracle(
    tyrant: TemporaryTyrant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The differential test again with replies read 2 keys at a time into sorts that
    spill runs of 2, and the stream path taken from 3 matches on: every unsliced
    pk-ordered query goes through Storage._sorted_keys (a one-field lookup too; below
    3 matches it is one short search)."""
    monkeypatch.setattr(_engine, "_PAGE_MAX", 2)
    monkeypatch.setattr(_engine, "BATCH_SIZE", 2)  # records checked and loaded 2 at a time
    monkeypatch.setattr(spill, "RUN_SIZE", 2)
    monkeypatch.setattr(_protocol, "STREAM_BLOCK", 2)
    with pymodels.get_storage(tyrant.url) as s:

        @settings(deadline=None)  # examples: the profile's
        @given(case=pst.query_cases())
        def check(case: tuple[dict[str, dict[str, Any]], dict[str, Any]]) -> None:
            check_query_case(s, *case)

        check()


def test_save_many_is_one_round_trip_per_batch_and_keeps_earlier_records(
    tyrant: TemporaryTyrant,
) -> None:
    from pymodels.errors import BulkWriteError

    with pymodels.get_storage(tyrant.url) as storage:
        pks = storage.save_many({"n": i} for i in range(2500))
        assert len(pks) == len(set(pks)) == 2500 == len(storage)
        with pytest.raises(BulkWriteError) as info:
            storage.save_many([{"n": 1}, {"n": 2}, {"bad": float("nan")}, {"n": 4}])
        assert info.value.index == 2
        assert len(info.value.written_pks) == 2  # earlier records stay: no transactions
        assert len(storage) == 2502


def _fork_saving_in_child(storage: Any) -> int:
    """Fork; the child saves one record (pk ``c``) through ``storage`` and exits 0 if
    that worked. The parent gets the child's pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            storage.save({"who": "child"}, primary_key="c")
            code = 0
        finally:
            os._exit(code)
    return pid


def _child_succeeded(pid: int, seconds: float = 30) -> None:
    """Wait for the child to exit 0, failing (and killing it) if it hangs."""
    deadline = time.monotonic() + seconds
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_fork_safe(tyrant: TemporaryTyrant) -> None:
    with pymodels.get_storage(tyrant.url) as storage:
        storage.save({"who": "parent"}, primary_key="p")
        _child_succeeded(_fork_saving_in_child(storage))
        assert storage.get(None, "c")["who"] == "child"


def test_fork_while_another_thread_holds_the_pool_lock(tyrant: TemporaryTyrant) -> None:
    # The child has no such thread: waiting for it to let go of the lock would hang.
    with pymodels.get_storage(tyrant.url) as storage:
        storage.save({"who": "parent"}, primary_key="p")
        lock = _client(storage)._lock
        with lock:
            pid = _fork_saving_in_child(storage)
        _child_succeeded(pid)
        assert storage.get(None, "c")["who"] == "child"


def test_index_kinds_are_found_on_a_server_elsewhere(tyrant: TemporaryTyrant) -> None:
    with pymodels.get_storage(tyrant.url) as storage:
        assert isinstance(storage, Storage)
        for field, kind in (("a", "lexical"), ("b", "decimal"), ("c", "token"), ("d", "qgram")):
            storage.create_index(field, kind=kind)
        storage.save({"a": "x", "b": 1, "c": ["y"], "d": "text"})
        storage._server_path = ""  # as when the served file is not on this machine
        found = {f: storage.server_index_kind(f.encode()) for f in "abcde"}
        assert found == {"a": "lexical", "b": "decimal", "c": "token", "d": "qgram", "e": None}
        assert storage.has_index("a") and not storage.has_index("e")
        assert "127.0.0.1:" in repr(storage)


def test_an_ordered_slice_checks_kind_gates_on_the_records_it_loads(
    tyrant: TemporaryTyrant,
) -> None:
    # The top of an ordered slice is asked of the server without the kind gates (the
    # index answers alone) and the gates are checked on the loaded records: values of
    # other kinds whose text matches (bytes, word lists, numbers) send the query again
    # with its gates, and never come back.
    with pymodels.get_storage(tyrant.url) as storage:
        storage.create_index("name")
        pks = storage.save_many([{"name": f"a{i}"} for i in (5, 1, 3, 2, 4, 0)])
        by_name = dict(zip((f"a{i}" for i in (5, 1, 3, 2, 4, 0)), pks, strict=True))
        q = storage.query().where(name__startswith="a").order_by("name")
        assert [d.pk for d in q[:3]] == [by_name["a0"], by_name["a1"], by_name["a2"]]
        assert "top: tctdbqry: name STRBW 'a' (then checked" in q[:3].explain()
        storage.save_many([{"name": b"a0"}, {"name": ["a00", "b"]}, {"name": b"a1x"}])
        assert [d["name"] for d in q[:3]] == ["a0", "a1", "a2"]
        assert [d["name"] for d in q.order_by("-name")[:2]] == ["a5", "a4"]
        assert [d["name"] for d in q[4:10]] == ["a4", "a5"]
        # Ties of the last record of the slice still come in pk order.
        storage.save_many([{"name": "a1"}, {"name": "a1"}])
        got = list(q[:3])
        assert [d["name"] for d in got] == ["a0", "a1", "a1"]
        ones = sorted(str(d.pk) for d in storage.query().where(name="a1"))
        assert [d.pk for d in got[1:]] == ones[:2]

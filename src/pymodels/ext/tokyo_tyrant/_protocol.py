"""A pure-Python client for the Tokyo Tyrant binary protocol (``ttserver`` 1.1).

Written from the protocol's documentation (``/work/shared/notes/tokyo.md`` section 7,
the Tokyo Tyrant specification): every request is ``0xC8``, a command byte and a body of
big-endian integers and length-prefixed byte strings; every reply starts with a status
byte (0 success, 1 failure or no record). On failure only the status byte comes back,
except for ``misc``, ``fwmkeys``, ``rnum``, ``size`` and ``stat``, which always send their
whole shape.

Table records go through ``misc put/putkeep/out/get`` (every column its own length-
prefixed element: binary-safe); queries through ``misc search``.

Connections
-----------
:class:`Client` keeps a small pool of sockets (``TCP_NODELAY``, buffered reads), so one
client may be shared by threads: each call takes a socket from the pool, or opens one,
and gives it back when the reply has been read.

* A socket the server closed while it sat in the pool (a restarted server) is noticed
  before a write is sent on it and replaced: nothing was sent on it. A read skips that
  check (a ``select`` per call): one sent on such a socket fails at once and goes out
  again on a fresh connection, after the rest of the pool is dropped with it.
* After ``fork()`` the child drops the pooled sockets it inherited (they are the
  parent's conversations) and connects afresh.
* A server that cannot be reached raises :class:`~pymodels.errors.ConnectionFailed`
  naming the host and port, within ``timeout`` seconds.
* A connection lost after a request was sent: a read is sent once more on a fresh
  connection; a write is **never** repeated. The caller gets ``ConnectionFailed`` saying
  that the write's outcome is unknown (the server may or may not have applied it); the
  next call connects again.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final, TypeVar

from ...backend import ConnectionFailed, PyModelsError

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "Client",
    "ProtocolError",
    "misc_request",
    "request",
]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 1978

MAGIC: Final = 0xC8
# Command bytes.
PUT: Final = 0x10
PUTKEEP: Final = 0x11
PUTCAT: Final = 0x12
OUT: Final = 0x20
GET: Final = 0x30
MGET: Final = 0x31
VSIZ: Final = 0x38
ITERINIT: Final = 0x50
ITERNEXT: Final = 0x51
FWMKEYS: Final = 0x58
ADDINT: Final = 0x60
SYNC: Final = 0x70
VANISH: Final = 0x72
RNUM: Final = 0x80
SIZE: Final = 0x81
STAT: Final = 0x88
MISC: Final = 0x90

#: ``misc`` option: do not write the update log (replication). Not used by default.
MONOULOG: Final = 1

_U32: Final = struct.Struct(">I")
_I32: Final = struct.Struct(">i")
_U64: Final = struct.Struct(">Q")
_HEAD2: Final = struct.Struct(">BB")
_STATUS_U32: Final = struct.Struct(">BI")
_MISC_HEAD: Final = struct.Struct(">BBIII")
_BUFSIZE: Final = 64 * 1024
#: A ``misc get`` request up to its one argument (the key's length, then the key).
_GET_HEAD: Final = _MISC_HEAD.pack(MAGIC, MISC, 3, 0, 1) + b"get"
#: Pipelined writes go out in groups of this many requests (see :meth:`Client.call_many`).
PIPELINE_GROUP: Final = 64
#: Elements parsed per step of a reply handed out as it is read (see
#: :meth:`Client.search_each`): what the client holds of such a reply at once.
STREAM_BLOCK: Final = 10_000

T = TypeVar("T")


#: Every open client, so that a forked child drops the sockets it inherited.
_CLIENTS: Final[weakref.WeakSet[Client]] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for client in list(_CLIENTS):
        client._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


class ProtocolError(PyModelsError):
    """The server sent something the protocol does not allow (the connection is dropped)."""


# ------------------------------------------------------------------- request encoding


def request(command: int, *parts: bytes) -> bytes:
    """A request whose body is length-prefixed byte strings: ``C8 cmd u32 len... data...``.

    The lengths come first, then the data, as every keyed command lays them out.
    """
    return (
        _HEAD2.pack(MAGIC, command) + b"".join(_U32.pack(len(p)) for p in parts) + b"".join(parts)
    )


def misc_request(name: bytes, args: Sequence[bytes], opts: int = 0) -> bytes:
    """A ``misc`` request: name, options, then each argument with its length."""
    pieces = [_MISC_HEAD.pack(MAGIC, MISC, len(name), opts, len(args)), name]
    for arg in args:
        pieces.append(_U32.pack(len(arg)))
        pieces.append(arg)
    return b"".join(pieces)


# ------------------------------------------------------------------------ connection


class _Connection:
    """One socket with its own read buffer.

    Replies are parsed straight out of the buffer (``struct.unpack_from`` and slices)
    rather than through a file object's ``read`` per field: a pipelined batch of
    ``misc get`` replies is a few hundred small fields, which one ``recv`` usually brings
    in whole.
    """

    __slots__ = ("_buf", "_pos", "_sock", "where")

    def __init__(self, sock: socket.socket, where: str) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self.where = where

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def _fill(self, need: int) -> None:
        """Make at least ``need`` unread bytes available (the unread rest moves to the front)."""
        chunks = [self._buf[self._pos :]]
        have = len(chunks[0])
        recv = self._sock.recv
        while have < need:
            data = recv(max(_BUFSIZE, need - have))
            if not data:
                raise EOFError("the server closed the connection")
            chunks.append(data)
            have += len(data)
        self._buf = b"".join(chunks)
        self._pos = 0

    def read(self, size: int) -> bytes:
        pos = self._pos
        end = pos + size
        if end > len(self._buf):
            self._fill(size)
            pos, end = 0, size
        self._pos = end
        return self._buf[pos:end]

    def status(self) -> int:
        pos = self._pos
        if pos >= len(self._buf):
            self._fill(1)
            pos = 0
        self._pos = pos + 1
        return self._buf[pos]

    def u32(self) -> int:
        pos = self._pos
        if pos + 4 > len(self._buf):
            self._fill(4)
            pos = 0
        self._pos = pos + 4
        value: int = _U32.unpack_from(self._buf, pos)[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack(self.read(8))[0]
        return value

    def status_u32(self) -> tuple[int, int]:
        """A status byte and the u32 after it (the head of every ``misc`` reply)."""
        pos = self._pos
        if pos + 5 > len(self._buf):
            self._fill(5)
            pos = 0
        self._pos = pos + 5
        status, value = _STATUS_U32.unpack_from(self._buf, pos)
        return status, value

    def elements(self, count: int) -> list[bytes]:
        """``count`` length-prefixed elements (u32 size, then the bytes)."""
        out: list[bytes] = []
        append = out.append
        unpack_from = _U32.unpack_from
        buf = self._buf
        pos = self._pos
        end = len(buf)
        for _ in range(count):
            if pos + 4 <= end:
                start = pos + 4
                stop = start + unpack_from(buf, pos)[0]
                if stop <= end:  # the common case: the whole element is buffered
                    append(buf[start:stop])
                    pos = stop
                    continue
            self._pos = pos
            append(self.read(self.u32()))
            buf, pos, end = self._buf, self._pos, len(self._buf)
        self._pos = pos
        return out

    def columns(self, count: int) -> dict[bytes, bytes]:
        """``count`` length-prefixed elements read as name, value pairs: a record's
        columns, put straight into a dict (no list of elements in between)."""
        if count % 2:
            self.elements(count)  # keep the stream in step; the caller drops it anyway
            raise ProtocolError(f"a record of {count} elements: names and values come in pairs")
        out: dict[bytes, bytes] = {}
        unpack_from = _U32.unpack_from
        buf = self._buf
        pos = self._pos
        end = len(buf)
        for _ in range(count >> 1):
            if pos + 4 <= end:
                start = pos + 4
                stop = start + unpack_from(buf, pos)[0]
                if stop + 4 <= end:
                    value = stop + 4
                    value_stop = value + unpack_from(buf, stop)[0]
                    if value_stop <= end:  # the common case: the whole pair is buffered
                        out[buf[start:stop]] = buf[value:value_stop]
                        pos = value_stop
                        continue
            self._pos = pos
            name = self.read(self.u32())
            out[name] = self.read(self.u32())
            buf, pos, end = self._buf, self._pos, len(self._buf)
        self._pos = pos
        return out

    def unread(self) -> bool:
        """Whether bytes nobody asked for are buffered (the connection is out of step)."""
        return self._pos < len(self._buf)

    def stale(self) -> bool:
        """Whether this idle connection cannot be used: bytes nobody asked for are
        buffered, or the socket is readable (the server closed it, or sent something)."""
        if self._pos < len(self._buf):
            return True
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        self._buf = b""
        self._pos = 0
        self._sock.close()


# ---------------------------------------------------------------------------- client


class Client:
    """A thread-safe Tokyo Tyrant client over a small pool of connections.

    ``path`` (a unix socket, which ``ttserver -host /path -port 0`` listens on) replaces
    ``host`` and ``port``. ``timeout`` bounds connecting and each reply, in seconds.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        timeout: float | None = 10.0,
        path: str | None = None,
        pool_size: int = 8,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.timeout = timeout
        self.pool_size = pool_size
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        _CLIENTS.add(self)

    @property
    def address(self) -> str:
        """Where the server is, for messages: ``host:port`` or the socket path."""
        return self.path if self.path else f"{self.host}:{self.port}"

    # ----------------------------------------------------------- pool

    def _connect(self) -> _Connection:
        try:
            if self.path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(self.timeout)
                    sock.connect(self.path)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            raise ConnectionFailed(
                f"cannot connect to Tokyo Tyrant at {self.address}"
                f"{'' if self.timeout is None else f' within {self.timeout:g} s'}: {e}"
            ) from e
        return _Connection(sock, self.address)

    def _acquire(self, check: bool = True) -> _Connection:
        """A pooled connection, or a new one. ``check=False`` skips asking the kernel
        whether the server closed it (for a read, which may be sent again)."""
        if self._closed:
            raise PyModelsError("the Tokyo Tyrant client is closed")
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect()
            if not (conn.stale() if check else conn.unread()):
                return conn
            conn.close()

    def _release(self, conn: _Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.pool_size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every pooled connection (calls in flight finish and close theirs)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def reset(self) -> None:
        """Drop the pooled connections (after a ``fork()``: the child must not share them)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _after_fork(self) -> None:
        # In the child, alone: a thread of the parent may have held the lock at the fork,
        # so it is replaced rather than taken.
        self._lock = threading.Lock()
        self.reset()

    def call(self, data: bytes, reader: Callable[[_Connection], T], *, write: bool) -> T:
        """Send one request and read its reply with ``reader``.

        A read whose connection broke is sent once more on a fresh connection; a write
        never is (see the module docstring).
        """
        for attempt in (1, 2):
            # A read's first try takes a pooled socket unchecked (see the module docstring).
            conn = self._acquire(write or attempt == 2)
            try:
                conn.send(data)
                result = reader(conn)
            except (OSError, EOFError, ProtocolError, struct.error) as e:
                conn.close()
                if write:
                    raise ConnectionFailed(
                        f"the connection to Tokyo Tyrant at {self.address} was lost during a "
                        f"write: its outcome is unknown (the server may or may not have applied "
                        f"it; nothing is retried by itself) ({_describe(e)})"
                    ) from e
                # The pool's other sockets most likely lost the same server.
                self.reset()
                if attempt == 2 or isinstance(e, TimeoutError):
                    raise ConnectionFailed(
                        f"the connection to Tokyo Tyrant at {self.address} was lost "
                        f"({_describe(e)})"
                    ) from e
                continue
            except BaseException:
                conn.close()
                raise
            self._release(conn)
            return result
        raise AssertionError("unreachable")

    def call_many(
        self,
        requests: Iterable[bytes],
        reader: Callable[[_Connection], T],
        *,
        write: bool,
        count: int | None = None,
    ) -> list[T]:
        """Send several requests in one go (pipelined) and read each reply with ``reader``.

        ``requests`` may be produced lazily (``count`` then says how many): writes go out
        in groups of :data:`PIPELINE_GROUP` as they are made, so the server works through
        the first while the rest are still being encoded. Reads are sent whole, so that a
        broken connection can send them once more.

        On a lost connection during writes, :class:`ConnectionFailed` says how many
        replies had arrived: those writes are done, the rest have unknown outcomes.
        """
        if count is None:
            requests = list(requests)
            count = len(requests)
        if count == 0:
            return []
        if not write:
            data = b"".join(requests)
            if count == 1:
                return [self.call(data, reader, write=False)]
            return self.call(data, lambda c: [reader(c) for _ in range(count)], write=False)
        if count == 1:
            return [self.call(next(iter(requests)), reader, write=True)]
        conn = self._acquire()
        results: list[T] = []
        try:
            group: list[bytes] = []
            for data in requests:
                group.append(data)
                if len(group) == PIPELINE_GROUP:
                    # The replies (a few bytes each for put/out) wait in the socket's
                    # buffer meanwhile: far below what would make the server block.
                    conn.send(b"".join(group))
                    group = []
            if group:
                conn.send(b"".join(group))
            for _ in range(count):
                results.append(reader(conn))
        except (OSError, EOFError, ProtocolError, struct.error) as e:
            conn.close()
            raise ConnectionFailed(
                f"the connection to Tokyo Tyrant at {self.address} was lost during a batch of "
                f"{count} writes: the first {len(results)} were acknowledged, the "
                f"outcome of the others is unknown ({_describe(e)})"
            ) from e
        except BaseException:
            conn.close()
            raise
        self._release(conn)
        return results

    # ----------------------------------------------------------- commands

    def misc(
        self, name: bytes, args: Sequence[bytes], *, write: bool, opts: int = 0
    ) -> tuple[bool, list[bytes]]:
        """``misc``: (success, result elements). The list comes with either status."""
        return self.call(misc_request(name, args, opts), _read_misc, write=write)

    def misc_many(
        self,
        name: bytes,
        arg_lists: Iterable[Sequence[bytes]],
        *,
        write: bool,
        opts: int = 0,
        count: int | None = None,
    ) -> list[tuple[bool, list[bytes]]]:
        """Several ``misc`` calls of one name, pipelined over one connection.

        ``arg_lists`` may be lazy when ``count`` says how many there are (writes are
        then encoded while the first ones are already on their way)."""
        if count is None:
            arg_lists = list(arg_lists)
            count = len(arg_lists)
        return self.call_many(
            (misc_request(name, args, opts) for args in arg_lists),
            _read_misc,
            write=write,
            count=count,
        )

    # table records (misc: binary-safe)

    def table_put(self, pk: bytes, columns: Sequence[bytes], *, keep: bool = False) -> bool:
        """Store a record (``columns``: name, value, name, value...). With ``keep``, only
        if the key is new. False: ``keep`` and the key exists."""
        ok, _ = self.misc(b"putkeep" if keep else b"put", [pk, *columns], write=True)
        return ok

    def table_get(self, pk: bytes) -> list[bytes] | None:
        """A record's columns (name, value, ...), or None when missing."""
        ok, elements = self.misc(b"get", [pk], write=False)
        return elements if ok else None

    def table_record(self, pk: bytes) -> dict[bytes, bytes] | None:
        """A record's columns as a dict (name: value), or None when missing."""
        return self.call(_GET_HEAD + _U32.pack(len(pk)) + pk, _read_record, write=False)

    def table_records(self, pks: Sequence[bytes]) -> list[dict[bytes, bytes] | None]:
        """The records of several keys (see :meth:`table_record`), aligned with them:
        ``misc get`` pipelined over one connection, one round trip."""
        head, pack = _GET_HEAD, _U32.pack
        return self.call_many(
            [head + pack(len(pk)) + pk for pk in pks], _read_record, write=False, count=len(pks)
        )

    def table_out(self, pk: bytes) -> bool:
        """Delete a record; False when it was missing."""
        ok, _ = self.misc(b"out", [pk], write=True)
        return ok

    def search(self, args: Sequence[bytes], *, write: bool = False) -> list[bytes]:
        """``misc search``: one argument per sub-command (see :func:`search_args`)."""
        ok, elements = self.misc(b"search", args, write=write)
        if not ok:
            raise PyModelsError(f"Tokyo Tyrant at {self.address}: search failed")
        return elements

    def search_each(self, args: Sequence[bytes], consume: Callable[[Iterator[bytes]], T]) -> T:
        """A read-only ``misc search`` whose keys ``consume`` takes as they are read.

        ``consume`` gets an iterator over the result's elements, parsed
        :data:`STREAM_BLOCK` at a time, and its answer is returned: a result of any
        length, never held whole. Whatever it leaves is read and dropped, so the
        connection stays in step. If the connection breaks and the search is sent again
        on a fresh one, ``consume`` is called again from the start.
        """

        def reader(conn: _Connection) -> T:
            status, count = conn.status_u32()
            if status > 1:
                raise ProtocolError(f"unexpected status byte {status} from Tokyo Tyrant")
            if status:
                conn.elements(count)
                raise PyModelsError(f"Tokyo Tyrant at {self.address}: search failed")
            return _consume(conn, count, consume)

        return self.call(misc_request(b"search", args), reader, write=False)

    def fwmkeys_each(self, prefix: bytes, consume: Callable[[Iterator[bytes]], T]) -> T:
        """:meth:`fwmkeys` (every key starting with ``prefix``) with its keys handed to
        ``consume`` as they are read, as :meth:`search_each` does."""
        data = _HEAD2.pack(MAGIC, FWMKEYS) + _U32.pack(len(prefix)) + _I32.pack(-1) + prefix

        def reader(conn: _Connection) -> T:
            # fwmkeys: the list comes with either status.
            _check_status(conn.status())
            return _consume(conn, conn.u32(), consume)

        return self.call(data, reader, write=False)

    def genuid(self) -> int:
        """A new unique number from the table's sequence."""
        ok, elements = self.misc(b"genuid", [], write=True)
        if not ok or len(elements) != 1:
            raise PyModelsError(f"Tokyo Tyrant at {self.address}: genuid failed")
        return int(elements[0])

    def setindex(self, column: bytes, kind: bytes) -> bool:
        """Create (or with ``void`` drop, ``opt`` optimise) the index of a column."""
        ok, _ = self.misc(b"setindex", [column, kind], write=True)
        return ok

    # plain key/value commands

    def put(self, key: bytes, value: bytes) -> bool:
        """Plain put (on a table: the value is the NUL-joined columns)."""
        return self.call(request(PUT, key, value), _read_ok, write=True)

    def putkeep(self, key: bytes, value: bytes) -> bool:
        return self.call(request(PUTKEEP, key, value), _read_ok, write=True)

    def out(self, key: bytes) -> bool:
        return self.call(request(OUT, key), _read_ok, write=True)

    def get(self, key: bytes) -> bytes | None:
        """Plain get (on a table: the NUL-joined columns; not binary-safe)."""
        return self.call(request(GET, key), _read_value, write=False)

    def mget(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """Values of the keys that exist (on a table: NUL-joined columns, not binary-safe)."""
        body = b"".join(_U32.pack(len(k)) + k for k in keys)
        return self.call(
            _HEAD2.pack(MAGIC, MGET) + _U32.pack(len(keys)) + body, _read_mget, write=False
        )

    def vsiz(self, key: bytes) -> int:
        """Size of a value (on a table: of its NUL-joined form plus one); -1 if missing."""
        return self.call(request(VSIZ, key), _read_vsiz, write=False)

    def fwmkeys(self, prefix: bytes, max: int = -1) -> list[bytes]:
        """Keys starting with ``prefix`` (at most ``max``; negative: all)."""
        data = _HEAD2.pack(MAGIC, FWMKEYS) + _U32.pack(len(prefix)) + _I32.pack(max) + prefix
        return self.call(data, _read_list, write=False)

    def sync(self) -> bool:
        """Write the server's buffers to the device."""
        return self.call(_HEAD2.pack(MAGIC, SYNC), _read_ok, write=True)

    def vanish(self) -> bool:
        """Delete every record."""
        return self.call(_HEAD2.pack(MAGIC, VANISH), _read_ok, write=True)

    def rnum(self) -> int:
        """Number of records."""
        return self.call(_HEAD2.pack(MAGIC, RNUM), _read_u64, write=False)

    def size(self) -> int:
        """Size of the database in bytes."""
        return self.call(_HEAD2.pack(MAGIC, SIZE), _read_u64, write=False)

    def stat(self) -> dict[str, str]:
        """The server's status (``type``, ``path``, ``version``, ``rnum``, ...)."""
        text = self.call(_HEAD2.pack(MAGIC, STAT), _read_stat, write=False)
        out: dict[str, str] = {}
        for line in text.decode("utf-8", "replace").splitlines():
            name, sep, value = line.partition("\t")
            if sep:
                out[name] = value
        return out


def search_args(
    conditions: Iterable[tuple[bytes, str, bytes]] = (),
    *,
    order: tuple[bytes, str] | None = None,
    limit: int | None = None,
    skip: int = 0,
) -> list[bytes]:
    """``misc search`` arguments for one query block.

    ``conditions`` are ``(column, op, expression)`` with ``op`` a name such as ``STREQ``,
    optionally prefixed by ``!`` (negate) and then ``+`` (no index). ``order`` is
    ``(column, STRASC|STRDESC|NUMASC|NUMDESC)``.
    """
    args = [
        b"addcond\x00" + col + b"\x00" + op.encode("ascii") + b"\x00" + expr
        for col, op, expr in conditions
    ]
    if order is not None:
        args.append(b"setorder\x00" + order[0] + b"\x00" + order[1].encode("ascii"))
    if limit is not None or skip:
        args.append(b"setlimit\x00%d\x00%d" % (-1 if limit is None else limit, skip))
    return args


# ---------------------------------------------------------------------- reply readers


def _read_ok(conn: _Connection) -> bool:
    status = conn.status()
    _check_status(status)
    return status == 0


def _read_value(conn: _Connection) -> bytes | None:
    status = conn.status()
    _check_status(status)
    if status:
        return None
    return conn.read(conn.u32())


def _read_vsiz(conn: _Connection) -> int:
    status = conn.status()
    _check_status(status)
    return -1 if status else conn.u32()


def _read_mget(conn: _Connection) -> dict[bytes, bytes]:
    status = conn.status()
    _check_status(status)
    if status:
        return {}
    out: dict[bytes, bytes] = {}
    for _ in range(conn.u32()):
        ksiz = conn.u32()
        vsiz = conn.u32()
        key = conn.read(ksiz)
        out[key] = conn.read(vsiz)
    return out


def _read_list(conn: _Connection) -> list[bytes]:
    # fwmkeys: the list comes with either status.
    _check_status(conn.status())
    return conn.elements(conn.u32())


def _consume(conn: _Connection, count: int, consume: Callable[[Iterator[bytes]], T]) -> T:
    """``consume``'s answer over the next ``count`` elements of ``conn``, parsed a block
    at a time; the ones it leaves are read and dropped."""

    def elements() -> Iterator[bytes]:
        left = count
        while left:
            block = conn.elements(min(left, STREAM_BLOCK))
            left -= len(block)
            yield from block

    stream = elements()
    result = consume(stream)
    deque(stream, maxlen=0)
    return result


def _read_misc(conn: _Connection) -> tuple[bool, list[bytes]]:
    # misc sends its element count after either status.
    status, count = conn.status_u32()
    if status > 1:
        raise ProtocolError(f"unexpected status byte {status} from Tokyo Tyrant")
    return status == 0, conn.elements(count)


def _read_record(conn: _Connection) -> dict[bytes, bytes] | None:
    # misc get: the columns as name, value elements; a missing record fails (no elements).
    status, count = conn.status_u32()
    if status > 1:
        raise ProtocolError(f"unexpected status byte {status} from Tokyo Tyrant")
    if status:
        conn.elements(count)
        return None
    return conn.columns(count)


def _read_u64(conn: _Connection) -> int:
    _check_status(conn.status())
    return conn.u64()


def _read_stat(conn: _Connection) -> bytes:
    _check_status(conn.status())
    return conn.read(conn.u32())


def _check_status(status: int) -> None:
    if status not in (0, 1):
        raise ProtocolError(f"unexpected status byte {status} from Tokyo Tyrant")


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError | socket.timeout):
        return "no reply within the timeout"
    return str(e) or type(e).__name__

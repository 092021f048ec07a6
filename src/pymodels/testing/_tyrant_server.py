"""A Tokyo Tyrant protocol server for tests: real Tokyo Cabinet storage behind it.

``ttserver`` cannot be installed from any package registry here, so the test suite runs
the Tokyo Tyrant backend against this server unless a real ``ttserver`` is given (see
:mod:`pymodels.testing.tyrant`). It is a test tool, not part of the backend.

What makes it faithful: like ``ttserver``, it hands every command to Tokyo Cabinet's
abstract database API (``tcadb*``, the same C functions ``ttserver`` calls, reached
through the project's ctypes binding), so records, indexes, queries (``misc search``
with every sub-command) and the file format are Tokyo's own; this module only frames
requests and replies. Its replies are checked byte for byte against transcripts recorded
from ``ttserver`` 1.1.41 (``tests/fixtures/tyrant/``).

It serves one database, listens on ``127.0.0.1`` (or a unix socket) only, runs one
thread per connection (the C calls release the GIL, as ``ttserver``'s worker threads
run in parallel), and stops cleanly on SIGTERM or SIGINT, closing the database and
removing its pid file. The command line takes ``ttserver``'s options that matter here::

    python -m pymodels.testing._tyrant_server -host 127.0.0.1 -port 1978 -pid tt.pid \
        "storage.tct#idx=name:lex"

Implemented: put, putkeep, putcat, out, get, mget, vsiz, iterinit, iternext, fwmkeys,
addint, adddouble, sync, vanish, rnum, size, stat, misc: what the backend sends and what
``tcrmgr`` needs for inform, put, out, get, mget, list, misc, sync and vanish.
Not implemented (the connection is closed, as ``ttserver`` does for unknown commands):
ext (Lua), putshl, putnr, optimize, copy, restore, setmst, replication.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import os
import resource
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from ..ext.tokyo_cabinet import _binding

__all__ = ["Database", "TyrantServer", "main"]

VERSION: Final = "1.1.41"
_P = ctypes.c_void_p
_B = ctypes.c_char_p
_I = ctypes.c_int
_IP = ctypes.POINTER(ctypes.c_int)
_BOOL = ctypes.c_bool
_fn = _binding._fn

_tcadbnew = _fn("tcadbnew", _P)
_tcadbdel = _fn("tcadbdel", None, _P)
_tcadbopen = _fn("tcadbopen", _BOOL, _P, _B)
_tcadbclose = _fn("tcadbclose", _BOOL, _P)
_tcadbput = _fn("tcadbput", _BOOL, _P, _B, _I, _B, _I)
_tcadbputkeep = _fn("tcadbputkeep", _BOOL, _P, _B, _I, _B, _I)
_tcadbputcat = _fn("tcadbputcat", _BOOL, _P, _B, _I, _B, _I)
_tcadbout = _fn("tcadbout", _BOOL, _P, _B, _I)
_tcadbget = _fn("tcadbget", _P, _P, _B, _I, _IP)
_tcadbvsiz = _fn("tcadbvsiz", _I, _P, _B, _I)
_tcadbiterinit = _fn("tcadbiterinit", _BOOL, _P)
_tcadbiternext = _fn("tcadbiternext", _P, _P, _IP)
_tcadbfwmkeys = _fn("tcadbfwmkeys", _P, _P, _B, _I, _I)
_tcadbaddint = _fn("tcadbaddint", _I, _P, _B, _I, _I)
_tcadbadddouble = _fn("tcadbadddouble", ctypes.c_double, _P, _B, _I, ctypes.c_double)
_tcadbsync = _fn("tcadbsync", _BOOL, _P)
_tcadbvanish = _fn("tcadbvanish", _BOOL, _P)
_tcadbrnum = _fn("tcadbrnum", ctypes.c_uint64, _P)
_tcadbsize = _fn("tcadbsize", ctypes.c_uint64, _P)
_tcadbmisc = _fn("tcadbmisc", _P, _P, _B, _P)
_tcadbomode = _fn("tcadbomode", _I, _P)
_tcadbpath = _fn("tcadbpath", _B, _P)  # borrowed
_tclistnew = _fn("tclistnew", _P)
_tclistpush = _fn("tclistpush", None, _P, _B, _I)
_tclistdel = _fn("tclistdel", None, _P)
_tcfree = _fn("tcfree", None, _P)

# tcadbomode values (tcadb.h) and the names ttserver's stat gives them.
_TYPES: Final = {
    0: "void",
    1: "on-memory hash",
    2: "on-memory tree",
    3: "hash",
    4: "B+ tree",
    5: "fixed-length",
    6: "table",
    7: "skeleton",
}
_INT_MIN: Final = -(2**31)
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
#: ttserver's upper bounds on a request (MAXARGSIZ, MAXARGNUM): larger ones end the
#: connection.
_MAX_ARG: Final = 256 * 1024 * 1024
_MAX_NUM: Final = 1024 * 1024 * 1024


class Closed(Exception):
    """The client went away, or sent something the protocol does not allow."""


class Database:
    """One database opened through Tokyo Cabinet's abstract API (``tcadbopen``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._adb = _tcadbnew()
        self.opened = bool(_tcadbopen(self._adb, name.encode("utf-8")))
        if not self.opened:
            # As ttserver does: say so and serve the unopened ("void") database, on
            # which every command fails (stat shows "type void").
            print(f"ERROR\ttcadbopen failed: {name}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._adb:
            adb, self._adb = self._adb, None
            if self.opened:
                _tcadbclose(adb)
            _tcadbdel(adb)

    def _taken(self, ptr: int | None, size: ctypes.c_int) -> bytes | None:
        if not ptr:
            return None
        try:
            return ctypes.string_at(ptr, size.value)
        finally:
            _tcfree(ptr)

    def put(self, key: bytes, value: bytes, mode: int) -> bool:
        func = (_tcadbput, _tcadbputkeep, _tcadbputcat)[mode]
        return bool(func(self._adb, key, len(key), value, len(value)))

    def out(self, key: bytes) -> bool:
        return bool(_tcadbout(self._adb, key, len(key)))

    def get(self, key: bytes) -> bytes | None:
        size = ctypes.c_int()
        return self._taken(_tcadbget(self._adb, key, len(key), ctypes.byref(size)), size)

    def vsiz(self, key: bytes) -> int:
        return int(_tcadbvsiz(self._adb, key, len(key)))

    def iterinit(self) -> bool:
        return bool(_tcadbiterinit(self._adb))

    def iternext(self) -> bytes | None:
        size = ctypes.c_int()
        return self._taken(_tcadbiternext(self._adb, ctypes.byref(size)), size)

    def fwmkeys(self, prefix: bytes, max: int) -> list[bytes]:
        return _binding._take_list(_tcadbfwmkeys(self._adb, prefix, len(prefix), max))

    def addint(self, key: bytes, num: int) -> int:
        return int(_tcadbaddint(self._adb, key, len(key), num))

    def adddouble(self, key: bytes, num: float) -> float:
        return float(_tcadbadddouble(self._adb, key, len(key), num))

    def sync(self) -> bool:
        return bool(_tcadbsync(self._adb))

    def vanish(self) -> bool:
        return bool(_tcadbvanish(self._adb))

    def rnum(self) -> int:
        return int(_tcadbrnum(self._adb))

    def size(self) -> int:
        return int(_tcadbsize(self._adb))

    def kind(self) -> str | None:
        return _TYPES.get(int(_tcadbomode(self._adb)))

    def path(self) -> bytes | None:
        path: bytes | None = _tcadbpath(self._adb)
        return path

    def misc(self, name: bytes, args: Sequence[bytes]) -> list[bytes] | None:
        """``tcadbmisc``: the result list, or None on failure."""
        lst = _tclistnew()
        try:
            for arg in args:
                _tclistpush(lst, arg, len(arg))
            res = _tcadbmisc(self._adb, name, lst)
        finally:
            _tclistdel(lst)
        if not res:
            return None
        return _binding._take_list(res)


# ---------------------------------------------------------------------------- server


class _Handler(socketserver.StreamRequestHandler):
    rbufsize = 64 * 1024
    wbufsize = 0

    def setup(self) -> None:
        super().setup()
        if self.request.family != socket.AF_UNIX:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        tyrant: TyrantServer = getattr(self.server, "tyrant")  # noqa: B009 - set by TyrantServer
        reader = _Reader(self.rfile)
        db = tyrant.db
        commands = tyrant.commands
        send = self.request.sendall
        while not tyrant.stopping:
            try:
                head = self.rfile.read(2)
                if len(head) < 2 or head[0] != 0xC8:
                    return
                command = commands.get(head[1])
                if command is None:
                    return
                with tyrant.counting(head[1]):
                    reply = command(tyrant, db, reader)
                if reply is not None:
                    send(reply)
            except (Closed, OSError):
                return


class _Reader:
    __slots__ = ("_f",)

    def __init__(self, f: io.BufferedIOBase) -> None:
        self._f = f

    def read(self, size: int) -> bytes:
        data = self._f.read(size)
        if len(data) != size:
            raise Closed
        return data

    def u32(self, limit: int = _MAX_ARG) -> int:
        value: int = _I32.unpack(self.read(4))[0]
        if value < 0 or value > limit:
            raise Closed
        return value

    def i32(self) -> int:
        value: int = _I32.unpack(self.read(4))[0]
        return value

    def i64(self) -> int:
        value: int = _I64.unpack(self.read(8))[0]
        return value


_OK: Final = b"\x00"
_FAIL: Final = b"\x01"


def _put(mode: int) -> Callable[[TyrantServer, Database, _Reader], bytes]:
    def put(server: TyrantServer, db: Database, r: _Reader) -> bytes:
        ksiz = r.u32()
        vsiz = r.u32()
        key = r.read(ksiz)
        value = r.read(vsiz)
        if db.put(key, value, mode):
            return _OK
        server.miss("put")
        return _FAIL

    return put


def _out(server: TyrantServer, db: Database, r: _Reader) -> bytes:
    if db.out(r.read(r.u32())):
        return _OK
    server.miss("out")
    return _FAIL


def _get(server: TyrantServer, db: Database, r: _Reader) -> bytes:
    value = db.get(r.read(r.u32()))
    if value is None:
        server.miss("get")
        return _FAIL
    return _OK + _U32.pack(len(value)) + value


def _mget(server: TyrantServer, db: Database, r: _Reader) -> bytes:
    keys = [r.read(r.u32()) for _ in range(r.u32(_MAX_NUM))]
    parts = []
    for key in keys:
        value = db.get(key)
        if value is not None:
            parts.append(_U32.pack(len(key)) + _U32.pack(len(value)) + key + value)
    return _OK + _U32.pack(len(parts)) + b"".join(parts)


def _vsiz(server: TyrantServer, db: Database, r: _Reader) -> bytes:
    size = db.vsiz(r.read(r.u32()))
    return _FAIL if size < 0 else _OK + _U32.pack(size)


def _iterinit(server: TyrantServer, db: Database, r: _Reader) -> bytes:
    return _OK if db.iterinit() else _FAIL


def _iternext(server: TyrantServer, db: Database, r: _Reader) -> bytes:
    key = db.iternext()
    return _FAIL if key is None else _OK + _U32.pack(len(key)) + key


def _fwmkeys(server: TyrantServer, db: Database, r: _Reader) -> bytes:
    psiz = r.u32()
    max = r.i32()
    keys = db.fwmkeys(r.read(psiz), max)
    return _OK + _U32.pack(len(keys)) + b"".join(_U32.pack(len(k)) + k for k in keys)


def _addint(server: TyrantServer, db: Database, r: _Reader) -> bytes:
    ksiz = r.u32()
    num = r.i32()
    total = db.addint(r.read(ksiz), num)
    return _FAIL if total == _INT_MIN else _OK + _I32.pack(total)


def _adddouble(server: TyrantServer, db: Database, r: _Reader) -> bytes:
    ksiz = r.u32()
    integ = r.i64()
    fract = r.i64()
    total = db.adddouble(r.read(ksiz), integ + fract / 1e12)
    if total != total:  # NaN: failure
        return _FAIL
    whole = int(total)
    return _OK + _I64.pack(whole) + _I64.pack(round((total - whole) * 1e12))


def _sync(server: TyrantServer, db: Database, r: _Reader) -> bytes:
    return _OK if db.sync() else _FAIL


def _vanish(server: TyrantServer, db: Database, r: _Reader) -> bytes:
    return _OK if db.vanish() else _FAIL


def _rnum(server: TyrantServer, db: Database, r: _Reader) -> bytes:
    return _OK + _U64.pack(db.rnum())


def _size(server: TyrantServer, db: Database, r: _Reader) -> bytes:
    return _OK + _U64.pack(db.size())


def _stat(server: TyrantServer, db: Database, r: _Reader) -> bytes:
    # The lines ttserver sends, in its order (figures of this process where it reports
    # system figures it reads from /proc).
    now = time.time()
    lines = [
        ("version", VERSION),
        ("libver", "324"),
        ("protver", "0.91"),
        ("os", "Linux"),
        ("time", f"{now:.6f}"),
        ("pid", str(os.getpid())),
        ("sid", str(server.sid)),
    ]
    kind = db.kind()
    if kind is not None:
        lines.append(("type", kind))
    path = db.path()
    if path:
        lines.append(("path", path.decode("utf-8", "replace")))
    lines += [
        ("rnum", str(db.rnum())),
        ("size", str(db.size())),
        ("bigend", "0" if sys.byteorder == "little" else "1"),
        ("fd", "0"),
        ("loadavg", f"{os.getloadavg()[0]:.6f}"),
        *_system_figures(),
        ("ru_real", f"{now - server.started:.6f}"),
    ]
    with server.counts_lock:
        counts = dict(server.counts)
    lines += [(f"cnt_{name}", str(counts.get(code, 0))) for code, name in _COUNTED]
    lines += [(f"cnt_{name}_miss", str(counts.get(name, 0))) for name in ("put", "out", "get")]
    text = "".join(f"{k}\t{v}\n" for k, v in lines).encode("utf-8")
    return _OK + _U32.pack(len(text)) + text


def _system_figures() -> list[tuple[str, str]]:
    """Memory and CPU figures of this process, as ttserver reports its own."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            size, rss = (int(n) * page for n in f.read().split()[:2])
    except (OSError, ValueError):
        size = rss = 0
    return [
        ("memsize", str(size)),
        ("memrss", str(rss)),
        ("ru_user", f"{usage.ru_utime:.6f}"),
        ("ru_sys", f"{usage.ru_stime:.6f}"),
    ]


def _misc(server: TyrantServer, db: Database, r: _Reader) -> bytes:
    nsiz = r.u32(127)
    r.i32()  # options: this server keeps no update log
    argc = r.u32(_MAX_NUM)
    name = r.read(nsiz)
    args = [r.read(r.u32()) for _ in range(argc)]
    result = db.misc(name, args)
    elements = result or []
    body = b"".join(_U32.pack(len(e)) + e for e in elements)
    return (_OK if result is not None else _FAIL) + _U32.pack(len(elements)) + body


_COMMANDS: Final[dict[int, Callable[[TyrantServer, Database, _Reader], bytes]]] = {
    0x10: _put(0),
    0x11: _put(1),
    0x12: _put(2),
    0x20: _out,
    0x30: _get,
    0x31: _mget,
    0x38: _vsiz,
    0x50: _iterinit,
    0x51: _iternext,
    0x58: _fwmkeys,
    0x60: _addint,
    0x61: _adddouble,
    0x70: _sync,
    0x72: _vanish,
    0x80: _rnum,
    0x81: _size,
    0x88: _stat,
    0x90: _misc,
}
_COUNTED: Final = [
    (0x10, "put"),
    (0x11, "putkeep"),
    (0x12, "putcat"),
    (0x13, "putshl"),
    (0x18, "putnr"),
    (0x20, "out"),
    (0x30, "get"),
    (0x31, "mget"),
    (0x38, "vsiz"),
    (0x50, "iterinit"),
    (0x51, "iternext"),
    (0x58, "fwmkeys"),
    (0x60, "addint"),
    (0x61, "adddouble"),
    (0x68, "ext"),
    (0x70, "sync"),
    (0x71, "optimize"),
    (0x72, "vanish"),
    (0x73, "copy"),
    (0x74, "restore"),
    (0x78, "setmst"),
    (0x80, "rnum"),
    (0x81, "size"),
    (0x88, "stat"),
    (0x90, "misc"),
    (0xA0, "repl"),
]


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


class TyrantServer:
    """Serve one database until :meth:`stop` (from another thread or a signal)."""

    def __init__(self, dbname: str, host: str = "127.0.0.1", port: int = 1978) -> None:
        self.db = Database(dbname)
        self.commands = _COMMANDS
        self.started = time.time()
        self.sid = 0  # ttserver's default server id
        self.stopping = False
        self.counts: dict[int | str, int] = {}
        self.counts_lock = threading.Lock()
        handler = _Handler
        if port == 0 and host.startswith("/"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(host)
            self._server: socketserver.BaseServer = _UnixServer(host, handler)
            self.address = host
            self.port = 0
        else:
            if host not in ("127.0.0.1", "localhost", "::1"):
                raise ValueError(f"the test server listens on 127.0.0.1 only, not {host!r}")
            tcp = _TCPServer((host, port), handler)
            self._server = tcp
            self.address = f"{host}:{tcp.server_address[1]}"
            self.port = tcp.server_address[1]
        setattr(self._server, "tyrant", self)  # noqa: B010 - read by _Handler

    @contextlib.contextmanager
    def counting(self, code: int) -> Any:
        with self.counts_lock:
            self.counts[code] = self.counts.get(code, 0) + 1
        yield

    def miss(self, name: str) -> None:
        """Count a put, out or get that found nothing (``cnt_*_miss`` in stat)."""
        with self.counts_lock:
            self.counts[name] = self.counts.get(name, 0) + 1

    def serve_forever(self) -> None:
        try:
            self._server.serve_forever(poll_interval=0.05)
        finally:
            self._server.server_close()
            self.db.close()

    def stop(self) -> None:
        self.stopping = True
        self._server.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """``ttserver``-like command line (the options tests use)."""
    parser = argparse.ArgumentParser(prog="python -m pymodels.testing._tyrant_server")
    parser.add_argument("-host", default="127.0.0.1")
    parser.add_argument("-port", type=int, default=1978)
    parser.add_argument("-pid")
    parser.add_argument("-log")
    parser.add_argument("-thnum", type=int)  # accepted for ttserver compatibility
    parser.add_argument("dbname", nargs="?", default="*")
    options = parser.parse_args(argv)
    server = TyrantServer(options.dbname, options.host, options.port)

    def on_signal(signum: int, frame: object) -> None:
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if options.pid:
        with open(options.pid, "w", encoding="ascii") as f:
            f.write(f"{os.getpid()}\n")
    try:
        server.serve_forever()
    finally:
        if options.pid:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(options.pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())

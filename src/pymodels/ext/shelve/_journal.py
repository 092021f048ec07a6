"""The shelve backend's redo journal: CRC-checked frames of writes, appended before they apply.

A frame is ``MAGIC``, the payload's length and the CRC-32 of length and payload,
then the payload: one or more operations (set a key, delete a key, clear). A
frame is written with one ``pwrite`` at the journal's end and counts only when
whole: reading stops at the first frame that is short, has a bad magic or a bad
CRC (a torn tail left by a kill or a full disk), and the journal is cut back
there before anything is appended again. Every operation is idempotent, so
replaying a journal onto a state that already holds some of it gives the same
state (a checkpoint killed between its rename and its truncation is harmless).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterator
from typing import Any

#: Marks the start of every frame (a run of zeros never reads as a frame).
MAGIC = b"PMJ\x01"
_FRAME = struct.Struct("<4sII")  # magic, payload length, crc32(length + payload)
_LENGTH = struct.Struct("<I")
_SET = struct.Struct("<cII")  # b"S", key length, value length
_DELETE = struct.Struct("<cI")  # b"D", key length
CLEAR = b"C"

#: One operation as kept in memory: ("S", key, value), ("D", key, b"") or ("C", b"", b"").
Op = tuple[str, bytes, bytes]


def encode(ops: list[Op]) -> bytes:
    """The payload of one frame holding ``ops``."""
    parts: list[bytes] = []
    for kind, key, value in ops:
        if kind == "S":
            parts += (_SET.pack(b"S", len(key), len(value)), key, value)
        elif kind == "D":
            parts += (_DELETE.pack(b"D", len(key)), key)
        else:
            parts.append(CLEAR)
    return b"".join(parts)


def frame(payload: bytes) -> bytes:
    """``payload`` framed: magic, length, CRC."""
    length = _LENGTH.pack(len(payload))
    return _FRAME.pack(MAGIC, len(payload), zlib.crc32(payload, zlib.crc32(length))) + payload


def decode(payload: bytes) -> Iterator[Op]:
    """The operations of one (CRC-checked) payload."""
    at, end = 0, len(payload)
    while at < end:
        kind = payload[at : at + 1]
        if kind == b"S":
            _, klen, vlen = _SET.unpack_from(payload, at)
            at += _SET.size
            yield "S", payload[at : at + klen], payload[at + klen : at + klen + vlen]
            at += klen + vlen
        elif kind == b"D":
            _, klen = _DELETE.unpack_from(payload, at)
            at += _DELETE.size
            yield "D", payload[at : at + klen], b""
            at += klen
        elif kind == CLEAR:
            at += 1
            yield "C", b"", b""
        else:  # the CRC matched, so only a bug can get here
            raise ValueError(f"unknown journal operation {kind!r} at byte {at}")


def read(path: str) -> tuple[list[bytes], int, int]:
    """The whole frames of the journal at ``path``, where they end, and the file's size.

    A missing journal is an empty one. Bytes past the returned end are a torn
    tail (or damage): nothing after them is trusted.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], 0, 0
    payloads: list[bytes] = []
    at = 0
    while at + _FRAME.size <= len(data):
        magic, length, crc = _FRAME.unpack_from(data, at)
        start = at + _FRAME.size
        if magic != MAGIC or start + length > len(data):
            break
        payload = data[start : start + length]
        if zlib.crc32(payload, zlib.crc32(_LENGTH.pack(length))) != crc:
            break
        payloads.append(payload)
        at = start + length
    return payloads, at, len(data)


class Journal:
    """An open journal file: appends whole frames, cuts back what a failure left."""

    def __init__(self, path: str, *, size: int, sync: bool) -> None:
        self.path = path
        self.sync = sync
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(self.fd, size)  # drops a torn tail, if any
        except BaseException:
            os.close(self.fd)
            raise
        #: Bytes of whole frames: where the next frame goes.
        self.size = size

    def append(self, payload: bytes) -> None:
        """Write one frame at the end (and fsync it with ``sync``), or leave the journal as it was.

        On failure (a full disk, an I/O error) the journal is cut back to its
        previous end before the error propagates; if even that fails the
        error says so (``OSError`` with the journal's fate in its notes).
        """
        data = frame(payload)
        start = self.size
        try:
            written = 0
            while written < len(data):
                # A full disk can take part of the frame and refuse the rest.
                written += os.pwrite(self.fd, memoryview(data)[written:], start + written)
            if self.sync:
                os.fdatasync(self.fd)
        except BaseException as e:
            self.cut(start, e)
            raise
        self.size = start + len(data)

    def cut(self, size: int, cause: BaseException | None = None) -> None:
        """Cut the journal back to ``size`` bytes (shrinking needs no free space)."""
        try:
            os.ftruncate(self.fd, size)
        except OSError as e:
            if cause is not None:
                cause.add_note(f"and the journal {self.path} could not be cut back: {e}")
            raise
        self.size = size

    def flush(self) -> None:
        """fsync the journal (at close and checkpoints, whatever ``sync`` says)."""
        os.fsync(self.fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def apply(db: Any, ops: Iterator[Op] | list[Op], meta_key: bytes) -> int:
    """Apply ``ops`` to the dbm object ``db``; return how many were applied.

    ``clear`` deletes every key but the library's metadata key.
    """
    count = 0
    for kind, key, value in ops:
        if kind == "S":
            db[key] = value
        elif kind == "D":
            if key in db:
                del db[key]
        else:
            # keys(), not iteration: gdbm objects are not iterable.
            for old in [k for k in db.keys() if k != meta_key]:  # noqa: SIM118
                del db[old]
        count += 1
    return count

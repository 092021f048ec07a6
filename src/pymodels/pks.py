"""Generated primary keys: time-ordered, collision-free without coordination.

A pk is a ULID: 48 bits of milliseconds since the epoch then 80 random bits,
in Crockford's base32 (26 characters), so pks sort by creation time. Within one
millisecond a process increments the random part, which keeps its own pks
strictly increasing; across processes the 80 random bits make a collision
vanishingly unlikely, and storages still write generated pks with
insert-if-absent, retrying on the (astronomically rare) clash.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["new_pk", "new_pks"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last_ms = -1
_last_rand = 0


# Two Crockford characters per 10 bits: 13 table lookups encode a whole pk.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


def _encode(value: int) -> str:
    """26 Crockford base32 characters of a 128-bit value (two leading zero bits)."""
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in range(120, -10, -10)])


def new_pk() -> str:
    """A new ULID string (26 characters, time-ordered)."""
    global _last_ms, _last_rand
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            # Same (or a backwards-stepped) clock: stay monotonic in this process.
            ms = _last_ms
            rand = _last_rand + 1
            if rand >= 1 << 80:
                ms, rand = ms + 1, int.from_bytes(os.urandom(10), "big") >> 1
        else:
            # The top bit stays clear so increments within a millisecond cannot overflow.
            rand = int.from_bytes(os.urandom(10), "big") >> 1
        _last_ms, _last_rand = ms, rand
    return _encode(ms << 80 | rand)


def new_pks(count: int) -> list[str]:
    """``count`` new ULID strings at once, increasing, as ``count`` calls of :func:`new_pk` give.

    One clock reading and one reservation under the lock; then only the low
    bits change from one pk to the next, so their text is mostly reused.
    """
    global _last_ms, _last_rand
    if count <= 0:
        return []
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms, start = _last_ms, _last_rand + 1
        else:
            start = int.from_bytes(os.urandom(10), "big") >> 1
        if start + count <= 1 << 80:
            _last_ms, _last_rand = ms, start + count - 1
            return _encode_run(ms << 80 | start, count)
    # No room left in this millisecond's sequence (never in practice): one at a time.
    return [new_pk() for _ in range(count)]


def _encode_run(first: int, count: int) -> list[str]:
    # The last two characters hold the low 10 bits; the 24 before them change
    # only when those bits wrap, once per 1024 pks.
    out: list[str] = []
    value = first
    end = first + count
    while value < end:
        head = _encode(value)[:24]
        low = value & 1023
        run = min(end - value, 1024 - low)
        out.extend([head + _PAIRS[i] for i in range(low, low + run)])
        value += run
    return out


def _reset_after_fork() -> None:
    global _last_ms, _last_rand, _lock
    # A child must not continue its parent's sequence: both would emit equal pks.
    _lock = threading.Lock()
    _last_ms, _last_rand = -1, 0


os.register_at_fork(after_in_child=_reset_after_fork)

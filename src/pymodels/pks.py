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

__all__ = ["new_pk"]

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


def _reset_after_fork() -> None:
    global _last_ms, _last_rand, _lock
    # A child must not continue its parent's sequence: both would emit equal pks.
    _lock = threading.Lock()
    _last_ms, _last_rand = -1, 0


os.register_at_fork(after_in_child=_reset_after_fork)

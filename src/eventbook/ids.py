"""Event ids: UUIDv7 strings, unique across processes and sortable by time.

An id is fixed when an event is published (a millisecond timestamp and a per-process
sequence number) but only rendered as text when something reads it: the in-process
broker often delivers an event without anyone looking at its id.
"""

from __future__ import annotations

import itertools
import os
import time

_SEQ_MASK = (1 << 26) - 1


def _new_node() -> int:
    return int.from_bytes(os.urandom(6), "big")


# 48 random bits per process (re-drawn in a forked child) keep two processes apart;
# the sequence keeps one process's ids distinct and ordered within a millisecond.
_node = _new_node()
_sequence = itertools.count()


def _reseed_after_fork() -> None:
    global _node, _sequence
    _node = _new_node()
    _sequence = itertools.count()


os.register_at_fork(after_in_child=_reseed_after_fork)


def next_sequence() -> int:
    """Return this process's next sequence number (with the millisecond, it fixes an id)."""
    return next(_sequence)


def stamp() -> tuple[int, int]:
    """Return the (unix milliseconds, sequence) pair that fixes a new id."""
    return time.time_ns() // 1_000_000, next(_sequence)


def render(ms: int, seq: int) -> str:
    """Return the UUIDv7 text of an id fixed by `stamp()`."""
    seq &= _SEQ_MASK
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (seq >> 14) << 64
        | 0b10 << 62
        | (seq & 0x3FFF) << 48
        | _node
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_id() -> str:
    """Return a new UUIDv7 string."""
    return render(*stamp())

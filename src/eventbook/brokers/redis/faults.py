"""Which failures of the server or the network are passing, and how long to wait them out."""

from __future__ import annotations

from redis.exceptions import ConnectionError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Worth trying again: the server restarts, loads its data, fails over, or the network
#: drops. Reconnecting is implicit: the next command on a closed connection opens it.
TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionError,  # also BusyLoadingError: a restarted server still reading its AOF
    RedisTimeoutError,
    TimeoutError,  # our own deadline on one command
    OSError,
    ReadOnlyError,  # a replica, just after a failover
)


def backoff(failures: int) -> float:
    """Seconds to wait after `failures` failures in a row: 0.05 doubling up to 2."""
    return float(min(2.0, 0.05 * 2 ** min(failures - 1, 10)))


#: Failures a background duty logs and outlives (the server refused, or is away).
SURVIVABLE: tuple[type[BaseException], ...] = (*TRANSIENT, RedisError)

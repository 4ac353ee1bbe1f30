"""A connection of one's own, for a duty that sends one command (or pair) at a time.

The publisher, each consumer's reader and each consumer's acker own one: no pool
to borrow from per command. redis-py opens it (address, AUTH, SELECT, client
name); commands are packed and replies parsed here, for the few shapes this broker
sends and reads. Reading a hundred entries with redis-py's pure-Python parser means
about eight awaited reads per entry; here it is one synchronous pass over the bytes
received. A lost connection is opened again by the next command.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import (
    BusyLoadingError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

#: Error replies a caller tells apart, by their code (the reply's first word).
_ERRORS: dict[str, type[ResponseError] | type[RedisConnectionError]] = {
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,
    "READONLY": ReadOnlyError,
    "OOM": OutOfMemoryError,
}


def pack(*args: bytes | str | int) -> bytes:
    """One command in the Redis protocol (RESP)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


class _Incomplete(Exception):
    """The buffer ends inside a reply: read more."""


_INCOMPLETE = _Incomplete()


def parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """One RESP2 reply starting at `pos`: (value, position after it).

    Bulk strings are bytes, integers int, nil None, and an error reply is returned
    as the exception to raise (redis-py's class for the codes callers tell apart).

    Raises:
        _Incomplete: the reply is not all in `buf` yet.
    """
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _INCOMPLETE
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        size = int(buf[pos + 1 : end])
        if size < 0:
            return None, end + 2
        start = end + 2
        stop = start + size
        if stop + 2 > len(buf):
            raise _INCOMPLETE
        return buf[start:stop], stop + 2
    if kind == 42:  # * array
        count = int(buf[pos + 1 : end])
        if count < 0:
            return None, end + 2
        items: list[Any] = []
        pos = end + 2
        size_of = len(buf)
        for _ in range(count):
            if pos >= size_of:
                raise _INCOMPLETE
            if buf[pos] != 36:
                item, pos = parse(buf, pos)
                items.append(item)
                continue
            # A bulk string, read here: most elements are (entry ids, fields, bodies).
            end = buf.find(b"\r\n", pos)
            if end < 0:
                raise _INCOMPLETE
            size = int(buf[pos + 1 : end])
            if size < 0:
                items.append(None)
                pos = end + 2
                continue
            start = end + 2
            pos = start + size + 2
            if pos > size_of:
                raise _INCOMPLETE
            items.append(buf[start : pos - 2])
        return items, pos
    if kind == 58:  # : integer
        return int(buf[pos + 1 : end]), end + 2
    if kind == 43:  # + simple string
        return buf[pos + 1 : end], end + 2
    if kind == 45:  # - error
        text = buf[pos + 1 : end].decode("utf-8", "replace")
        code, _, rest = text.partition(" ")
        error = _ERRORS.get(code)
        return (error(rest) if error else ResponseError(text)), end + 2
    raise RedisConnectionError(f"unexpected reply from the server: {buf[pos:end][:50]!r}")


class Line:
    """One connection taken from the pool for good, commands sent over it in order."""

    __slots__ = ("_buffer", "_conn", "_pool", "_stream")

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._conn: Any = None
        self._stream: Any = None  # the connection's StreamReader the buffer came from
        self._buffer = b""

    async def execute_command(self, *args: Any) -> Any:
        """Send one command and return its reply (RESP2, undecoded)."""
        await self.send(pack(*args))
        return await self.reply()

    async def send(self, packed: bytes) -> None:
        if self._conn is None:
            self._conn = await self._pool.get_connection()
        conn = self._conn
        if not conn.is_connected:
            await conn.connect()
        if conn._reader is not self._stream:  # (re)connected: nothing left of the old one
            self._stream, self._buffer = conn._reader, b""
        await conn.send_packed_command(packed, False)

    async def reply(self) -> Any:
        """Read the next reply.

        Raises:
            ResponseError: the server answered with an error.
            redis.exceptions.ConnectionError: the connection was lost.
        """
        try:
            while True:
                try:
                    value, used = parse(self._buffer, 0)
                    break
                except _Incomplete:
                    data = await self._stream.read(65536)
                    if not data:
                        raise RedisConnectionError("Connection closed by server.") from None
                    self._buffer += data
        except BaseException:
            await self.reset()  # a reply half read: the connection is of no more use
            raise
        self._buffer = self._buffer[used:]
        if isinstance(value, Exception):
            raise value
        return value

    async def reset(self) -> None:
        """Drop the connection (after an error or a cancel: a reply may be unread)."""
        self._buffer = b""
        self._stream = None
        if self._conn is not None:
            await self._conn.disconnect()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.disconnect()
            await self._pool.release(self._conn)
            self._conn = None

"""What the NATS tests share: the local server's URL, and tidying up after a test.

Tests run on the machine's shared server, so each one deletes the streams its
books created (a book's events stream and its dead-letter stream; deleting a
stream deletes its consumers). Books are unique per test, so nothing else is touched.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from eventbook.brokers.nats import NatsBroker, names
from tests.conftest import server

URL = "nats://127.0.0.1:4222"
NATS_SERVER = "/usr/sbin/nats-server"


def local_server() -> str:
    """The shared server's URL; skips (fails in CI) when it is not running."""
    server("NATS", 4222)
    return URL


class Created:
    """The books whose `NatsBroker`s this test connected (so whose streams may exist)."""

    def __init__(self) -> None:
        self.books: set[str] = set()

    def watch(self, monkeypatch: pytest.MonkeyPatch) -> Created:
        connect = NatsBroker.connect

        async def recording_connect(broker: NatsBroker) -> None:
            self.books.add(broker.namespace)
            await connect(broker)

        monkeypatch.setattr(NatsBroker, "connect", recording_connect)
        return self

    async def delete(self, url: str = URL) -> None:
        await delete_books(url, self.books)


async def delete_books(url: str, books: set[str]) -> None:
    """Delete the books' streams (and with them their consumers)."""
    async with client(url) as nc:
        js = nc.jetstream()
        for book in sorted(books):
            for stream in (names.stream(book), names.dead_stream(book)):
                with suppress(NotFoundError):
                    await js.delete_stream(stream)


@asynccontextmanager
async def client(url: str = URL) -> AsyncIterator[Client]:
    """A plain nats-py connection (no eventbook), closed on the way out."""
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        yield nc
    finally:
        await nc.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A nats-server of a test's own (not the shared one), on `port`, storing in `store`."""

    def __init__(self, port: int, store: Path) -> None:
        self.port, self.store = port, store
        self.log = store.parent / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, jetstream: bool = True) -> None:
        """Start it (again, on the same port and store); skips if nats-server is missing."""
        if not Path(NATS_SERVER).exists():
            pytest.skip(f"{NATS_SERVER} is not installed here")
        args = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port)]
        if jetstream:
            args += ["-js", "-sd", str(self.store)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    async def ready(self) -> bool:
        """True once the server accepts connections (JetStream is waited for by connect)."""
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=30)

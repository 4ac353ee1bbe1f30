"""A Redis server killed with SIGKILL and restarted while events flow loses none of them.

Acceptance: "a test starts its own server process (a second instance on a free
port, persistence on, so the machine's shared server is left alone), kills and
restarts it while events flow: every event whose publish was confirmed is
handled, 0 lost".

The server runs with the durable setting the redis:// broker documents:
`appendonly yes` + `appendfsync always` (it answers a write only once it is in
the append-only file, fsynced), data in tmp_path, and it is killed hard.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

import eventbook as eb
from eventbook.errors import BrokerError
from eventbook.testing import eventually
from tests.conftest import IN_CI

pytestmark = [pytest.mark.redis, pytest.mark.slow]

EVENTS = 3000
KILL_AFTER = (700, 1900)  # confirmed publishes before each kill
WINDOW = 20  # publishes awaited together


class Work(eb.Event):
    n: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A redis-server process of this test's own, durable, its data in `folder`."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        log = (self.folder / f"redis-{self.runs}.log").open("wb")
        with log:
            self.proc = subprocess.Popen(
                [
                    "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                    "--dir", str(self.folder), "--appendonly", "yes",
                    "--appendfsync", "always", "--save", "",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    async def answering(self) -> bool:
        """True once the server answers PING (it has loaded its data)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return await reader.readline() == b"+PONG\r\n"
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def kill(self) -> None:
        """SIGKILL, and reap: when this returns, the process is gone."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=30)


@pytest.fixture
def redis_server(tmp_path: Path) -> RedisServer:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed here"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return RedisServer(tmp_path, free_port())


async def test_sigkilled_server_loses_no_confirmed_event(redis_server: RedisServer) -> None:
    server = redis_server
    url = f"redis://127.0.0.1:{server.port}/0"
    book = eb.EventBook("restart")
    topic = book.topic("work", Work)
    handled: list[int] = []
    confirmed: list[int] = []
    refused: list[tuple[int, str]] = []

    @eb.sub(topic)
    async def work(item: Work) -> None:
        handled.append(item.n)

    async def publish(n: int) -> None:
        try:
            await book.publish(topic, Work(n=n))
        except BrokerError as exc:  # not confirmed: not owed
            refused.append((n, str(exc)))
            return
        confirmed.append(n)

    async def publish_all() -> None:
        # In windows: a whole batch is in one script call when the server dies.
        for lo in range(0, EVENTS, WINDOW):
            await asyncio.gather(*(publish(n) for n in range(lo, min(lo + WINDOW, EVENTS))))

    def seen() -> set[int]:
        return set(handled)

    try:
        server.start()
        await eventually(server.answering, 30)
        async with book.start(url):
            publisher = asyncio.create_task(publish_all())
            for at in KILL_AFTER:
                # Events flow: published, and some handled, when the server dies.
                await eventually(lambda at=at: len(confirmed) >= at and bool(handled), 60)
                server.kill()
                killed_at = len(confirmed)
                server.start()
                await eventually(server.answering, 30)
                print(f"killed the server after {killed_at} confirmed publishes")
            await asyncio.wait_for(publisher, 120)
            await eventually(lambda: seen() >= set(confirmed), 60)
    finally:
        server.stop()

    lost = sorted(set(confirmed) - seen())
    duplicates = len(handled) - len(seen())
    print(
        f"\nevents={EVENTS} confirmed={len(confirmed)} refused={len(refused)} "
        f"handled={len(seen())} duplicates={duplicates} lost={len(lost)} "
        f"server runs={server.runs}"
    )
    assert lost == []
    assert server.runs == 1 + len(KILL_AFTER)
    # Every publish retried through the outage (publish_timeout is 30 s).
    assert refused == []

"""The NATS server killed (SIGKILL) and restarted while events flow: none is lost.

Acceptance: "For each broker a test starts its own server process (a second
instance on a free port, persistence on, so the machine's shared server is left
alone), kills and restarts it while events flow: every event whose publish was
confirmed is handled, 0 lost."

The server is `nats-server -js -sd <tmp>`: JetStream with file storage in the
test's folder. A single server writes each message to its file before it sends
the PubAck, so a confirmed event survives SIGKILL (the data is in the operating
system's hands; surviving a power loss would take an fsync, `sync_interval`).

A publisher keeps `IN_FLIGHT` publishes going at once, and kills the server
right when a confirm arrives, so that others are unconfirmed at each kill. At the
first kill a consumer (a second connection of the same book) is handling the
events as they come; before the second kill it stops, so that hundreds of
confirmed events wait in the stream, unconsumed, when the server dies. After each
kill the server restarts on the same port and store once the client saw the
connection go. Publishes whose confirm the kill swallowed are sent again with the
same `Nats-Msg-Id`; consumers ask for their events again after the reconnect; an
event whose ack the kill lost comes back after `ack_wait` (short here).
Duplicates are allowed (at least once) and counted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import pytest

import eventbook as eb
from eventbook.errors import BrokerError
from eventbook.testing import eventually
from tests._nats import Server, free_port

pytestmark = [pytest.mark.nats, pytest.mark.slow]

EVENTS = 1500
IN_FLIGHT = 25  # publishes awaited at once
KILLS_AT = (400, 1000)  # confirmed events before each kill
CONSUMER_STOPS_AT = 600  # confirmed events before the consumer stops, until the end


class Work(eb.Event):
    n: int


async def test_a_killed_server_loses_no_confirmed_event(tmp_path: Path) -> None:
    server = Server(free_port(), tmp_path / "store")
    server.start()
    try:
        await eventually(server.ready, 30)
        await run_through_kills(server, f"nats://127.0.0.1:{server.port}?ack_wait=2")
    finally:
        server.stop()


def books(name: str, handled: list[int]) -> tuple[eb.EventBook, eb.EventBook]:
    """The same book twice: to publish (in this process), and to consume."""
    publisher, consumer = eb.EventBook(name), eb.EventBook(name)
    for book in (publisher, consumer):
        work = book.topic("work", Work)

        @book.service
        class Worker:
            @eb.sub(work)
            async def handle(self, item: Work) -> None:
                handled.append(item.n)

    return publisher, consumer


async def run_through_kills(server: Server, url: str) -> None:
    handled: list[int] = []
    publisher, consumer = books(f"restart-{uuid.uuid4().hex[:8]}", handled)
    work = publisher.topics["work"]
    confirmed: set[int] = set()
    failed: list[str] = []
    unconfirmed_at_kills: list[int] = []
    kills = list(KILLS_AT)
    slots = asyncio.Semaphore(IN_FLIGHT)
    started = 0

    async def publish(n: int) -> None:
        try:
            await publisher.publish(work, Work(n=n))
        except BrokerError as exc:  # not confirmed: allowed to be lost
            failed.append(str(exc))
        else:
            confirmed.add(n)
            if kills and len(confirmed) >= kills[0]:
                # Right here, with the other publishes of the window still in flight.
                kills.pop(0)
                unconfirmed_at_kills.append(started - len(confirmed) - len(failed))
                server.kill()
        finally:
            slots.release()

    async def flow() -> None:
        nonlocal started
        tasks = []
        for n in range(EVENTS):
            await slots.acquire()
            tasks.append(asyncio.create_task(publish(n)))
            started += 1
        await asyncio.gather(*tasks)

    async def restart_after_kill(kill: int) -> None:
        await eventually(lambda: len(unconfirmed_at_kills) > kill, 60)
        # Restarted once the client saw the connection go: publishes wait meanwhile.
        await eventually(lambda: not connection.is_connected, 30)
        server.start()

    async with publisher.start(url, services=[]):
        connection = publisher._running().broker.nc  # type: ignore[attr-defined]
        consuming = consumer.start(url)
        await consuming.__aenter__()
        publishing = asyncio.create_task(flow())
        await restart_after_kill(0)
        await eventually(lambda: len(confirmed) >= CONSUMER_STOPS_AT, 60)
        await consuming.__aexit__(None, None, None)
        backlog_from = len(set(handled))
        await restart_after_kill(1)
        await asyncio.wait_for(publishing, 120)
        async with consumer.start(url):
            await eventually(lambda: confirmed <= set(handled), 60)
    lost = confirmed - set(handled)
    duplicates = sum(count - 1 for count in Counter(handled).values())
    print(
        f"events={EVENTS} kills={len(KILLS_AT)} unconfirmed at the kills={unconfirmed_at_kills} "
        f"waiting unconsumed at the second kill>={KILLS_AT[1] - backlog_from} "
        f"confirmed={len(confirmed)} unconfirmed={len(failed)} duplicates={duplicates} "
        f"lost={len(lost)}"
    )
    assert not lost
    assert len(confirmed) + len(failed) == EVENTS

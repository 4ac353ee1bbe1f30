"""The contract on `nats://`: NATS JetStream, on the machine's shared server.

After the contract, what is specific to NATS: the documented names of streams,
subjects and consumers; reply consumers that do not outlive their process;
events a draining replica had received but not started go back at once (not
after `ack_wait`); a replayed dead letter reaches only its own handler (it is
published on the topic again); clear errors when the server is down, has no
JetStream, or a stream name is taken; the URL's parameters.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import eventbook as eb
from eventbook.brokers.nats import NatsSettings
from eventbook.errors import BrokerError, ConfigurationError
from eventbook.testing import eventually
from eventbook.testing.contract import Item, WireBrokerContract, dead_letter_count
from tests._nats import Created, Server, client, free_port, local_server

pytestmark = pytest.mark.nats


class TestNatsBroker(WireBrokerContract):
    @pytest.fixture
    async def broker_url(self, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
        url = local_server()
        created = Created().watch(monkeypatch)
        yield url
        await created.delete(url)

    def fast_redelivery(self, url: str) -> str:
        # A killed consumer stops renewing its claim; the server redelivers after ack_wait.
        return f"{url}?ack_wait=1"


@pytest.fixture
async def url(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    url = local_server()
    created = Created().watch(monkeypatch)
    yield url
    await created.delete(url)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def test_channels_are_named_as_documented(url: str) -> None:
    book = eb.EventBook(unique("acme.shop"))
    signups = book.topic("customer.signup", Item)
    stream = book.name.replace(".", "_")

    @book.service
    class MailService:
        @eb.sub(signups)
        async def send(self, item: Item) -> None:
            pass

    async with book.start(url), client(url) as nc:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        consumers = {c.name: c.config for c in await js.consumers_info(stream)}
        dead = await js.stream_info(f"{stream}_dead")
    assert info.config.subjects == [f"{book.name}.>"]
    assert info.config.retention == "interest"
    assert info.config.storage == "file"
    send = consumers["MailService_send@customer_signup"]
    assert send.filter_subject == f"{book.name}.customer.signup"
    assert send.durable_name == "MailService_send@customer_signup"
    assert send.ack_policy == "explicit"
    # While running, this process's reply channel has a consumer of its own too.
    assert len(consumers) == 2
    assert dead.config.subjects == [f"_eventbook.dead.{stream}.>"]
    assert dead.config.retention == "limits"
    # Stopped: the reply consumer is gone, the handler's durable consumer stays.
    async with client(url) as nc:
        left = [c.name for c in await nc.jetstream().consumers_info(stream)]
    assert left == ["MailService_send@customer_signup"]


async def test_a_draining_replica_gives_back_what_it_did_not_start(url: str) -> None:
    name = unique("drain")
    gate = asyncio.Event()
    seen: dict[str, list[tuple[int, int]]] = {"first": [], "second": []}

    class Attempts(eb.Observer):
        def __init__(self, who: str) -> None:
            self.who = who

        def handled(self, handler: Any, envelope: eb.Envelope, attempt: int) -> None:
            seen[self.who].append((envelope.data.n, attempt))

    def replica(who: str) -> eb.EventBook:
        book = eb.EventBook(name)
        items = book.topic("items", Item)
        book.observe(Attempts(who))

        @book.service
        class Worker:
            @eb.sub(items)
            async def work(self, item: Item) -> None:
                if who == "first":
                    await gate.wait()

        return book

    first, second = replica("first"), replica("second")
    leaving: asyncio.Task[None] | None = None
    started = first.start(url, drain_timeout=30)
    await started.__aenter__()
    try:
        for n in range(5):
            await first.publish(first.topics["items"], Item(n=n))
        # The first replica holds event 0 in its handler and has received 1..4.
        async with second.start(url):
            leaving = asyncio.create_task(started.__aexit__(None, None, None))
            # Given back at once: much sooner than ack_wait (30 s) would bring them.
            await eventually(lambda: len(seen["second"]) == 4, 10)
            gate.set()
            await leaving
    finally:
        gate.set()
        if leaving is None:
            await started.__aexit__(None, None, None)
    assert seen["first"] == [(0, 1)]
    # A NAK counts as a delivery on NATS: the next replica sees attempt 2.
    assert sorted(seen["second"]) == [(n, 2) for n in range(1, 5)]


async def test_an_unreachable_server_is_a_clear_error_at_once() -> None:
    book = eb.EventBook(unique("down"))
    began = time.monotonic()
    with pytest.raises(BrokerError) as raised:
        async with book.start(f"nats://bob:s3cret@127.0.0.1:{free_port()}?connect_timeout=1"):
            pass
    assert time.monotonic() - began < 10
    message = str(raised.value)
    assert "cannot connect to NATS at nats://bob:***@127.0.0.1:" in message
    assert "s3cret" not in message


async def test_a_server_without_jetstream_is_a_clear_error(tmp_path: Path) -> None:
    server = Server(free_port(), tmp_path / "store")
    server.start(jetstream=False)
    try:
        await eventually(server.ready, 30)
        book = eb.EventBook(unique("nojs"))
        with pytest.raises(BrokerError, match="start nats-server with -js"):
            async with book.start(f"nats://127.0.0.1:{server.port}?connect_timeout=1"):
                pass
    finally:
        server.stop()


async def test_books_whose_streams_clash_are_refused(url: str) -> None:
    suffix = uuid.uuid4().hex[:10]
    async with eb.EventBook(f"x.y-{suffix}").start(url):
        # The same stream name ('.' becomes '_'), for other subjects.
        with pytest.raises(ConfigurationError, match="another book"):
            async with eb.EventBook(f"x_y-{suffix}").start(url):
                pass
        # Subjects inside the first book's: x.y-<suffix>.eu.> is in x.y-<suffix>.>.
        with pytest.raises(ConfigurationError, match="nest at a dot"):
            async with eb.EventBook(f"x.y-{suffix}.eu").start(url):
                pass


async def test_a_replayed_dead_letter_goes_to_its_handler_only(url: str) -> None:
    book = eb.EventBook(unique("replay"))
    items = book.topic("items", Item)
    healthy = False
    seen: dict[str, list[int]] = {"audit": [], "ship": []}

    @eb.sub(items)
    async def audit(item: Item) -> None:
        seen["audit"].append(item.n)

    @eb.sub(items, retries=0)
    async def ship(item: Item) -> None:
        if not healthy:
            raise RuntimeError("the warehouse is closed")
        seen["ship"].append(item.n)

    async with book.start(url):
        await book.publish(items, Item(n=7))
        await eventually(lambda: dead_letter_count(book, 1), 10)
    healthy = True
    # Started anew, so that no handler remembers event 7 (the process-local inbox).
    async with book.start(url):
        assert await book.replay() == 1
        await eventually(lambda: seen["ship"] == [7], 10)
        # A marker event behind the replay: once audit has it, it has seen the replay too.
        await book.publish(items, Item(n=8))
        await eventually(lambda: seen["audit"] == [7, 8], 10)
        await eventually(lambda: seen["ship"] == [7, 8], 10)
        assert await book.dead_letters() == []


def test_url_parameters_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="unknown nats:// parameter"):
        NatsSettings.from_url("nats://127.0.0.1:4222?ackwait=1")
    with pytest.raises(ConfigurationError, match="bad nats:// parameter") as raised:
        NatsSettings.from_url("nats://bob:s3cret@127.0.0.1:4222?prefetch=many")
    assert "s3cret" not in str(raised.value)
    with pytest.raises(ConfigurationError, match="duplicate_window > publish_timeout"):
        NatsSettings.from_url("nats://127.0.0.1?publish_timeout=300")
    settings = NatsSettings.from_url("nats://bob:s3cret@example.org:4333?ack_wait=2&prefetch=10")
    assert (settings.server, settings.ack_wait, settings.prefetch) == (
        "nats://bob:s3cret@example.org:4333",
        2.0,
        10,
    )

"""The contract on `redis://`: Redis Streams, on the local server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio

from eventbook import sub
from eventbook.brokers.redis import RedisBroker
from eventbook.errors import BrokerError, ConfigurationError
from eventbook.testing import Recorder, eventually
from eventbook.testing.contract import (
    DEADLINE,
    Item,
    WireBrokerContract,
    dead_letter_count,
    unique_book,
)
from tests._redis import Created, local_server

pytestmark = pytest.mark.redis


class TestRedisBroker(WireBrokerContract):
    @pytest.fixture
    def broker_url(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
        url = local_server()
        created = Created().watch(monkeypatch)
        # A small prefetch: replicas share even a short burst of events.
        yield f"{url}?prefetch=10"
        asyncio.run(created.delete(url))

    def fast_redelivery(self, url: str) -> str:
        return f"{url}&lease=1"


# -- what is specific to Redis ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_an_unreachable_server_is_a_prompt_error_that_hides_the_password() -> None:
    broker = RedisBroker(f"redis://:hunter2@127.0.0.1:{free_port()}/0", "nowhere")
    with pytest.raises(BrokerError, match="cannot reach the Redis server") as caught:
        await broker.connect()
    assert "redis://:***@127.0.0.1:" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    await broker.close()


def test_an_unknown_parameter_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown redis:// parameter\(s\) lese") as caught:
        RedisBroker("redis://:hunter2@127.0.0.1:6379/0?lese=3", "book")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="dedupe must be 0"):
        RedisBroker("redis://127.0.0.1:6379/0?dedupe=5", "book")


async def test_a_publish_sent_again_is_appended_once(monkeypatch: pytest.MonkeyPatch) -> None:
    url = local_server()
    created = Created().watch(monkeypatch)
    book = unique_book("redis")
    topic = book.topic("items", Item)
    try:
        async with book.start(url):
            broker = book._running().broker
            envelope, body = book._running().wrap(topic, Item(n=1), None, None)
            await broker.publish(envelope, body)
            await broker.publish(envelope, body)  # as if the first confirmation was lost
            assert isinstance(broker, RedisBroker)
            assert await broker.client.execute_command("XLEN", f"{book.name}.items") == 1
    finally:
        await created.delete(url)


async def test_dead_letters_from_a_connection_that_consumes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = local_server()
    created = Created().watch(monkeypatch)
    book = unique_book("redis")
    topic = book.topic("items", Item)
    recorder = book.observe(Recorder())
    assert isinstance(recorder, Recorder)
    healthy = False

    @sub(topic, retries=0)
    async def fragile(item: Item) -> None:
        if not healthy:
            raise ValueError(f"cannot take item {item.n}")

    try:
        async with book.start(url):
            await book.publish(topic, Item(n=1))
            await book.publish(topic, Item(n=2))
            await eventually(lambda: dead_letter_count(book, 2), DEADLINE)

        tool = RedisBroker(url, book.name)  # what `eventbook dlq` opens
        await tool.connect()
        try:
            letters = await tool.dead_letters()
            assert [(d.topic, d.handler, d.reason, d.attempts) for d in letters] == [
                ("items", "fragile", "failed", 1),
                ("items", "fragile", "failed", 1),
            ]
            assert all(isinstance(d.id, str) and d.event_id for d in letters)
            assert await tool.replay([letters[0].id]) == 1
            assert [d.id for d in await tool.dead_letters()] == [letters[1].id]
        finally:
            await tool.close()

        healthy = True
        async with book.start(url):
            # Back to its handler as a first attempt; the other one stays a dead letter.
            await eventually(lambda: len(recorder.deliveries) == 1, DEADLINE)
            [(handler, envelope, attempt)] = recorder.deliveries
            assert (handler, envelope.data, attempt) == ("fragile", Item(n=1), 1)
            assert await book.purge() == 1
            assert await book.dead_letters() == []
    finally:
        await created.delete(url)


async def test_reply_channels_go_and_consumed_entries_are_trimmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = local_server()
    created = Created().watch(monkeypatch)
    book = unique_book("redis")
    topic = book.topic("items", Item)
    seen: set[int] = set()

    @sub(topic)
    async def collect(item: Item) -> None:
        seen.add(item.n)

    stream = f"{book.name}.items"
    try:
        async with book.start(f"{url}?trim=0.05"):
            broker = book._running().broker
            assert isinstance(broker, RedisBroker)
            client = broker.client
            replies = [key async for key in _scan(client, f"{book.name}._reply.*")]
            assert len(replies) == 1  # this process's reply channel, while it runs
            for n in range(500):
                await book.publish(topic, Item(n=n))
            await eventually(lambda: len(seen) == 500, DEADLINE)

            async def trimmed() -> bool:
                return int(await client.execute_command("XLEN", stream)) < 500

            await eventually(trimmed, DEADLINE)
        probe = redis.asyncio.Redis.from_url(url)
        try:
            assert await probe.exists(*replies) == 0
            assert await probe.exists(stream) == 1
        finally:
            await probe.aclose()
    finally:
        await created.delete(url)


async def _scan(client: Any, pattern: str) -> AsyncIterator[bytes]:
    cursor = 0
    while True:
        cursor, keys = await client.execute_command("SCAN", cursor, "MATCH", pattern)
        for key in keys:
            yield key
        if int(cursor) == 0:
            return

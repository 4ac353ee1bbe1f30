"""What the RabbitMQ tests share: the local server's URL, and tidying up after a test.

Tests run on the machine's shared server, so each one deletes the exchanges and
queues its books created (they are named after the books, which are unique).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import aio_pika
import pytest

from eventbook.brokers.rabbitmq import RabbitBroker
from tests.conftest import server

URL = "amqp://guest:guest@127.0.0.1:5672/"


def local_server() -> str:
    """The shared server's URL; skips (fails in CI) when it is not running."""
    server("RabbitMQ", 5672)
    return URL


class Created:
    """The books (and their groups' queues) that `RabbitBroker`s of this test set up."""

    def __init__(self) -> None:
        self.books: set[str] = set()
        self.queues: set[str] = set()

    def watch(self, monkeypatch: pytest.MonkeyPatch) -> Created:
        connect, declare = RabbitBroker.connect, RabbitBroker.declare

        async def recording_connect(broker: RabbitBroker) -> None:
            self.books.add(broker.namespace)
            await connect(broker)

        async def recording_declare(broker: RabbitBroker, group: str, topic: str) -> None:
            self.queues.add(broker.queue_name(group))
            await declare(broker, group, topic)

        monkeypatch.setattr(RabbitBroker, "connect", recording_connect)
        monkeypatch.setattr(RabbitBroker, "declare", recording_declare)
        return self

    async def delete(self, url: str = URL) -> None:
        await delete(url, books=self.books, queues=self.queues)


async def delete(url: str, *, books: Iterable[str], queues: Iterable[str] = ()) -> None:
    """Delete the books' exchanges, dead-letter queues and the given queues."""
    books = set(books)
    async with channel(url) as ch:
        for name in sorted({*queues, *(f"{book}.dead-letters" for book in books)}):
            await ch.queue_delete(name)
        for book in sorted(books):
            await ch.exchange_delete(book)


@asynccontextmanager
async def channel(url: str = URL) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain aio-pika channel (no eventbook), closed on the way out."""
    connection = await aio_pika.connect(url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()

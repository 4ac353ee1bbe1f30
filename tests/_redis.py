"""What the Redis tests share: the local server's URL, and tidying up after a test.

Tests run on the machine's shared server, so each one deletes the keys its books
created: a book's streams are `<book>.<topic>` and its own keys `<book>:...` (dead
letters, retry schedules, dedupe keys). Books are unique per test, so nothing else
is touched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest
import redis.asyncio

from eventbook.brokers.redis import RedisBroker
from tests.conftest import server

URL = "redis://127.0.0.1:6379/0"


def local_server() -> str:
    """The shared server's URL; skips (fails in CI) when it is not running."""
    server("Redis", 6379)
    return URL


class Created:
    """The books whose `RedisBroker`s this test connected (so whose keys may exist)."""

    def __init__(self) -> None:
        self.books: set[str] = set()

    def watch(self, monkeypatch: pytest.MonkeyPatch) -> Created:
        connect = RedisBroker.connect

        async def recording_connect(broker: RedisBroker) -> None:
            self.books.add(broker.namespace)
            await connect(broker)

        monkeypatch.setattr(RedisBroker, "connect", recording_connect)
        return self

    async def delete(self, url: str = URL) -> None:
        await delete_books(url, self.books)


async def delete_books(url: str, books: Iterable[str]) -> None:
    """Delete every key of these books."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        for book in sorted(books):
            glob = re.sub(r"([*?\[\]\\])", r"\\\1", book)
            for pattern in (f"{glob}.*", f"{glob}:*"):
                keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
                if keys:
                    await client.delete(*keys)
    finally:
        await client.aclose()

"""Another program on Redis reads eventbook's events, and writes events eventbook handles.

The documented channel: topic `T` of book `B` is the stream `B.T`, the CloudEvent's
structured JSON in each entry's field `event`. The other program here is a raw
redis-py client with the official CloudEvents SDK (`cloudevents` 2.x: the v1
`CloudEvent` and its `JSONFormat`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

import eventbook as eb
from eventbook.testing import eventually
from tests._redis import delete_books, local_server

pytestmark = pytest.mark.redis


class Order(eb.Event):
    sku: str
    quantity: int


@pytest.fixture
async def book() -> AsyncIterator[eb.EventBook]:
    local_server()
    book = eb.EventBook(f"interop-{uuid.uuid4().hex[:10]}")
    yield book
    await delete_books(local_server(), [book.name])


@pytest.fixture
async def raw() -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(local_server())
    yield client
    await client.aclose()


async def test_a_raw_client_reads_what_eventbook_publishes(
    book: eb.EventBook, raw: redis.asyncio.Redis
) -> None:
    orders = book.topic("order.placed", Order)
    stream = f"{book.name}.order.placed"
    # The other program's own consumer group, created before eventbook publishes.
    await raw.xgroup_create(stream, "billing", id="$", mkstream=True)

    async with book.start(local_server()):
        envelope = await book.publish(orders, Order(sku="SKU-1", quantity=2))

    reply = await raw.xreadgroup("billing", "billing-1", {stream: ">"}, count=10)
    [[name, [(entry_id, fields)]]] = reply
    assert name == stream.encode()
    event = JSONFormat().read(None, fields[b"event"])
    assert isinstance(event, CloudEvent)
    assert event.get_specversion() == "1.0"
    assert event.get_id() == envelope.id
    assert event.get_type() == "order.placed"
    assert event.get_source() == f"/{book.name}"
    assert event.get_datacontenttype() == "application/json"
    assert event.get_time() is not None
    assert event.get_extension("correlationid") == envelope.id
    assert event.get_data() == {"sku": "SKU-1", "quantity": 2}
    assert await raw.xack(stream, "billing", entry_id) == 1


async def test_eventbook_handles_a_cloudevent_a_raw_client_publishes(
    book: eb.EventBook, raw: redis.asyncio.Redis
) -> None:
    orders = book.topic("order.placed", Order)
    received: list[tuple[Order, str, str]] = []

    @eb.sub(orders)
    async def bill(order: Order) -> None:
        event = eb.current_event()
        assert event is not None
        received.append((order, event.id, event.source))

    event = CloudEvent(
        {"type": "order.placed", "source": "/legacy/shop", "datacontenttype": "application/json"},
        {"sku": "SKU-9", "quantity": 5},
    )
    async with book.start(local_server()):
        await raw.xadd(f"{book.name}.order.placed", {"event": JSONFormat().write(event)})
        await eventually(lambda: len(received) == 1, 30)
        assert await book.dead_letters() == []

    assert received == [(Order(sku="SKU-9", quantity=5), event.get_id(), "/legacy/shop")]

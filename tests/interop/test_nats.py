"""Another program on NATS reads eventbook's events, and writes events eventbook handles.

The documented channel: book `B` is the JetStream stream `B` (subjects `B.>`),
topic `T` the subject `B.T`, each message the CloudEvent's structured JSON with
the event id as `Nats-Msg-Id`; dead letters are the stream `B_dead`. The other
program here is a raw nats-py client with the official CloudEvents SDK
(`cloudevents` 2.x: the v1 `CloudEvent` and its `JSONFormat`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

import eventbook as eb
from eventbook.testing import eventually
from eventbook.testing.contract import dead_letter_count
from tests._nats import client, delete_books, local_server

pytestmark = pytest.mark.nats


class Order(eb.Event):
    sku: str
    quantity: int


@pytest.fixture
async def book() -> AsyncIterator[eb.EventBook]:
    url = local_server()
    book = eb.EventBook(f"interop-{uuid.uuid4().hex[:10]}")
    yield book
    await delete_books(url, {book.name})


@pytest.fixture
async def raw() -> AsyncIterator[Client]:
    async with client(local_server()) as nc:
        yield nc


async def test_a_raw_client_reads_what_eventbook_publishes(book: eb.EventBook, raw: Client) -> None:
    orders = book.topic("order.placed", Order)
    js = raw.jetstream()
    async with book.start(local_server()):
        # The other program's own durable consumer, created before eventbook publishes.
        await js.add_consumer(
            book.name,
            ConsumerConfig(
                durable_name="billing",
                filter_subject=f"{book.name}.order.placed",
                deliver_policy=DeliverPolicy.NEW,
                ack_policy=AckPolicy.EXPLICIT,
            ),
        )
        envelope = await book.publish(orders, Order(sku="SKU-1", quantity=2))

    sub = await js.pull_subscribe_bind("billing", stream=book.name)
    [msg] = await sub.fetch(1, timeout=5)
    await msg.ack()
    assert msg.subject == f"{book.name}.order.placed"
    assert msg.headers is not None
    assert msg.headers["Nats-Msg-Id"] == envelope.id
    event = JSONFormat().read(None, msg.data)
    assert isinstance(event, CloudEvent)
    assert event.get_specversion() == "1.0"
    assert event.get_id() == envelope.id
    assert event.get_type() == "order.placed"
    assert event.get_source() == f"/{book.name}"
    assert event.get_datacontenttype() == "application/json"
    assert event.get_time() is not None
    assert event.get_extension("correlationid") == envelope.id
    assert event.get_data() == {"sku": "SKU-1", "quantity": 2}


async def test_eventbook_handles_a_cloudevent_a_raw_client_publishes(
    book: eb.EventBook, raw: Client
) -> None:
    orders = book.topic("order.placed", Order)
    handled: list[tuple[Order, str, str]] = []

    @eb.sub(orders)
    async def bill(order: Order) -> None:
        event = eb.current_event()
        assert event is not None
        handled.append((order, event.id, event.source))

    event = CloudEvent(
        {"type": "order.placed", "source": "/shop-frontend", "id": "order-42"},
        {"sku": "SKU-9", "quantity": 3},
    )
    async with book.start(local_server()):
        ack = await raw.jetstream().publish(
            f"{book.name}.order.placed",
            JSONFormat().write(event),
            headers={"Nats-Msg-Id": event.get_id()},
        )
        assert ack.stream == book.name
        await eventually(lambda: len(handled) == 1, 10)
    assert handled == [(Order(sku="SKU-9", quantity=3), "order-42", "/shop-frontend")]


async def test_a_raw_client_reads_a_dead_letter(book: eb.EventBook, raw: Client) -> None:
    orders = book.topic("order.placed", Order)

    @eb.sub(orders, retries=0)
    async def ship(order: Order) -> None:
        raise RuntimeError(f"no stock of {order.sku}")

    async with book.start(local_server()):
        envelope = await book.publish(orders, Order(sku="SKU-3", quantity=1))
        await eventually(lambda: dead_letter_count(book, 1), 10)

    letter = await raw.jetstream().get_last_msg(
        f"{book.name}_dead", f"_eventbook.dead.{book.name}.ship@order_placed"
    )
    headers = letter.headers or {}
    assert headers["Eventbook-Handler"] == "ship"
    assert headers["Eventbook-Topic"] == "order.placed"
    assert headers["Eventbook-Reason"] == "failed"
    assert headers["Eventbook-Attempts"] == "1"
    assert headers["Eventbook-Event-Id"] == envelope.id
    assert "RuntimeError: no stock of SKU-3" in json.loads(headers["Eventbook-Error"])
    event = JSONFormat().read(None, letter.data or b"")
    assert event.get_id() == envelope.id
    assert event.get_data() == {"sku": "SKU-3", "quantity": 1}

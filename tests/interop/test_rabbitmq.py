"""Another program on RabbitMQ reads eventbook's events, and writes events eventbook handles.

The documented channel: topic `T` of book `B` is routing key `T` on the durable
topic exchange `B`; each message is the CloudEvent's structured JSON, content type
`application/cloudevents+json`, `message_id` the event id. The other program here
is a raw aio-pika client with the official CloudEvents SDK (`cloudevents` 2.x: its
RabbitMQ binding, `cloudevents.core.bindings.rabbitmq`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
from cloudevents.core.v1.event import CloudEvent

import eventbook as eb
from eventbook.testing import eventually
from tests._rabbitmq import Created, channel, local_server

pytestmark = pytest.mark.rabbitmq


class Order(eb.Event):
    sku: str
    quantity: int


@pytest.fixture
async def book(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[eb.EventBook]:
    url = local_server()
    created = Created().watch(monkeypatch)
    yield eb.EventBook(f"interop-{uuid.uuid4().hex[:10]}")
    await created.delete(url)


async def test_a_raw_client_reads_what_eventbook_publishes(book: eb.EventBook) -> None:
    orders = book.topic("order.placed", Order)
    async with channel() as ch, book.start(local_server()):
        # The other program's own queue, bound to the book's exchange by topic.
        queue = await ch.declare_queue(exclusive=True)
        await queue.bind(book.name, routing_key="order.placed")
        envelope = await book.publish(orders, Order(sku="SKU-1", quantity=2))
        message = await queue.get(timeout=10)
        await message.ack()

    assert message.content_type == "application/cloudevents+json"
    assert message.message_id == envelope.id
    assert message.routing_key == "order.placed"
    event = ce_rabbitmq.from_rabbitmq_event(
        ce_rabbitmq.RabbitMQMessage(
            headers={k: str(v) for k, v in (message.headers or {}).items()},
            content_type=message.content_type,
            body=message.body,
        )
    )
    assert isinstance(event, CloudEvent)
    assert event.get_specversion() == "1.0"
    assert event.get_id() == envelope.id
    assert event.get_type() == "order.placed"
    assert event.get_source() == f"/{book.name}"
    assert event.get_datacontenttype() == "application/json"
    assert event.get_time() is not None
    assert event.get_data() == {"sku": "SKU-1", "quantity": 2}
    assert event.get_extension("correlationid") == envelope.id


async def test_eventbook_handles_a_cloudevent_a_raw_client_publishes(book: eb.EventBook) -> None:
    orders = book.topic("order.placed", Order)
    seen: list[tuple[Order, str, str]] = []

    @eb.sub(orders)
    async def bill(order: Order) -> None:
        envelope = eb.current_event()
        assert envelope is not None
        seen.append((order, envelope.id, envelope.source))

    event = CloudEvent(
        attributes={"type": "order.placed", "source": "/shop/legacy-checkout"},
        data={"sku": "SKU-9", "quantity": 5},
    )
    structured = ce_rabbitmq.to_structured_event(event)
    async with book.start(local_server()), channel() as ch:  # a confirming channel
        exchange = await ch.get_exchange(book.name)
        await exchange.publish(
            aio_pika.Message(
                structured.body,
                content_type=structured.content_type,
                message_id=event.get_id(),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="order.placed",
        )
        await eventually(lambda: len(seen) == 1, 10)

    [(order, event_id, source)] = seen
    assert order == Order(sku="SKU-9", quantity=5)
    assert event_id == event.get_id()
    assert source == "/shop/legacy-checkout"

"""amqp:// contestants: eventbook, FastStream and the raw aio-pika client on RabbitMQ.

All three use the machine's RabbitMQ server (127.0.0.1:5672) and the same topology,
made afresh per run and deleted afterwards: a durable topic exchange, one durable
quorum queue bound to it by the topic, persistent messages, publisher confirms and
mandatory publishes (each publish returns once the broker confirmed it), manual
acks once the event was handled:
  * eventbook rabbitmq: `book.start(broker="amqp://...")` with the defaults, one
    `@eb.sub` async handler (concurrency 1: events handled in order, each acked
    before the next starts; up to 21 unacked events prefetched);
  * faststream rabbitmq: FastStream's `RabbitBroker`, `broker.publish(...,
    exchange=, routing_key=, persist=True)` and a subscriber on a `RabbitQueue`
    of type quorum with a typed handler (its defaults otherwise: acked after the
    handler, no prefetch limit); `asyncio.gather` for windows;
  * raw rabbitmq: aio-pika alone, `exchange.publish` of the bytes one at a time or
    100 concurrently (`asyncio.gather`), and a consumer callback (prefetch 100) that
    reads the JSON and acks each message.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any

import aio_pika
from faststream.rabbit import ExchangeType, QueueType, RabbitExchange, RabbitQueue
from faststream.rabbit import RabbitBroker as FastStreamRabbit
from harness import WINDOW, Contestant, Mode, Recorder, Tick, drive, raw_body, raw_index

import eventbook as eb

URL = "amqp://guest:guest@127.0.0.1:5672/"
QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _delete(queues: list[str], exchanges: list[str]) -> None:
    connection = await aio_pika.connect(URL)
    try:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


async def eventbook_rabbitmq(mode: Mode, n: int) -> tuple[float, list[float]]:
    ticks = [Tick(n=i) for i in range(n)]
    recorder = Recorder(n)
    book = eb.EventBook(_unique("bench-eb"))
    topic = book.topic("tick", Tick)

    @book.service
    class Consumer:
        @eb.sub(topic)
        async def handle(self, tick: Tick) -> None:
            recorder.saw(tick.n)

    def publish_window(lo: int, hi: int) -> Awaitable[object]:
        return asyncio.gather(*(book.publish(topic, ticks[i]) for i in range(lo, hi)))

    try:
        async with book.start(broker=URL):
            return await drive(
                mode, recorder, lambda i: book.publish(topic, ticks[i]), publish_window
            )
    finally:
        await _delete([f"{book.name}.Consumer.handle", f"{book.name}.dead-letters"], [book.name])


async def faststream_rabbitmq(mode: Mode, n: int) -> tuple[float, list[float]]:
    ticks = [Tick(n=i) for i in range(n)]
    recorder = Recorder(n)
    name = _unique("bench-fs")
    broker = FastStreamRabbit(URL, logger=None)
    exchange = RabbitExchange(name, type=ExchangeType.TOPIC, durable=True)
    queue = RabbitQueue(
        f"{name}.handle", queue_type=QueueType.QUORUM, durable=True, routing_key="tick"
    )

    @broker.subscriber(queue, exchange)
    async def handle(tick: Tick) -> None:
        recorder.saw(tick.n)

    def publish_one(i: int) -> Awaitable[object]:
        return broker.publish(ticks[i], exchange=exchange, routing_key="tick", persist=True)

    def publish_window(lo: int, hi: int) -> Awaitable[object]:
        return asyncio.gather(*(publish_one(i) for i in range(lo, hi)))

    await broker.start()
    try:
        return await drive(mode, recorder, publish_one, publish_window)
    finally:
        await broker.stop()
        await _delete([queue.name], [name])


async def raw_rabbitmq(mode: Mode, n: int) -> tuple[float, list[float]]:
    recorder = Recorder(n)
    bodies = [raw_body(i) for i in range(n)]
    name = _unique("bench-raw")
    connection = await aio_pika.connect(URL)
    try:
        publisher = await connection.channel(publisher_confirms=True)
        exchange = await publisher.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        consumer = await connection.channel(publisher_confirms=False)
        await consumer.set_qos(prefetch_count=WINDOW)
        queue = await consumer.declare_queue(f"{name}.handle", durable=True, arguments=QUORUM)
        await queue.bind(exchange, "tick")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            recorder.saw(raw_index(message.body))
            await message.ack()

        await queue.consume(on_message)

        def publish_one(i: int) -> Awaitable[object]:
            message = aio_pika.Message(
                bodies[i],
                content_type="application/cloudevents+json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            return exchange.publish(message, "tick", mandatory=True)

        def publish_window(lo: int, hi: int) -> Awaitable[object]:
            return asyncio.gather(*(publish_one(i) for i in range(lo, hi)))

        return await drive(mode, recorder, publish_one, publish_window)
    finally:
        await connection.close()
        await _delete([f"{name}.handle"], [name])


CONTESTANTS = [
    Contestant("eventbook rabbitmq", eventbook_rabbitmq),
    Contestant("faststream rabbitmq", faststream_rabbitmq),
    Contestant("raw rabbitmq", raw_rabbitmq),
]
#: (eventbook, peer, mode, target): the ratios printed, with the issue's targets.
PAIRS: list[tuple[str, str, Mode, float]] = [
    ("eventbook rabbitmq", "faststream rabbitmq", "one", 1.0),
    ("eventbook rabbitmq", "raw rabbitmq", "window", 0.85),
]

"""nats:// contestants: eventbook, FastStream and the raw nats-py client on NATS JetStream.

All three use the machine's NATS server (127.0.0.1:4222), a file-stored stream with
interest retention of their own per run (deleted afterwards), a durable pull
consumer with explicit acks, and publishes that wait for JetStream's PubAck:
  * eventbook nats: `book.start(broker="nats://...")`, one `@eb.sub` async handler
    with the defaults (concurrency 1: events handled in order, each acked before
    the next starts; up to 100 asked for ahead);
  * faststream nats: FastStream's `NatsBroker`, `broker.publish(..., stream=)` (waits
    for the PubAck) and a durable pull subscriber (`pull_sub=PullSub(batch_size=100)`,
    the kind FastStream recommends for durable consumers) with a typed handler;
  * raw nats: nats-py alone, `js.publish` one at a time and `js.publish_async` +
    gather in windows; a consumer task that `fetch`es batches of up to 100 from a
    `pull_subscribe` consumer, reads the JSON and acks each message.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable

import nats
from faststream.nats import JStream, PullSub
from faststream.nats import NatsBroker as FastStreamNats
from harness import Contestant, Mode, Recorder, Tick, drive, raw_body, raw_index
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

import eventbook as eb

URL = "nats://127.0.0.1:4222"
BATCH = 100


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _delete_streams(*streams: str) -> None:
    nc = await nats.connect(URL)
    try:
        js = nc.jetstream()
        for stream in streams:
            await js.delete_stream(stream)
    finally:
        await nc.close()


async def eventbook_nats(mode: Mode, n: int) -> tuple[float, list[float]]:
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
        await _delete_streams(book.name, f"{book.name}_dead")


async def faststream_nats(mode: Mode, n: int) -> tuple[float, list[float]]:
    ticks = [Tick(n=i) for i in range(n)]
    recorder = Recorder(n)
    name = _unique("bench-fs")
    subject = f"{name}.tick"
    broker = FastStreamNats(URL, logger=None)
    stream = JStream(
        name, subjects=[f"{name}.>"], retention=RetentionPolicy.INTEREST, storage=StorageType.FILE
    )

    @broker.subscriber(subject, stream=stream, durable="handle", pull_sub=PullSub(BATCH))
    async def handle(tick: Tick) -> None:
        recorder.saw(tick.n)

    def publish_window(lo: int, hi: int) -> Awaitable[object]:
        return asyncio.gather(
            *(broker.publish(ticks[i], subject, stream=name) for i in range(lo, hi))
        )

    await broker.start()
    try:
        return await drive(
            mode,
            recorder,
            lambda i: broker.publish(ticks[i], subject, stream=name),
            publish_window,
        )
    finally:
        await broker.stop()
        await _delete_streams(name)


async def raw_nats(mode: Mode, n: int) -> tuple[float, list[float]]:
    recorder = Recorder(n)
    bodies = [raw_body(i) for i in range(n)]
    name = _unique("bench-raw")
    subject = f"{name}.tick"
    nc = await nats.connect(URL)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=name,
            subjects=[f"{name}.>"],
            retention=RetentionPolicy.INTEREST,
            storage=StorageType.FILE,
        )
    )
    sub = await js.pull_subscribe(subject, durable="handle", stream=name)

    async def publish_one(i: int) -> None:
        await js.publish(subject, bodies[i])

    async def publish_window(lo: int, hi: int) -> None:
        acks = [await js.publish_async(subject, bodies[i]) for i in range(lo, hi)]
        await asyncio.gather(*acks)

    async def consume() -> None:
        while recorder.count < n:
            try:
                msgs = await sub.fetch(BATCH, timeout=1.0)
            except NatsTimeout:
                continue
            for msg in msgs:
                recorder.saw(raw_index(msg.data))
                await msg.ack()

    consumer = asyncio.create_task(consume())
    try:
        return await drive(mode, recorder, publish_one, publish_window)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await js.delete_stream(name)
        await nc.close()


CONTESTANTS = [
    Contestant("eventbook nats", eventbook_nats),
    Contestant("faststream nats", faststream_nats),
    Contestant("raw nats", raw_nats),
]
#: (eventbook, peer, mode, target): the ratios printed, with the issue's targets.
PAIRS: list[tuple[str, str, Mode, float]] = [
    ("eventbook nats", "faststream nats", "one", 1.0),
    ("eventbook nats", "raw nats", "window", 0.85),
]

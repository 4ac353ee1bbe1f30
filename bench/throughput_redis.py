"""redis:// contestants: eventbook, FastStream and the raw redis-py client on Redis Streams.

All three use the machine's Redis server (127.0.0.1:6379), a stream and consumer
group of their own per run (deleted afterwards), reads of up to 100 entries with
XREADGROUP and an XACK once the event was handled:
  * eventbook redis: `book.start(broker="redis://...")` with the defaults, one
    `@eb.sub` async handler (concurrency 1: events handled in order); each publish
    is one Lua script call that also keeps the event's dedupe key (publishes of one
    moment share a call); acks of one moment share an XACK;
  * faststream redis: FastStream's `RedisBroker`, `broker.publish(..., stream=)` (an
    XADD) and a consumer-group subscriber (`StreamSub(group=, consumer=)`) with a
    typed handler, `asyncio.gather` for windows;
  * raw redis: redis-py alone, an XADD per event one at a time and a pipeline of 100
    XADDs per window; a consumer task that reads batches of up to 100 with
    XREADGROUP (BLOCK), reads the JSON and acks each batch with one XACK.
The machine's server keeps nothing on disk (no append-only file): the same for all.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable

import redis.asyncio
from faststream.redis import RedisBroker as FastStreamRedis
from faststream.redis import StreamSub
from harness import WINDOW, Contestant, Mode, Recorder, Tick, drive, raw_body, raw_index

import eventbook as eb

URL = "redis://127.0.0.1:6379/0"


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _delete(*patterns: str) -> None:
    client = redis.asyncio.Redis.from_url(URL)
    try:
        for pattern in patterns:
            keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
            for lo in range(0, len(keys), 1000):
                await client.delete(*keys[lo : lo + 1000])
    finally:
        await client.aclose()


async def eventbook_redis(mode: Mode, n: int) -> tuple[float, list[float]]:
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
        await _delete(f"{book.name}.*", f"{book.name}:*")


async def faststream_redis(mode: Mode, n: int) -> tuple[float, list[float]]:
    ticks = [Tick(n=i) for i in range(n)]
    recorder = Recorder(n)
    stream = _unique("bench-fs")
    # Room for a window of concurrent publishes (redis-py's pool holds 100 by default).
    broker = FastStreamRedis(URL, logger=None, max_connections=1000)

    @broker.subscriber(stream=StreamSub(stream, group="handle", consumer="handle-1"))
    async def handle(tick: Tick) -> None:
        recorder.saw(tick.n)

    def publish_window(lo: int, hi: int) -> Awaitable[object]:
        return asyncio.gather(*(broker.publish(ticks[i], stream=stream) for i in range(lo, hi)))

    await broker.start()
    try:
        return await drive(
            mode, recorder, lambda i: broker.publish(ticks[i], stream=stream), publish_window
        )
    finally:
        await broker.stop()
        await _delete(stream)


async def raw_redis(mode: Mode, n: int) -> tuple[float, list[float]]:
    recorder = Recorder(n)
    bodies = [raw_body(i) for i in range(n)]
    stream = _unique("bench-raw")
    client = redis.asyncio.Redis.from_url(URL)
    await client.xgroup_create(stream, "handle", id="$", mkstream=True)

    async def publish_one(i: int) -> None:
        await client.xadd(stream, {"event": bodies[i]})

    async def publish_window(lo: int, hi: int) -> None:
        pipe = client.pipeline(transaction=False)
        for i in range(lo, hi):
            pipe.xadd(stream, {"event": bodies[i]})
        await pipe.execute()

    async def consume() -> None:
        while recorder.count < n:
            reply = await client.xreadgroup(
                "handle", "handle-1", {stream: ">"}, count=WINDOW, block=1000
            )
            for _, entries in reply:
                for _, fields in entries:
                    recorder.saw(raw_index(fields[b"event"]))
                await client.xack(stream, "handle", *(entry for entry, _ in entries))

    consumer = asyncio.create_task(consume())
    try:
        return await drive(mode, recorder, publish_one, publish_window)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await client.delete(stream)
        await client.aclose()


CONTESTANTS = [
    Contestant("eventbook redis", eventbook_redis),
    Contestant("faststream redis", faststream_redis),
    Contestant("raw redis", raw_redis),
]
#: (eventbook, peer, mode, target): the ratios printed, with the issue's targets.
PAIRS: list[tuple[str, str, Mode, float]] = [
    ("eventbook redis", "faststream redis", "one", 1.0),
    ("eventbook redis", "raw redis", "window", 0.85),
]

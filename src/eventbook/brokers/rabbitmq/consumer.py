"""One consumer group's queue in this process: receive, route to the handler, settle.

A group is one handler; a handler that subscribes to several topics has one queue
bound to each of them, and one route (its own workers and concurrency) per topic.
Events wait in a route's buffer until one of its workers is free; the broker sends
at most the routes' concurrency plus `?prefetch=` unsettled events to a consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from aio_pika.abc import AbstractRobustChannel
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from aiormq.abc import AbstractChannel, DeliveredMessage

if TYPE_CHECKING:
    from ...envelope import Envelope
    from ...service import Handler
    from ..base import Deliver
    from .broker import RabbitBroker

log = logging.getLogger("eventbook.brokers.rabbitmq")

#: What a settle may meet when the delivery's channel is gone: the broker has then
#: given the event back already, so there is nothing left to settle.
_GONE = (ChannelInvalidStateError, AMQPError, ConnectionError)

#: Seconds before an event this process could not settle (say, its dead letter was
#: not confirmed) is given back to the broker, so that a lasting failure is no hot loop.
SETTLE_BACKOFF = 1.0


def attempt_of(raw: DeliveredMessage) -> int:
    """The try this delivery is, counted by the broker: 1 + its failed deliveries.

    A quorum queue counts them in `x-delivery-count`, and sets `redelivered` once it
    has given the message out before; a first delivery is attempt 1 whatever
    headers its sender wrote.
    """
    if not raw.redelivered:
        return 1
    headers = raw.header.properties.headers
    count = headers.get("x-delivery-count") if headers else None
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count + 1
    return 1


class RabbitMessage:
    """One delivery of one event to one handler."""

    __slots__ = ("_consumer", "_raw", "attempt", "body", "envelope", "topic")

    def __init__(self, consumer: GroupConsumer, raw: DeliveredMessage, topic: str) -> None:
        self._consumer = consumer
        self._raw = raw
        self.topic = topic
        self.body: bytes | None = raw.body
        self.envelope: Envelope | None = None  # decoding is the delivery path's job
        self.attempt = attempt_of(raw)

    async def ack(self) -> None:
        await settle(self._raw, "ack")

    async def retry(self, delay: float) -> None:
        # Held, unacked, for the delay, then rejected: the broker counts the failed try.
        self._consumer.give_back_later(self._raw, delay, failed=True)

    async def dead_letter(self, reason: str, error: str) -> None:
        consumer = self._consumer
        raw = self._raw
        properties = raw.header.properties
        await consumer.broker.letters.park(
            raw.body,
            content_type=properties.content_type,
            event_id=properties.message_id,
            group=consumer.group,
            topic=self.topic,
            queue=consumer.queue_name,
            reason=reason,
            error=error,
            attempts=self.attempt,
        )
        await settle(raw, "ack")


async def settle(raw: DeliveredMessage, how: str) -> None:
    """Ack, nack (give back) or reject (a failed try) one delivery, without waiting.

    A channel that closed meanwhile already gave the event back to the queue.
    """
    channel: AbstractChannel = raw.channel
    tag = raw.delivery_tag or 0
    try:
        if how == "ack":
            await channel.basic_ack(tag, wait=False)
        elif how == "reject":
            await channel.basic_reject(tag, requeue=True, wait=False)
        else:
            await channel.basic_nack(tag, requeue=True, wait=False)
    except _GONE as exc:
        log.info("settling an event on a closed channel (%s): the broker redelivers it", exc)


class Route:
    """The events of one topic of a group, waiting for that handler's workers."""

    __slots__ = ("concurrency", "deliver", "pending", "ready", "topic", "workers")

    def __init__(self, topic: str, deliver: Deliver, concurrency: int) -> None:
        self.topic = topic
        self.deliver = deliver
        self.concurrency = max(1, concurrency)
        self.pending: deque[DeliveredMessage] = deque()
        self.ready = asyncio.Event()
        self.workers: list[asyncio.Task[None]] = []

    def put(self, raw: DeliveredMessage) -> None:
        self.pending.append(raw)
        self.ready.set()


class GroupConsumer:
    """Consumes one queue (`<book>.<group>`, or a reply queue) for this process.

    It consumes on the client's underlying channel (one task per delivery, no
    message objects of the client's own), and consumes again whenever the client
    has reopened the channel after a lost connection.
    """

    def __init__(
        self,
        broker: RabbitBroker,
        queue_name: str,
        group: str,
        expected: set[str],
        *,
        reply: bool = False,
    ) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.group = group
        #: The topics the group is bound to, as declared here; it starts consuming once
        #: each has its route, so that no event arrives for a handler not yet there.
        self.expected = expected
        self.reply = reply
        self.routes: dict[str, Route] = {}
        self.parked: dict[str, list[DeliveredMessage]] = {}
        self.held: dict[DeliveredMessage, asyncio.TimerHandle] = {}
        self.chores: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.started = False
        self.channel: AbstractRobustChannel | None = None
        #: The underlying channel consuming now, and the consumer tag on it.
        self.consuming: tuple[AbstractChannel, str] | None = None

    # -- setting up ------------------------------------------------------------------

    def add(self, handler: Handler, deliver: Deliver) -> None:
        topic = handler.topic.name
        route = Route(topic, deliver, handler.concurrency)
        self.routes[topic] = route
        for raw in self.parked.pop(topic, []):
            route.put(raw)
        if self.started:
            self._start_workers(route)

    @property
    def complete(self) -> bool:
        return self.expected <= self.routes.keys()

    async def start(self) -> None:
        """Open this group's channel and start receiving."""
        broker = self.broker
        channel = await broker.connection.channel(publisher_confirms=False)
        self.channel = channel
        # Room for every worker, plus events waiting to start or waiting out a retry.
        prefetch = sum(route.concurrency for route in self.routes.values())
        await channel.set_qos(prefetch_count=prefetch + broker.settings.prefetch)
        # Declared through the client's channel, which declares them again on reopening.
        if self.reply:
            # This process's answers: nobody else reads them, and they die with it.
            queue = await channel.declare_queue(
                self.queue_name, exclusive=True, auto_delete=True, durable=False
            )
            for topic in self.routes:
                await queue.bind(broker.exchange, topic)
        else:
            await channel.declare_queue(
                self.queue_name, durable=True, arguments=broker.queue_arguments
            )
        self.started = True
        for route in self.routes.values():
            self._start_workers(route)
        channel.reopen_callbacks.add(self._reopened)
        await self._consume()

    async def _consume(self) -> None:
        assert self.channel is not None
        underlay = await self.channel.get_underlay_channel()
        ok = await underlay.basic_consume(self.queue_name, self._on_message)
        self.consuming = (underlay, str(ok.consumer_tag))

    def _reopened(self, channel: Any) -> None:
        """The client reopened the channel after a lost connection: consume again."""
        if self.stopping:
            return
        task = asyncio.create_task(self._resume())
        self.chores.add(task)
        task.add_done_callback(self.chores.discard)

    async def _resume(self) -> None:
        pause = 0.1
        while not self.stopping:
            try:
                await self._consume()
                log.info("%s: consuming %s again", self.group, self.queue_name)
                return
            except Exception as exc:
                # Say, the queue's leader is not elected yet after a server restart.
                log.warning("%s: cannot consume %s yet (%s)", self.group, self.queue_name, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _start_workers(self, route: Route) -> None:
        for index in range(route.concurrency):
            route.workers.append(
                asyncio.create_task(
                    self._work(route), name=f"eventbook-rabbitmq-{self.group}-{index}"
                )
            )

    # -- receiving -------------------------------------------------------------------

    async def _on_message(self, raw: DeliveredMessage) -> None:
        if self.stopping:
            await settle(raw, "nack")
            return
        topic = self._topic_of(raw)
        route = self.routes.get(topic) if topic is not None else None
        if route is None:
            if topic is not None and topic in self.expected:
                # Declared here, its handler not consuming yet: it waits for it.
                self.parked.setdefault(topic, []).append(raw)
                return
            # Sent straight to the queue without a topic (or for a topic this process
            # does not know): the delivery path reads its type and dead-letters it if
            # the handler cannot take it.
            route = next(iter(self.routes.values()))
        route.put(raw)

    def _topic_of(self, raw: DeliveredMessage) -> str | None:
        if raw.exchange == self.broker.exchange:
            return raw.routing_key
        # Replayed dead letters come through the default exchange with their topic.
        headers = raw.header.properties.headers
        topic = headers.get("topic") if headers else None
        if isinstance(topic, bytes):
            topic = topic.decode("utf-8", "replace")
        return topic if isinstance(topic, str) else None

    async def _work(self, route: Route) -> None:
        pending = route.pending
        while True:
            while not pending:
                if self.stopping:
                    return
                route.ready.clear()
                await route.ready.wait()
            if self.stopping:
                return
            raw = pending.popleft()
            if raw.channel.is_closed:
                continue  # the broker gave it back when the channel closed; it comes again
            try:
                await route.deliver(RabbitMessage(self, raw, route.topic))
            except Exception:
                # The delivery path settles failed handlers and bad input itself; what
                # lands here is the broker failing to settle (a dead letter unconfirmed).
                log.exception(
                    "%s: could not settle event %s",
                    self.group,
                    raw.header.properties.message_id,
                )
                self.give_back_later(raw, SETTLE_BACKOFF, failed=False)

    # -- giving events back ----------------------------------------------------------

    def give_back_later(self, raw: DeliveredMessage, delay: float, *, failed: bool) -> None:
        """Return the event to the queue after `delay` seconds, holding it until then.

        A failed try is rejected (the broker counts it); anything else is nacked,
        which RabbitMQ 4.3+ does not count as a failed delivery.
        """
        loop = asyncio.get_running_loop()
        self.held[raw] = loop.call_later(delay, self._give_back, raw, failed)

    def _give_back(self, raw: DeliveredMessage, failed: bool) -> None:
        if self.held.pop(raw, None) is None:
            return
        task = asyncio.create_task(settle(raw, "reject" if failed else "nack"))
        self.chores.add(task)
        task.add_done_callback(self.chores.discard)

    async def stop_taking(self) -> None:
        """Stop receiving; give back what waits here (other replicas take it)."""
        self.stopping = True
        if self.consuming is not None:
            underlay, tag = self.consuming
            # Best effort: on a lost connection there is no consumer left to cancel.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await underlay.basic_cancel(tag)
        unstarted: list[DeliveredMessage] = []
        for route in self.routes.values():
            route.ready.set()
            unstarted += route.pending
            route.pending.clear()
        for parked in self.parked.values():
            unstarted += parked
        self.parked.clear()
        for raw in unstarted:
            await settle(raw, "nack")
        # Retries waiting out their backoff go back now: another replica may take them
        # a little early, rather than hold up the drain for the whole backoff.
        for raw, timer in list(self.held.items()):
            timer.cancel()
            self._give_back(raw, failed=True)
        if self.chores:
            await asyncio.wait(self.chores, timeout=2.0)

    def workers(self) -> list[asyncio.Task[None]]:
        return [task for route in self.routes.values() for task in route.workers]

    def close(self) -> None:
        for timer in self.held.values():
            timer.cancel()
        self.held.clear()
        for task in [*self.workers(), *self.chores]:
            task.cancel()

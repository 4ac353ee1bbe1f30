"""The `amqp://` broker: connection, declaring, confirmed publishing, consumers."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import aio_pika
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aio_pika.connection import make_url
from aio_pika.exceptions import (
    CONNECTION_EXCEPTIONS,
    ChannelInvalidStateError,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic

from ...errors import BrokerError, redact
from ..base import DeadLetter, Deliver
from .consumer import GroupConsumer
from .letters import DeadLetterQueue
from .settings import RabbitSettings

if TYPE_CHECKING:
    from ...envelope import Envelope
    from ...service import Handler

log = logging.getLogger("eventbook.brokers.rabbitmq")

CONTENT_TYPE = "application/cloudevents+json"
PERSISTENT = 2
#: Topics of one process's request/reply answers (see runtime.py).
REPLY_PREFIX = "_reply."


class Unroutable(BrokerError):
    """The broker returned a mandatory publish: no queue is bound to its routing key."""


class RabbitBroker:
    """RabbitMQ broker; see `eventbook.brokers.rabbitmq` for the mapping."""

    encodes = True

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.settings = RabbitSettings.from_url(url)
        #: The book's durable topic exchange; routing key = topic name.
        self.exchange = namespace
        self.queue_arguments: dict[str, Any] = {
            "x-queue-type": "quorum",
            # Eventbook's retry policy decides when to give up; this limit only ends a
            # loop of crashes, and sends the event to the dead letters, not nowhere.
            "x-delivery-limit": self.settings.delivery_limit,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{namespace}.dead-letters",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # required by at-least-once dead-lettering
        }
        self.letters = DeadLetterQueue(self)
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._admin: AbstractRobustChannel | None = None
        self._underlay: AbstractChannel | None = None  # the publisher's, while it lives
        self._bound: set[tuple[str, str]] = set()
        self._expected: dict[str, set[str]] = {}
        self._declared_topics: set[str] = set()
        self._consumers: dict[str, GroupConsumer] = {}

    # -- lifecycle -------------------------------------------------------------------

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BrokerError("the amqp:// broker is not connected")
        return self._connection

    def queue_name(self, group: str) -> str:
        """The durable quorum queue of consumer group `group`: `<book>.<group>`."""
        return f"{self.namespace}.{group}"

    async def connect(self) -> None:
        settings = self.settings
        where = redact(self.url)
        query = urlsplit(settings.server).query
        server = settings.server
        if "name=" not in query:
            name = f"eventbook {self.namespace} pid {os.getpid()}"
            server += ("&" if query else "?") + "name=" + quote(name)
        # Built here rather than by connect_robust(), so that a failed first attempt can
        # be closed: its reconnection task must not outlive the error.
        connection = aio_pika.RobustConnection(
            make_url(server, reconnect_interval=settings.reconnect),
            reconnect_interval=settings.reconnect,
        )
        try:
            async with asyncio.timeout(settings.connect_timeout + 1):
                await connection.connect(timeout=settings.connect_timeout)
        except Exception as exc:
            await connection.close()
            detail = "no answer in time" if isinstance(exc, TimeoutError) else self.scrub(exc)
            raise BrokerError(
                f"cannot connect to RabbitMQ at {where}: {detail}; "
                "check that the server runs and the URL (host, port, user, password, vhost)"
            ) from None
        self._connection = connection
        try:
            self._publisher = await self.connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._admin = await self.connection.channel(publisher_confirms=False)
            # Declared on channels that re-declare them after a reconnect.
            await self._publisher.declare_exchange(
                self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            await self._publisher.declare_queue(
                self.letters.name, durable=True, arguments=self.letters.arguments
            )
        except Exception as exc:
            await self.close()
            raise BrokerError(
                f"cannot set up book {self.namespace!r} on RabbitMQ at {where}: "
                f"{self.scrub(exc)}; a queue or exchange of that name may exist with "
                "other settings"
            ) from None

    def scrub(self, exc: BaseException) -> str:
        """The error's text, without the password of the URL should it mention it."""
        text = f"{type(exc).__name__}: {exc}"
        password = urlsplit(self.url).password
        for secret in {password, unquote(password)} if password else ():
            text = text.replace(secret, "***")
        return text

    async def drain(self, timeout: float) -> None:
        consumers = list(self._consumers.values())
        await asyncio.gather(*(consumer.stop_taking() for consumer in consumers))
        work = {task for consumer in consumers for task in consumer.workers() if not task.done()}
        if work and timeout > 0:
            _, work = await asyncio.wait(work, timeout=timeout)
        for task in work:
            task.cancel()  # its event is not acked: the broker redelivers it
        if work:
            if timeout > 0:
                log.warning("drain: %d handlers still running after %gs", len(work), timeout)
            await asyncio.wait(work)

    async def close(self) -> None:
        consumers = list(self._consumers.values())
        for consumer in consumers:
            consumer.close()
        tasks = [t for c in consumers for t in (*c.workers(), *c.chores)]
        if tasks:
            await asyncio.wait(tasks)
        self._consumers = {}
        connection, self._connection = self._connection, None
        self._publisher = self._admin = None
        self._underlay = None
        if connection is not None:
            await connection.close()

    # -- declaring -------------------------------------------------------------------

    async def declare(self, group: str, topic: str) -> None:
        if (group, topic) in self._bound:
            return
        name = self.queue_name(group)
        admin = self._admin
        if admin is None:
            raise BrokerError("the amqp:// broker is not connected")
        try:
            queue = await admin.declare_queue(
                name, durable=True, arguments=self.queue_arguments, robust=False
            )
            await queue.bind(self.exchange, topic, robust=False)
        except ChannelPreconditionFailed as exc:
            raise BrokerError(
                f"queue {name!r} exists with other settings ({self.scrub(exc)}): eventbook "
                "needs a quorum queue with the same ?delivery_limit=; delete the queue "
                "(its events with it) or use the URL it was created with"
            ) from None
        except Exception as exc:
            raise BrokerError(
                f"cannot declare queue {name!r} for topic {topic!r}: {self.scrub(exc)}"
            ) from None
        self._bound.add((group, topic))
        self._expected.setdefault(group, set()).add(topic)
        self._declared_topics.add(topic)

    # -- publishing ------------------------------------------------------------------

    async def publish(self, envelope: Envelope, body: bytes | None) -> None:
        if body is None:
            raise BrokerError("amqp:// publishes encoded events only")
        topic = envelope.type
        properties = Basic.Properties(
            content_type=CONTENT_TYPE, message_id=envelope.id, delivery_mode=PERSISTENT
        )
        try:
            await self.send(self.exchange, topic, body, properties, f"event on topic {topic!r}")
        except Unroutable:
            if topic.startswith(REPLY_PREFIX):
                # The requester is gone (timed out or stopped): nobody waits for it.
                log.debug("answer on %r reached no one: its requester is gone", topic)
                return
            if topic in self._declared_topics:
                raise BrokerError(
                    f"event on topic {topic!r} came back from exchange {self.exchange!r}: "
                    "no queue is bound to it although this book declared one (was it "
                    "deleted?); restart a process of the book to declare it again"
                ) from None
            # A durable broker does not drop an event quietly: with no queue bound yet
            # (no subscriber has ever started), RabbitMQ would discard it.
            raise BrokerError(
                f"event on topic {topic!r} was not published: no queue is bound to it on "
                f"exchange {self.exchange!r}, so RabbitMQ would drop it; start a service "
                f"that subscribes to {topic!r} once (its queue then keeps events while it "
                f"is down), or bind a queue with routing key {topic!r}"
            ) from None

    async def send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        what: str,
    ) -> None:
        """Publish, mandatory, and return once the broker confirmed it.

        Retried, with the same message id, across lost connections and negative
        confirms until `?publish_timeout=`; a retried publish may arrive twice.

        Raises:
            Unroutable: no queue is bound to `routing_key` on `exchange`.
            BrokerError: not confirmed in time.
        """
        publisher = self._publisher
        if publisher is None:
            raise BrokerError("the amqp:// broker is not connected")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.publish_timeout
        pause = 0.05
        failures = 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    channel = self._underlay
                    if channel is None or _dead(channel):
                        channel = self._underlay = await self._reopened_publisher(publisher)
                    await channel.basic_publish(
                        body,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=properties,
                        mandatory=True,
                    )
                return
            except PublishError:
                raise Unroutable(f"no queue is bound to {routing_key!r}") from None
            except TimeoutError:
                raise BrokerError(
                    f"RabbitMQ at {redact(self.url)} did not confirm {what} within "
                    f"{self.settings.publish_timeout:g}s (?publish_timeout=): is the server "
                    "up and not blocked (disk or memory alarm)?"
                ) from None
            except (DeliveryError, *CONNECTION_EXCEPTIONS) as exc:
                # Said once per publish: a restarting server fails many at once.
                log.log(
                    logging.DEBUG if failures else logging.WARNING,
                    "publishing %s failed (%s); publishing it again until confirmed",
                    what,
                    exc,
                )
                failures += 1
            await asyncio.sleep(max(0.0, min(pause, deadline - loop.time())))
            pause = min(pause * 2, 1.0)

    @staticmethod
    async def _reopened_publisher(publisher: AbstractRobustChannel) -> AbstractChannel:
        """The publisher's current underlying channel, once the client has reopened it.

        After a reconnection the client says it is connected before it has reopened
        its channels; a publish on the old, dead channel would wait for a confirm
        that never comes.
        """
        await publisher.ready()
        channel = await publisher.get_underlay_channel()
        if _dead(channel):
            raise ChannelInvalidStateError("the publishing channel is not reopened yet")
        return channel

    # -- consuming -------------------------------------------------------------------

    async def consume(self, handler: Handler, deliver: Deliver) -> None:
        topic = handler.topic.name
        if topic.startswith(REPLY_PREFIX):
            name = f"{self.namespace}.{topic}"
            consumer = GroupConsumer(self, name, handler.name, {topic}, reply=True)
        else:
            await self.declare(handler.name, topic)
            name = self.queue_name(handler.name)
            existing = self._consumers.get(name)
            consumer = existing or GroupConsumer(
                self, name, handler.name, self._expected[handler.name]
            )
            if handler.policy.max_attempts > self.settings.delivery_limit:
                log.warning(
                    "%s may try an event %d times, but its queue gives one out at most %d "
                    "times (?delivery_limit=): raise the limit on a new queue",
                    handler.name,
                    handler.policy.max_attempts,
                    self.settings.delivery_limit + 1,
                )
        self._consumers[name] = consumer
        consumer.add(handler, deliver)
        if not consumer.started and consumer.complete:
            try:
                await consumer.start()
            except Exception as exc:
                raise BrokerError(f"cannot consume queue {name!r}: {self.scrub(exc)}") from None

    # -- dead letters ----------------------------------------------------------------

    async def dead_letters(self) -> list[DeadLetter]:
        return await self.letters.read()

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        return await self.letters.replay(ids)

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        return await self.letters.purge(ids)


def _dead(channel: AbstractChannel) -> bool:
    """True for a channel of a lost connection, even before it learnt it is closed."""
    return channel.is_closed or channel.connection.is_closed

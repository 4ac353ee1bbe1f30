"""The `nats://` broker: connection, streams, consumers, publish, drain, and dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from ...errors import BrokerError, ConfigurationError, redact
from ..base import DeadLetter, Deliver
from . import names
from .consumer import HEARTBEAT, Consumer
from .letters import Letters
from .publisher import Publisher
from .settings import NatsSettings

if TYPE_CHECKING:
    from ...envelope import Envelope
    from ...service import Handler

log = logging.getLogger("eventbook.brokers.nats")

#: Seconds between reconnection attempts when the server is gone.
RECONNECT_WAIT = 0.5
#: Seconds a reply consumer of a crashed process outlives it on the server.
REPLY_IDLE = 120.0
#: JetStream's error code for a stream whose subjects overlap another stream's.
_SUBJECTS_OVERLAP = 10065


class _JetStreamUnavailable(Exception):
    """Nobody answers JetStream's API: not enabled, or not ready yet."""


class NatsBroker:
    """NATS JetStream broker; see `eventbook.brokers.nats`."""

    encodes = True

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.settings = NatsSettings.from_url(url)
        self.stream = names.stream(namespace)
        self.letters = Letters(self)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._publisher: Publisher | None = None
        self._consumers: list[Consumer] = []
        self._declared: dict[str, tuple[str, str]] = {}
        self._replies: list[str] = []
        self._subjects: dict[str, str] = {}
        self._background: asyncio.Task[None] | None = None
        self._drained = False
        self._connecting = False
        self._last_error: Exception | None = None

    # -- plumbing ----------------------------------------------------------------------

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise BrokerError("the nats:// broker is not connected")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise BrokerError("the nats:// broker is not connected")
        return self._js

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise BrokerError("the nats:// broker is not connected")
        return self._publisher

    # -- lifecycle ---------------------------------------------------------------------

    async def connect(self) -> None:
        shown = redact(self.url)
        loop = asyncio.get_running_loop()
        nc = Client()
        self._connecting, self._last_error = True, None
        try:
            await asyncio.wait_for(
                nc.connect(
                    servers=[self.settings.server],
                    name=f"eventbook {self.namespace}",
                    connect_timeout=max(1, round(self.settings.connect_timeout)),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=RECONNECT_WAIT,  # type: ignore[arg-type]
                    ping_interval=20,
                    max_outstanding_pings=3,
                    # Subjects are built from names the book checked already.
                    skip_subject_validation=True,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                ),
                self.settings.connect_timeout,
            )
        except (TimeoutError, OSError, NatsError) as exc:
            await nc.close()
            why = self._last_error or exc
            raise BrokerError(
                f"cannot connect to NATS at {shown} within {self.settings.connect_timeout:g}s "
                f"({str(why) or type(why).__name__}): is nats-server running there, and are "
                "the credentials right?"
            ) from None
        finally:
            self._connecting = False
        self._nc = nc
        self._js = nc.jetstream()
        try:
            await self._ensure_streams(deadline=loop.time() + self.settings.connect_timeout)
            self._publisher = Publisher(nc, self.settings.publish_timeout)
            await self._publisher.start()
        except BaseException:
            await self._close_connection()
            raise
        self._drained = False
        self._background = asyncio.create_task(self._keep_claims(), name="eventbook-nats-claims")

    async def _ensure_streams(self, deadline: float) -> None:
        """Create the book's streams if missing; wait (until `deadline`) for JetStream."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._create_streams()
                return
            except _JetStreamUnavailable:
                if loop.time() >= deadline:
                    raise BrokerError(
                        f"JetStream does not answer on the NATS server at {redact(self.url)}: "
                        "start nats-server with -js (or wait until it is ready)"
                    ) from None
                await asyncio.sleep(0.1)

    async def _create_streams(self) -> None:
        settings = self.settings
        await self._ensure_stream(
            StreamConfig(
                name=self.stream,
                description=f"eventbook book {self.namespace}: its events",
                subjects=[f"{self.namespace}.>"],
                # An event stays until every consumer (handler) that wants it acked it.
                retention=RetentionPolicy.INTEREST,
                storage=StorageType.FILE,
                num_replicas=settings.replicas,
                duplicate_window=settings.duplicate_window,
            )
        )
        await self._ensure_stream(
            StreamConfig(
                name=self.letters.stream,
                description=f"eventbook book {self.namespace}: its dead letters",
                subjects=[names.dead_subjects(self.namespace)],
                retention=RetentionPolicy.LIMITS,  # kept until replayed or purged
                storage=StorageType.FILE,
                num_replicas=settings.replicas,
                duplicate_window=settings.duplicate_window,
            )
        )

    async def _ensure_stream(self, config: StreamConfig) -> None:
        name = config.name
        try:
            try:
                info = await self.js.stream_info(name or "")
            except NotFoundError:
                await self.js.add_stream(config)
                return
        except ServiceUnavailableError:
            raise _JetStreamUnavailable from None
        except APIError as exc:
            if exc.err_code == _SUBJECTS_OVERLAP:
                raise ConfigurationError(
                    f"cannot create the NATS stream {name}: its subjects {config.subjects} "
                    "overlap another stream's (books whose names nest at a dot, like 'shop' "
                    "and 'shop.eu', cannot share a NATS server): rename the book"
                ) from None
            raise BrokerError(f"cannot create the NATS stream {name}: {exc}") from None
        except NatsError as exc:
            raise BrokerError(f"cannot create the NATS stream {name}: {exc}") from None
        if info.config.subjects != config.subjects:
            raise ConfigurationError(
                f"the NATS stream {name} exists for subjects {info.config.subjects}, not "
                f"{config.subjects}: another book (with '_' where this one has '.') uses "
                "that name; rename one of them"
            )

    async def drain(self, timeout: float) -> None:
        consumers = list(self._consumers)
        for consumer in consumers:
            await consumer.stop_taking()
        pending = {task for consumer in consumers for task in consumer.work()}
        if pending and timeout > 0:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            if timeout > 0:
                log.warning("drain: %d handlers still running after %gs", len(pending), timeout)
            await asyncio.wait(pending)
        for consumer in consumers:
            await consumer.release()
        self._drained = True

    async def close(self) -> None:
        if not self._drained:
            await self.drain(0)
        self._consumers = []
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
            self._background = None
        if self._nc is not None and self._nc.is_connected:
            for name in self._replies:
                # This process's reply channel: nobody else reads it.
                with contextlib.suppress(NatsError):
                    await self.js.delete_consumer(self.stream, name)
        self._replies = []
        await self._close_connection()

    async def _close_connection(self) -> None:
        if self._publisher is not None:
            await self._publisher.stop()
            self._publisher = None
        if self._nc is not None:
            await self._nc.close()
            self._nc = None
            self._js = None

    # -- connection events -------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        if self._connecting:
            self._last_error = exc  # said once, by connect()'s error
            return
        log.warning("nats://: %s", str(exc) or type(exc).__name__)

    async def _on_disconnected(self) -> None:
        if self._publisher is not None:
            self._publisher.disconnected()
        if self._nc is not None and not self._nc.is_closed:
            log.warning("nats://: lost the connection to %s; reconnecting", redact(self.url))

    async def _on_reconnected(self) -> None:
        log.warning("nats://: reconnected to %s", redact(self.url))
        if self._publisher is not None:
            self._publisher.reconnected()
        for consumer in self._consumers:
            consumer.reset()

    async def _keep_claims(self) -> None:
        """Renew what the consumers hold, and notice pull requests the server forgot."""
        loop = asyncio.get_running_loop()
        every = min(self.settings.ack_wait / 3, HEARTBEAT)
        renewed = loop.time()
        while True:
            await asyncio.sleep(every)
            now = loop.time()
            for consumer in list(self._consumers):
                consumer.check(now)
            if now - renewed < self.settings.ack_wait / 3 - 0.01:
                continue
            renewed = now
            for consumer in list(self._consumers):
                try:
                    await consumer.renew()
                except NatsError as exc:
                    log.warning("%s: cannot renew its claims (%s)", consumer.name, exc)

    # -- publishing and consuming ------------------------------------------------------

    async def declare(self, group: str, topic: str) -> None:
        name = names.consumer(group, topic)
        known = self._declared.get(name)
        if known is None:
            await self.ensure_consumer(name, group, topic)
            self._declared[name] = (group, topic)
        elif known != (group, topic):
            raise ConfigurationError(
                f"handlers {known[0]!r} on {known[1]!r} and {group!r} on {topic!r} map to the "
                f"same NATS consumer {name!r} ('.' becomes '_'): rename one of them"
            )

    async def ensure_consumer(self, name: str, group: str, topic: str) -> None:
        """Create `group`'s durable consumer on `topic`, or bring its settings up to date."""
        settings = self.settings
        reply = names.is_reply(topic)
        config = ConsumerConfig(
            name=name,
            durable_name=name,
            description=names.describe(group, topic),
            filter_subject=names.subject(self.namespace, topic),
            # A new handler gets the events published from now on, not the stream's past.
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait,
            max_ack_pending=settings.max_ack_pending,
            inactive_threshold=REPLY_IDLE if reply else None,
        )
        js = self.js
        try:
            if not reply:
                try:
                    info = await js.consumer_info(self.stream, name)
                except NotFoundError:
                    pass
                else:
                    if info.config.description != config.description:
                        raise ConfigurationError(
                            f"the NATS consumer {name!r} belongs to another handler "
                            f"({info.config.description!r}): rename {group!r} or its topic"
                        )
                    if (info.config.ack_wait, info.config.max_ack_pending) == (
                        config.ack_wait,
                        config.max_ack_pending,
                    ):
                        return
            await js.add_consumer(self.stream, config)
        except NatsError as exc:
            raise BrokerError(
                f"cannot create the NATS consumer {name!r} for handler {group!r} on topic "
                f"{topic!r}: {exc}"
            ) from None

    async def publish(self, envelope: Envelope, body: bytes | None) -> None:
        if body is None:
            raise BrokerError("nats:// publishes encoded events only")
        subject = self._subjects.get(envelope.type)
        if subject is None:
            subject = self._subjects[envelope.type] = names.subject(self.namespace, envelope.type)
        await self.publisher.publish(subject, body, {names.MSG_ID: envelope.id})

    async def consume(self, handler: Handler, deliver: Deliver) -> None:
        topic = handler.topic.name
        name = names.consumer(handler.name, topic)
        if names.is_reply(topic):
            await self.ensure_consumer(name, handler.name, topic)
            self._replies.append(name)
        else:
            await self.declare(handler.name, topic)
        consumer = Consumer(self, handler, deliver, name)
        await consumer.start()
        self._consumers.append(consumer)

    # -- dead letters ------------------------------------------------------------------

    async def dead_letters(self) -> list[DeadLetter]:
        return await self.letters.all()

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        return await self.letters.replay(ids)

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        return await self.letters.purge(ids)

"""A running book: its broker connection, its consumers, publishing and request/reply."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from pydantic_core import to_jsonable_python

from . import ids
from .clock import Clock
from .delivery import Dispatcher, notify
from .envelope import Envelope, encode
from .errors import (
    ConfigurationError,
    PayloadTooLargeError,
    RequestFailedError,
    RequestTimeoutError,
)
from .retry import RetryPolicy
from .service import Handler
from .store import store_from_url
from .topic import Topic

if TYPE_CHECKING:
    from .book import EventBook
    from .brokers.base import Broker
    from .coordinator import Coordinator
    from .observe import Observer
    from .service import Service

log = logging.getLogger("eventbook")

DEFAULT_MAX_PAYLOAD = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SagaSettings:
    """How this process runs the book's sagas, if it has any."""

    store: str | None
    clock: Clock
    coordinate: bool


def journal_url(broker_url: str, store: str | None) -> str:
    """The saga journal: `store`, else the broker's own file (sqlite) or memory.

    Raises:
        ConfigurationError: a networked broker and no store.
    """
    if store:
        return store
    parts = urlsplit(broker_url)
    if parts.scheme == "memory":
        return "memory://"
    if parts.scheme == "sqlite":
        # The same file; of the broker's settings only the lease applies to sagas too.
        lease = parse_qs(parts.query).get("lease")
        path = broker_url.split("?", 1)[0]
        return f"{path}?lease={lease[-1]}" if lease else path
    raise ConfigurationError(
        f"sagas need a journal: pass store= (`--store`) with a sqlite:/// or postgresql:// "
        f"URL; the {parts.scheme}:// broker does not keep one"
    )


class Runtime:
    """Everything that exists only while a book runs; built by `EventBook.start`."""

    def __init__(
        self,
        book: EventBook,
        broker: Broker,
        services: list[Service],
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.book = book
        self.broker = broker
        self.services = services
        self.max_payload = max_payload
        self.observers: list[Observer] = book._observers
        self.loop = asyncio.get_running_loop()
        self.handlers: list[Handler] = []
        # Answers to this process's requests come back on a topic of its own.
        self._reply_topic: Topic[Any] = Topic(book, f"_reply.{ids.new_id()}", Any)
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        # An in-process broker may deliver in a sync publisher's own thread.
        self.publish_here: Callable[[Envelope], bool] | None = getattr(broker, "publish_here", None)
        self.sagas = SagaSettings(None, Clock(), True)
        self.coordinator: Coordinator | None = None

    async def open(self) -> None:
        await self.broker.connect()
        replies = Handler(
            "_replies",
            self._reply_topic.name,
            self._reply_topic,
            self._on_reply,
            RetryPolicy(retries=0),
        )
        await self.broker.consume(replies, Dispatcher(replies, self))
        for service in self.book.services.values():
            for group, topic in service.groups:
                await self.broker.declare(group, topic)
        for service in self.services:
            for handler in service.handlers():
                await self.broker.consume(handler, Dispatcher(handler, self))
                self.handlers.append(handler)
        if self.book.sagas:
            from .coordinator import Coordinator

            url = journal_url(self.broker.url, self.sagas.store)
            store = store_from_url(url)
            await store.open()
            lease = parse_qs(urlsplit(url).query).get("lease")
            self.coordinator = Coordinator(
                self, store, self.sagas.clock, lease=float(lease[-1]) if lease else 30.0
            )
            await self.coordinator.start(self.services, self.sagas.coordinate)

    async def close(self, drain_timeout: float) -> None:
        try:
            if self.coordinator is not None:
                await self.coordinator.stop(drain_timeout)
            await self.broker.drain(drain_timeout)
        finally:
            for waiter in self._waiting.values():
                waiter.cancel()
            await self.broker.close()
            if self.coordinator is not None:
                await self.coordinator.store.close()

    def wrap(
        self,
        topic: Topic[Any],
        payload: Any,
        source: str | None,
        parent: Envelope | None,
        replyto: str | None = None,
    ) -> tuple[Envelope, bytes | None]:
        """Validate `payload`; return its new envelope, and its bytes if the broker wants them.

        Raises:
            PayloadError: the payload does not match the topic's type.
            PayloadTooLargeError: the encoded event is over the payload limit.
        """
        if topic.book is not self.book:
            raise ConfigurationError(
                f"topic {topic.name!r} belongs to book {topic.book.name!r}, not {self.book.name!r}"
            )
        envelope = Envelope(
            topic.name, topic.payload.validate(payload), source or self.book.source, parent
        )
        if replyto is not None:
            envelope.replyto = replyto
        if not self.broker.encodes:
            return envelope, None
        return envelope, self.encode(topic, envelope)

    def encode(self, topic: Topic[Any], envelope: Envelope) -> bytes:
        body = encode(envelope, topic.payload.adapter.dump_json(envelope.data))
        if len(body) > self.max_payload:
            raise PayloadTooLargeError(
                f"event on topic {topic.name!r} is {len(body)} bytes, over the "
                f"{self.max_payload}-byte limit: send a reference to the data instead"
            )
        return body

    async def publish(
        self, topic: Topic[Any], payload: Any, source: str | None, parent: Envelope | None
    ) -> Envelope:
        """Validate, wrap and publish `payload`; return once the broker accepted it."""
        envelope, body = self.wrap(topic, payload, source, parent)
        if self.observers:
            self.notify_publishing(envelope)
        await self.broker.publish(envelope, body)
        return envelope

    def notify_publishing(self, envelope: Envelope) -> None:
        notify(self.observers, "publishing", envelope)

    async def ask(
        self,
        topic: Topic[Any],
        payload: Any,
        source: str | None,
        parent: Envelope | None,
    ) -> tuple[Envelope, asyncio.Future[Any]]:
        """Publish a request; return it and the future its first answer will resolve.

        The caller waits on the future (with its own clock) and calls `forget` after.
        """
        envelope, body = self.wrap(topic, payload, source, parent, self._reply_topic.name)
        # Registered before publishing: an in-process broker answers before publish() returns.
        waiter: asyncio.Future[Any] = self.loop.create_future()
        self._waiting[envelope.id] = waiter
        if self.observers:
            self.notify_publishing(envelope)
        try:
            await self.broker.publish(envelope, body)
        except BaseException:
            self.forget(envelope)
            raise
        return envelope, waiter

    def forget(self, request: Envelope) -> None:
        """Stop waiting for answers to `request`."""
        self._waiting.pop(request.id, None)

    async def request(
        self,
        topic: Topic[Any],
        payload: Any,
        timeout: float,
        source: str | None,
        parent: Envelope | None,
    ) -> Any:
        envelope, waiter = await self.ask(topic, payload, source, parent)
        try:
            answer = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise RequestTimeoutError(
                f"no reply to the request on topic {topic.name!r} within {timeout:g}s: "
                "is a service that subscribes to it running?"
            ) from None
        finally:
            self.forget(envelope)
        return self.answer(topic, answer)

    @staticmethod
    def answer(topic: Topic[Any], answer: Any) -> Any:
        """The result an answer carries, read as the topic's reply type.

        Raises:
            RequestFailedError: the answer says the handler failed.
        """
        if not answer.get("ok"):
            raise RequestFailedError(
                f"the handler of topic {topic.name!r} failed: {answer.get('error')}"
            )
        result = answer.get("result")
        if topic.reply_payload is not None:
            return topic.reply_payload.validate(result)
        return result

    async def reply(self, request: Envelope, result: Any, error: str | None) -> None:
        """Answer `request` with a handler's result, or with the error that ended it."""
        answer: dict[str, Any] = {"ok": error is None}
        if error is None:
            answer["result"] = to_jsonable_python(result)
        else:
            answer["error"] = error
        topic = Topic(self.book, request.replyto or "", Any)
        envelope, body = self.wrap(topic, answer, None, request)
        await self.broker.publish(envelope, body)

    async def _on_reply(self, answer: Any) -> None:
        from .context import current_event

        envelope = current_event()
        if envelope is None or envelope.causationid is None:
            return
        waiter = self._waiting.get(envelope.causationid)
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

"""`memory://`: the in-process broker for tests and scripts.

Deterministic, like the seed: `publish` delivers to every subscribed handler, in
subscription order, before it returns. Retries are timers on the event loop;
`drain` waits until every event published so far was handled or dead-lettered.
Nothing crosses a process and nothing survives it, so consumer groups have a
single member and there is no redelivery after a crash.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic_core import to_json

from ..delivery import Dispatcher, Verdict, fan_out, fan_out_here
from ..envelope import Envelope, encode
from ..service import Handler
from .base import DeadLetter, Deliver

log = logging.getLogger("eventbook.brokers.memory")


class _Parked:
    __slots__ = ("dispatcher", "envelope", "letter")

    def __init__(self, letter: DeadLetter, dispatcher: Dispatcher, envelope: Envelope) -> None:
        self.letter = letter
        self.dispatcher = dispatcher
        self.envelope = envelope


class MemoryBroker:
    """In-process broker; see the module docstring.

    It moves envelopes, not bytes, and skips the `Message` round trip: it asks the
    shared delivery code (`delivery.fan_out`) for verdicts and settles them here.
    """

    encodes = False

    def __init__(self, url: str = "memory://", namespace: str = "") -> None:
        self.url = url
        self.namespace = namespace
        self._routes: dict[str, list[Dispatcher]] = {}
        self._parked: dict[str, _Parked] = {}
        self._letter_ids = itertools.count(1)
        self._in_flight = 0  # retries scheduled and not yet settled
        self._idle: asyncio.Event | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def connect(self) -> None:
        self._routes.clear()
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop = asyncio.get_running_loop()

    async def declare(self, group: str, topic: str) -> None:
        pass  # nothing outlives the process: only handlers running here matter

    async def publish(self, envelope: Envelope, body: bytes | None) -> None:
        dispatchers = self._routes.get(envelope.type)
        if dispatchers:
            for dispatcher, verdict in await fan_out(envelope, dispatchers):
                self._settle(dispatcher, envelope, 1, verdict)

    def publish_here(self, envelope: Envelope) -> bool:
        """Deliver now, in this (non-loop) thread, if every handler is sync; else return False.

        Lets a sync publisher (`book.emit`) call sync handlers directly, as the seed
        does, instead of hopping to the event loop and back to worker threads.
        """
        dispatchers = self._routes.get(envelope.type)
        if not dispatchers:
            return True
        unsettled = fan_out_here(envelope, dispatchers)
        if unsettled is None:
            return False
        assert self._loop is not None
        for dispatcher, verdict in unsettled:
            self._loop.call_soon_threadsafe(self._settle, dispatcher, envelope, 1, verdict)
        return True

    async def consume(self, handler: Handler, deliver: Deliver) -> None:
        if not isinstance(deliver, Dispatcher):
            raise TypeError("memory:// delivers through eventbook's Dispatcher")
        self._routes.setdefault(handler.topic.name, []).append(deliver)

    async def drain(self, timeout: float) -> None:
        if self._idle is None:
            return
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("memory://: %d retries still pending after %gs", self._in_flight, timeout)

    async def close(self) -> None:
        self._routes.clear()

    async def dead_letters(self) -> list[DeadLetter]:
        return [parked.letter for parked in self._parked.values()]

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        chosen = list(self._parked) if ids is None else [i for i in ids if i in self._parked]
        for letter_id in chosen:
            parked = self._parked.pop(letter_id)
            self._schedule(parked.dispatcher, parked.envelope, 1, 0.0)
        return len(chosen)

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        chosen = list(self._parked) if ids is None else [i for i in ids if i in self._parked]
        for letter_id in chosen:
            del self._parked[letter_id]
        return len(chosen)

    def _settle(
        self, dispatcher: Dispatcher, envelope: Envelope, attempt: int, verdict: Verdict
    ) -> None:
        if verdict.retry_in is not None:
            self._schedule(dispatcher, envelope, attempt + 1, verdict.retry_in)
        else:
            self._park(dispatcher, envelope, attempt, verdict.reason, verdict.error)

    def _schedule(
        self, dispatcher: Dispatcher, envelope: Envelope, attempt: int, delay: float
    ) -> None:
        assert self._idle is not None, "memory:// broker used before connect()"
        self._in_flight += 1
        self._idle.clear()
        asyncio.get_running_loop().call_later(delay, self._redeliver, dispatcher, envelope, attempt)

    def _redeliver(self, dispatcher: Dispatcher, envelope: Envelope, attempt: int) -> None:
        task = asyncio.ensure_future(self._deliver_again(dispatcher, envelope, attempt))
        self._tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._tasks.discard)

    async def _deliver_again(
        self, dispatcher: Dispatcher, envelope: Envelope, attempt: int
    ) -> None:
        try:
            verdict = await dispatcher.handle(envelope, None, attempt)
            if verdict is not None:
                self._settle(dispatcher, envelope, attempt, verdict)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self._idle is not None:
                self._idle.set()

    def _park(
        self, dispatcher: Dispatcher, envelope: Envelope, attempts: int, reason: str, error: str
    ) -> None:
        letter_id = str(next(self._letter_ids))
        letter = DeadLetter(
            id=letter_id,
            event_id=envelope.id,
            topic=envelope.type,
            handler=dispatcher.handler.name,
            reason=reason,
            error=error,
            attempts=attempts,
            failed_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            body=encode(envelope, to_json(envelope.data)).decode(),
        )
        self._parked[letter_id] = _Parked(letter, dispatcher, envelope)

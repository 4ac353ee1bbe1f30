"""One consumer group's consumer in this process: claim, deliver, settle."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from typing import TYPE_CHECKING

from ...errors import BrokerError
from . import store

if TYPE_CHECKING:
    from ...envelope import Envelope
    from ...service import Handler
    from ..base import Deliver
    from .broker import SqliteBroker

log = logging.getLogger("eventbook.brokers.sqlite")


class SqliteMessage:
    """One claimed event of one consumer group."""

    __slots__ = ("_consumer", "attempt", "body", "envelope", "event_id", "followed", "seq")

    def __init__(self, consumer: Consumer, seq: int, event_id: str, body: bytes, attempt: int):
        self._consumer = consumer
        self.seq = seq
        self.event_id = event_id
        self.body: bytes | None = body
        self.envelope: Envelope | None = None  # decoding is the delivery path's job
        self.attempt = attempt
        self.followed = False  # more of its batch wait behind it (see `ack`)

    async def ack(self) -> None:
        consumer = self._consumer
        finish = functools.partial(store.finish, group=consumer.group, seq=self.seq)
        if consumer.concurrency > 1:
            # Handlers that finish together share the commit of their acks.
            await consumer.broker.write(finish)
        elif self.followed:
            # One at a time, with more of the batch waiting: the ack is not awaited but
            # joins the next commit (with the other acks and publishes of this loop turn)
            # while the next event is already being handled; a commit per event would
            # cost more than the rest of its delivery. It commits with the batch's last
            # ack at the latest, and before the next handler gets past its first `await`.
            # Should the process die first, the event comes back: at-least-once, as ever.
            consumer.broker.write.defer(finish, "ack event %s of %s", self.event_id, consumer.group)
        else:
            # The batch's last: commit at once, nothing to wait for.
            await consumer.broker.write.now(finish)

    async def retry(self, delay: float) -> None:
        consumer = self._consumer
        await consumer.broker.write(
            lambda db: store.retry_later(db, consumer.group, self.seq, delay)
        )

    async def dead_letter(self, reason: str, error: str) -> None:
        c = self._consumer
        attempts = self.attempt
        await c.broker.write(
            lambda db: store.park(
                db, c.group, c.topic, self.seq, self.event_id, reason, error, attempts
            )
        )


class Consumer:
    """Claims one group's events and hands them to the shared delivery path."""

    def __init__(self, broker: SqliteBroker, handler: Handler, deliver: Deliver) -> None:
        self.broker = broker
        self.group = handler.name
        self.topic = broker.channel(handler.topic.name)
        self.deliver = deliver
        self.concurrency = handler.concurrency
        self.slots = asyncio.Semaphore(handler.concurrency)
        self.in_flight: set[asyncio.Task[None]] = set()
        self.task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"eventbook-consume-{self.group}")

    async def _run(self) -> None:
        broker = self.broker
        limit = max(broker.settings.prefetch, self.concurrency)
        failures = 0
        while not broker.stopping:
            self.changed.clear()  # before claiming: a wake-up from now on is not lost
            try:
                rows = await broker.write(
                    lambda db: store.claim(
                        db, self.group, self.topic, broker.owner, limit, broker.settings.lease
                    )
                )
            except BrokerError as exc:
                # The file is unwell (disk full, I/O error): keep trying, loudly, slower.
                failures += 1
                log.error("%s: cannot claim events (%s); trying again", self.group, exc)
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))
                continue
            failures = 0
            if not rows:
                await self._idle()
                continue
            messages = [SqliteMessage(self, *row) for row in rows]
            last = len(messages) - 1
            for index, message in enumerate(messages):
                if self.concurrency > 1:
                    await self.slots.acquire()
                if broker.stopping:
                    if self.concurrency > 1:
                        self.slots.release()
                    await self._release(messages[index:])
                    return
                if self.concurrency == 1:
                    message.followed = index < last
                    await self._deliver(message)  # in order, one at a time: no task needed
                    continue
                task = asyncio.create_task(self._deliver_and_release(message))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)

    async def _deliver(self, message: SqliteMessage) -> None:
        try:
            await self.deliver(message)
        except Exception:
            # The delivery path settles bad input and failed handlers itself; what lands
            # here is the broker failing to settle. The lease runs out, the event comes back.
            log.exception("%s: could not settle event %s", self.group, message.event_id)

    async def _deliver_and_release(self, message: SqliteMessage) -> None:
        try:
            await self._deliver(message)
        finally:
            self.slots.release()

    async def _release(self, messages: list[SqliteMessage]) -> None:
        seqs = [message.seq for message in messages]
        owner = self.broker.owner
        await self.broker.write(lambda db: store.release(db, self.group, owner, seqs))

    async def _idle(self) -> None:
        """Sleep until something may have changed, or the group's next retry is due."""
        try:
            due = store.next_due(self.broker.database(), self.group, self.broker.owner)
        except sqlite3.OperationalError:
            due = time.time() + 0.05  # the file is busy for a moment: look again soon
        timeout = 1.0 if due is None else max(0.0, min(1.0, due - time.time()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # unlike wait_for, no task per wait
                await self.changed.wait()

    @staticmethod
    async def drain_all(consumers: list[Consumer], timeout: float) -> None:
        """Let in-flight handlers finish (up to `timeout`), then cancel what is left.

        A cancelled handler's event is not acked: it comes back when its lease runs out.
        """
        work: list[asyncio.Task[None]] = [c.task for c in consumers if c.task is not None]
        work += [task for c in consumers for task in c.in_flight]
        pending = {task for task in work if not task.done()}
        if pending and timeout > 0:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            if timeout > 0:
                log.warning("drain: %d handlers still running after %gs", len(pending), timeout)
            await asyncio.wait(pending)

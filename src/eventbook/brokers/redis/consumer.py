"""One consumer group's consumer in this process: read, take retries, deliver, settle.

Two tasks per group. The reader blocks in XREADGROUP on a connection of its own
(so `drain` can end the wait at once with CLIENT UNBLOCK). The keeper takes the
group's due retries and reclaims what dead consumers held (see `scripts.TAKE`).
Both hand events to the shared delivery path; `handler.concurrency` bounds how
many run at once, and with 1 they run one after the other, in stream order.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ...errors import BrokerError
from . import scripts
from .faults import SURVIVABLE, TRANSIENT, backoff
from .line import Line, pack

if TYPE_CHECKING:
    from ...envelope import Envelope
    from ...service import Handler
    from ..base import Deliver
    from .broker import RedisBroker

log = logging.getLogger("eventbook.brokers.redis")

#: What a consume loop outlives: it logs, waits and tries again.
RECOVERABLE: tuple[type[BaseException], ...] = (*TRANSIENT, BrokerError)
#: How long one XREADGROUP waits for new entries before it is sent again (ms).
BLOCK_MS = 2000
#: How long a command may take before its connection is given up as dead (s).
COMMAND_TIMEOUT = 10.0


class RedisMessage:
    """One delivery of one stream entry to one consumer group."""

    __slots__ = ("_consumer", "attempt", "body", "entry", "envelope", "started")

    def __init__(self, consumer: Consumer, entry: bytes, body: bytes, attempt: int) -> None:
        self._consumer = consumer
        self.entry = entry
        self.body: bytes | None = body
        self.envelope: Envelope | None = None  # decoding is the delivery path's job
        self.attempt = attempt
        self.started = False

    async def ack(self) -> None:
        # Sent with the other acks of this moment, in one XACK (see Consumer.ack).
        self._consumer.ack(self.entry)

    async def retry(self, delay: float) -> None:
        await self._consumer.retry(self, delay)

    async def dead_letter(self, reason: str, error: str) -> None:
        await self._consumer.dead_letter(self, reason, error)


class Consumer:
    """Reads one group's stream and hands its events to the shared delivery path."""

    def __init__(self, broker: RedisBroker, handler: Handler, deliver: Deliver) -> None:
        self.broker = broker
        self.group = handler.name
        self.topic = handler.topic.name
        self.stream = broker.keys.stream(self.topic)
        self.retries = broker.keys.retries(self.topic, self.group)
        self.deliver = deliver
        self.concurrency = handler.concurrency
        self.slots = asyncio.Semaphore(handler.concurrency)
        #: Replies to this process's requests: nobody else reads them; gone on close.
        self.reply_channel = self.topic.startswith("_reply.")
        #: Entries this consumer holds (read, not settled): renewed, released on drain.
        self.held: dict[bytes, RedisMessage] = {}
        self.in_flight: set[asyncio.Task[None]] = set()
        self.tasks: list[asyncio.Task[None]] = []
        #: Set when this process schedules a retry, so that the keeper looks again.
        self.wake = asyncio.Event()
        #: The reader connection's id on the server, for CLIENT UNBLOCK.
        self.client_id: int | None = None
        #: Look for entries delivered to this consumer that it does not hold: on start,
        #: and after a lost connection (a read's reply may have been lost with it).
        self.lost = True
        self._group_bytes = self.group.encode()
        self._acks: list[bytes] = []
        self._acking: asyncio.Task[None] | None = None
        self._read_command = pack(
            "XREADGROUP", "GROUP", self.group, broker.consumer,
            "COUNT", max(broker.settings.prefetch, handler.concurrency),
            "BLOCK", BLOCK_MS, "STREAMS", self.stream, ">",
        )  # fmt: skip
        #: The reader's connection, and the acker's (acks while the reader waits).
        self.reader = Line(broker.pool)
        self.acker = Line(broker.pool)

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self._read(), name=f"eventbook-redis-read-{self.group}"),
            asyncio.create_task(self._keep(), name=f"eventbook-redis-keep-{self.group}"),
        ]

    # -- reading -----------------------------------------------------------------------

    async def _read(self) -> None:
        broker = self.broker
        line = self.reader
        failures = 0
        try:
            while not broker.stopping:
                acks: list[bytes] = []
                try:
                    if self.client_id is None:
                        self.client_id = int(await line.execute_command("CLIENT", "ID"))
                    if self.lost:
                        recovered = await self._recover()
                        self.lost = False
                        await self._hand_over(recovered)
                        continue
                    # The acks of what was just handled go with the next read: one write,
                    # one round trip.
                    acks, self._acks = self._acks, []
                    async with asyncio.timeout(BLOCK_MS / 1000 + COMMAND_TIMEOUT):
                        if acks:
                            xack = pack("XACK", self.stream, self.group, *acks)
                            await line.send(xack + self._read_command)
                            await line.reply()
                        else:
                            await line.send(self._read_command)
                        reply = await line.reply()
                    acks = []
                except ResponseError as exc:
                    await line.reset()  # the reply to a pair's second command may be unread
                    failures += 1
                    await self._response_error(exc, failures)
                    continue
                except RECOVERABLE as exc:
                    failures += 1
                    self.client_id = None
                    self.lost = True
                    await line.reset()
                    log.warning(
                        "%s: cannot read %s (%s); trying again", self.group, self.stream, exc
                    )
                    await asyncio.sleep(backoff(failures))
                    continue
                finally:
                    if acks:
                        self._acks[:0] = acks  # not sent: they go with the next try
                failures = 0
                if reply:
                    await self._hand_over(self._messages(reply[0][1]))
        finally:
            self.client_id = None
            await line.close()

    def _messages(self, entries: list[Any]) -> list[RedisMessage]:
        """Messages of newly read entries: a first delivery each (the server's count is 1)."""
        messages = []
        for entry, flat in entries:
            if len(flat) == 2 and flat[0] == b"event":
                body = flat[1]
            else:
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                target = fields.get(b"group")
                if target is not None and target != self._group_bytes:
                    self.ack(entry)  # a replayed dead letter of another group
                    continue
                body = fields.get(b"event", b"")
            messages.append(RedisMessage(self, entry, body, 1))
        return messages

    async def _recover(self) -> list[RedisMessage]:
        """Events delivered to this consumer whose reply was lost with a connection."""
        broker = self.broker
        held = list(self.held)
        async with asyncio.timeout(COMMAND_TIMEOUT):
            rows = await scripts.MINE(
                broker.client,
                (self.stream, self.retries),
                (self.group, broker.consumer, len(held) + 1000, *held),
            )
        return [self._taken(row) for row in rows]

    def _taken(self, row: Sequence[Any]) -> RedisMessage:
        entry, flat, deliveries = row
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return RedisMessage(self, entry, fields.get(b"event", b""), int(deliveries))

    async def _response_error(self, exc: ResponseError, failures: int) -> None:
        if str(exc).startswith("NOGROUP"):
            # The stream or the group is gone (a server restarted without persistence, or
            # a reply channel expired): create it again, from the start of what is there.
            log.warning("%s: consumer group missing on %s; creating it", self.group, self.stream)
            try:
                await self.broker.create_group(self, "0")
                return
            except TRANSIENT:
                pass
        else:
            log.error("%s: the server refused a read of %s: %s", self.group, self.stream, exc)
        await asyncio.sleep(backoff(failures))

    # -- the keeper: due retries, and reclaiming what dead consumers held -----------------

    async def _keep(self) -> None:
        broker = self.broker
        loop = asyncio.get_running_loop()
        lease_ms = math.ceil(broker.settings.lease * 1000)
        every = min(broker.settings.lease / 4, 5.0)
        cursor: Any = "0-0"
        next_reclaim = 0.0  # reclaim at once on start: a dead predecessor's work waits
        failures = 0
        while not broker.stopping:
            self.wake.clear()
            reclaim = not self.reply_channel and loop.time() >= next_reclaim
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    rows, cursor_after, wait = await scripts.TAKE(
                        broker.client,
                        (self.stream, self.retries),
                        (
                            self.group,
                            broker.consumer,
                            lease_ms,
                            cursor if reclaim else "",
                            broker.settings.prefetch,
                        ),
                    )
            except ResponseError as exc:
                failures += 1
                await self._response_error(exc, failures)
                continue
            except TRANSIENT as exc:
                failures += 1
                self.lost = True
                log.warning("%s: cannot take retries (%s); trying again", self.group, exc)
                await asyncio.sleep(backoff(failures))
                continue
            failures = 0
            more = False
            if reclaim:
                cursor = cursor_after
                more = cursor not in (b"0-0", "0-0")
                if not more:
                    next_reclaim = loop.time() + every
            messages = [self._taken(row) for row in rows]
            if messages:
                await self._hand_over(messages)
                continue
            if more:
                continue
            timeout = math.inf if self.reply_channel else next_reclaim - loop.time()
            if wait >= 0:
                timeout = min(timeout, wait / 1000)
            try:
                async with asyncio.timeout(max(0.0, min(timeout, 60.0))):
                    await self.wake.wait()
            except TimeoutError:
                pass

    # -- delivering --------------------------------------------------------------------

    async def _hand_over(self, messages: list[RedisMessage]) -> None:
        """Deliver `messages` in order, at most `concurrency` at once.

        Stops at a drain: what was not started stays held, and is released.
        """
        held = self.held
        for message in messages:
            held[message.entry] = message
        for message in messages:
            await self.slots.acquire()
            if self.broker.stopping:
                self.slots.release()
                return
            if self.concurrency == 1:
                try:
                    await self._run(message)  # in order, one at a time: no task needed
                finally:
                    self.slots.release()
                continue
            task = asyncio.create_task(self._run_and_release(message))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

    async def _run(self, message: RedisMessage) -> None:
        message.started = True
        try:
            await self.deliver(message)
        except Exception:
            # The delivery path settles bad input and failed handlers itself; what lands
            # here is the broker failing to settle. Not renewed any more, the event is
            # reclaimed after the lease and comes back.
            log.exception("%s: could not settle entry %s", self.group, message.entry)
        # Not when cancelled (a drain ran out of time): it stays held, and is released.
        self.held.pop(message.entry, None)

    async def _run_and_release(self, message: RedisMessage) -> None:
        try:
            await self._run(message)
        finally:
            self.slots.release()

    # -- settling ----------------------------------------------------------------------

    def ack(self, entry: bytes) -> None:
        """Queue an ack: sent with the reader's next read when that comes right away (the
        handlers of a batch ran without waiting), else by the acker, in one XACK.

        The handler has returned; an ack lost with the process means the event is
        handled again (at least once), like one lost between handler and ack.
        """
        if not self._acks and self._acking is None:
            asyncio.get_running_loop().call_soon(self._kick_acker)
        self._acks.append(entry)

    def _kick_acker(self) -> None:
        if self._acks and self._acking is None:
            self._acking = asyncio.create_task(self._send_acks())

    async def _send_acks(self) -> None:
        """Send queued acks, one XACK at a time: those queued meanwhile go in the next."""
        try:
            while self._acks:
                entries, self._acks = self._acks, []
                try:
                    await self.broker.reliably(
                        "ack events",
                        functools.partial(
                            self.acker.execute_command, "XACK", self.stream, self.group, *entries
                        ),
                    )
                except Exception as exc:
                    # Still pending and no longer renewed: reclaimed after the lease.
                    log.error("%s: %d acks lost (%s)", self.group, len(entries), exc)
        finally:
            self._acking = None

    async def flush_acks(self) -> None:
        """Send every queued ack (the consumer is stopping)."""
        if self._acking is None and self._acks:
            self._acking = asyncio.create_task(self._send_acks())
        if self._acking is not None:
            await asyncio.shield(self._acking)

    async def close(self) -> None:
        await self.acker.close()

    async def retry(self, message: RedisMessage, delay: float) -> None:
        broker = self.broker
        await broker.reliably(
            "schedule a retry",
            lambda: scripts.RETRY(
                broker.client, (self.retries,), (math.ceil(delay * 1000), message.entry)
            ),
        )
        self.wake.set()

    async def dead_letter(self, message: RedisMessage, reason: str, error: str) -> None:
        broker = self.broker
        letter = (
            "event", message.body or b"", "event_id", _event_id(message.body),
            "topic", self.topic, "group", self.group, "reason", reason, "error", error,
            "attempts", message.attempt, "entry", message.entry,
        )  # fmt: skip
        await broker.reliably(
            "dead-letter an event",
            lambda: scripts.DEAD(
                broker.client,
                (self.stream, broker.keys.dead),
                (self.group, message.entry, *letter),
            ),
        )

    async def release(self) -> None:
        """Give back what this consumer holds: other consumers of the group take it now."""
        broker = self.broker
        started = [entry for entry, message in self.held.items() if message.started]
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await scripts.RELEASE(
                    broker.client,
                    (self.stream, self.retries),
                    (self.group, broker.consumer, RELEASED_IDLE_MS, *started),
                )
        except SURVIVABLE as exc:
            log.warning("%s: could not give back held events (%s)", self.group, exc)
        self.held.clear()

    async def unblock(self) -> None:
        """End the reader's wait for new entries at once (it is stopping)."""
        reader = self.tasks[0] if self.tasks else None
        deadline = asyncio.get_running_loop().time() + BLOCK_MS / 1000 + 1
        while reader is not None and not reader.done():
            if self.client_id is not None:
                try:
                    await self.broker.client.execute_command("CLIENT", "UNBLOCK", self.client_id)
                except SURVIVABLE:
                    return
            # The read may not have reached the server yet: unblock it again shortly.
            await asyncio.wait({reader}, timeout=0.02)
            if asyncio.get_running_loop().time() > deadline:
                return


#: Idle time given to released entries: past any consumer's lease, so claimable now.
RELEASED_IDLE_MS = 10**10


def _event_id(body: bytes | None) -> str:
    """The CloudEvent's id, for the dead-letter record ('' if the body is not one)."""
    try:
        event = json.loads(body or b"")
        return str(event["id"]) if isinstance(event, dict) and "id" in event else ""
    except (ValueError, UnicodeDecodeError):
        return ""

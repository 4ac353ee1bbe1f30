"""One handler's pull consumer in this process: ask for events, deliver them, settle them.

The consumer keeps up to `prefetch` events asked for, buffered or in its handler's
hands: it sends a pull request (`$JS.API.CONSUMER.MSG.NEXT`) for what is missing
once half of it is, and the server streams the events to this consumer's inbox
as they arrive. A pull request expires after `EXPIRES` seconds (the server then
says how many of its events it did not send), and while it waits the server
sends a heartbeat every `HEARTBEAT` seconds: silence for three heartbeats means
the requests are gone (a restarted server, a deleted consumer), so the consumer
checks that its durable consumer exists and asks again.

Attempt counts are the server's: `num_delivered` from the message's `$JS.ACK`
reply subject. What this process holds (buffered or being handled) is kept
claimed by `+WPI` (in progress) every third of `ack_wait`, however long a handler
runs; if the process dies, the server delivers those events again after `ack_wait`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING

from nats.errors import Error as NatsError

from ...errors import BrokerError
from . import names

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from ...envelope import Envelope
    from ...service import Handler
    from ..base import Deliver
    from .broker import NatsBroker

log = logging.getLogger("eventbook.brokers.nats")

#: Seconds a pull request waits on the server for events before it expires.
EXPIRES = 30.0
#: Seconds between the server's heartbeats on a waiting pull request.
HEARTBEAT = 5.0
#: Seconds a draining consumer waits for the server to confirm it stopped sending.
UNSUBSCRIBE_WAIT = 5.0


def delivery(reply: str) -> tuple[int, int]:
    """(num_delivered, stream sequence) from a `$JS.ACK.…` reply subject.

    Raises:
        BrokerError: the message did not come from a JetStream consumer.
    """
    tokens = reply.split(".")
    if tokens[:2] == ["$JS", "ACK"]:
        if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
            return int(tokens[4]), int(tokens[5])
        if len(tokens) >= 11:  # with a domain and an account hash before <stream>
            return int(tokens[6]), int(tokens[7])
    raise BrokerError(f"not a JetStream delivery (reply subject {reply!r})")


class NatsMessage:
    """One delivery of one event to one handler."""

    __slots__ = ("_consumer", "attempt", "body", "envelope", "msg", "seq")

    def __init__(self, consumer: Consumer, msg: Msg) -> None:
        self._consumer = consumer
        self.msg = msg
        self.attempt, self.seq = delivery(msg.reply)
        self.body: bytes | None = msg.data
        self.envelope: Envelope | None = None  # decoding is the delivery path's job

    async def ack(self) -> None:
        await self.msg.ack()

    async def retry(self, delay: float) -> None:
        await self.msg.nak(delay=delay)

    async def dead_letter(self, reason: str, error: str) -> None:
        # Stored (and confirmed) first: a crash in between delivers the event again,
        # and the dead letter's Nats-Msg-Id keeps a second copy out of the store.
        await self._consumer.broker.letters.park(self._consumer, self, reason, error)
        await self.msg.ack()


class Consumer:
    """Pulls one (handler, topic) consumer's events and hands them to the delivery path."""

    def __init__(self, broker: NatsBroker, handler: Handler, deliver: Deliver, name: str) -> None:
        self.broker = broker
        self.name = name
        self.group = handler.name
        self.topic = handler.topic.name
        self.deliver = deliver
        self.concurrency = handler.concurrency
        self.prefetch = max(broker.settings.prefetch, handler.concurrency)
        self._threshold = max(1, self.prefetch // 2)
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{broker.stream}.{name}"
        self._inbox = broker.nc.new_inbox()
        self._sub: Subscription | None = None
        self.buffer: deque[Msg] = deque()  # received, not started
        self.held: set[NatsMessage] = set()  # started, not settled
        self.tasks: set[asyncio.Task[None]] = set()
        self.task: asyncio.Task[None] | None = None
        self.asked = 0  # events asked for by pull requests and not received yet
        self.heard = 0.0  # when the server last sent something to the inbox
        self.verify = False  # check that the server still has the consumer
        self.stopping = False
        self.delivering = False  # the loop itself runs a handler (concurrency 1)
        self._slots = asyncio.Semaphore(handler.concurrency)
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self._sub = await self.broker.nc.subscribe(self._inbox, cb=self._receive)
        self.task = asyncio.create_task(self._run(), name=f"eventbook-nats-{self.name}")

    def reset(self) -> None:
        """The connection came back: earlier pull requests are gone with the old one."""
        self.asked = 0
        self.verify = True
        self._changed.set()

    # -- receiving (the inbox subscription's callback: never blocks) ------------------

    async def _receive(self, msg: Msg) -> None:
        loop = asyncio.get_running_loop()
        self.heard = loop.time()
        headers = msg.headers
        if not msg.data and headers is not None and "Status" in headers:
            self._status(headers)
            return
        if self.asked > 0:
            self.asked -= 1
        if self.stopping:
            await self._give_back(msg)
            return
        if headers is not None:
            target = headers.get(names.REPLAY_FOR)
            if target is not None and target != self.name:
                await msg.ack()  # a dead letter replayed for another handler of this topic
                return
        self.buffer.append(msg)
        self._changed.set()

    def _status(self, headers: dict[str, str]) -> None:
        status = headers["Status"]
        if status == "100":
            return  # idle heartbeat: the pull requests are alive
        left = headers.get("Nats-Pending-Messages")
        if status in ("404", "408", "409") and left is not None:
            self.asked = max(0, self.asked - int(left))  # that request is over
        else:
            self.asked = 0  # a request ended without saying how much of it: ask anew
        if status == "409":
            description = headers.get("Description", "")
            if "Deleted" in description:
                self.verify = True
            log.warning("%s: NATS ended a pull request: %s", self.name, description)
        elif status not in ("404", "408"):
            self.verify = True
            log.warning("%s: unexpected status %s from NATS (%s)", self.name, status, headers)
        self._changed.set()

    def check(self, now: float) -> None:
        """Called every few seconds: silence for three heartbeats means asking again."""
        if self.asked and now - self.heard > 3 * HEARTBEAT:
            log.warning("%s: NATS went silent; asking for events again", self.name)
            self.asked = 0
            self.verify = True
            self._changed.set()

    # -- the loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self.stopping:
            try:
                if self.verify:
                    await self.broker.ensure_consumer(self.name, self.group, self.topic)
                    self.verify = False
                room = self.prefetch - self.asked - len(self.buffer) - len(self.held)
                if room >= self._threshold:
                    await self._pull(room)
                failures = 0
            except Exception as exc:  # the loop must outlive any trouble: log, back off
                failures += 1
                log.error("%s: cannot ask NATS for events (%s); trying again", self.name, exc)
                await asyncio.sleep(min(5.0, 0.05 * 2**failures))
                continue
            if not self.buffer:
                self._changed.clear()
                await self._changed.wait()
                continue
            msg = self.buffer.popleft()
            try:
                message = NatsMessage(self, msg)
            except (BrokerError, ValueError) as exc:
                log.error("%s: %s; dropped", self.name, exc)
                continue
            self.held.add(message)
            if self.concurrency == 1:
                self.delivering = True
                await self._deliver(message)  # in order, one at a time: no task needed
                self.delivering = False
                continue
            await self._slots.acquire()
            task = asyncio.create_task(self._deliver_and_release(message))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pull(self, count: int) -> None:
        request = b'{"batch":%d,"expires":%d,"idle_heartbeat":%d}' % (
            count,
            int(EXPIRES * 1e9),
            int(HEARTBEAT * 1e9),
        )
        await self.broker.nc.publish(self._next, request, reply=self._inbox)
        self.asked += count
        self.heard = asyncio.get_running_loop().time()

    async def _deliver(self, message: NatsMessage) -> None:
        try:
            await self.deliver(message)
        except Exception:
            # The delivery path settles bad input and failed handlers itself; what lands
            # here is the broker failing to settle: the event comes back after ack_wait.
            log.exception("%s: could not settle event #%d", self.name, message.seq)
        # Not reached when cancelled: drain() hands the event back.
        self.held.discard(message)

    async def _deliver_and_release(self, message: NatsMessage) -> None:
        try:
            await self._deliver(message)
        finally:
            self._slots.release()

    # -- keeping claims, and giving events back ---------------------------------------

    async def renew(self) -> None:
        """Tell the server that what this consumer holds is still being worked on."""
        for msg in [*self.buffer, *(message.msg for message in self.held)]:
            await msg.in_progress()

    @staticmethod
    async def _give_back(msg: Msg) -> None:
        """Return an event that was never started, for another consumer (nak, no delay)."""
        with contextlib.suppress(NatsError):
            await msg.nak()

    async def stop_taking(self) -> None:
        """Stop pulling and starting events; give back those received and not started."""
        self.stopping = True
        self._changed.set()
        if self.task is not None and not self.delivering:
            # Unless it runs a handler (concurrency 1), the loop may wait: for a free
            # slot, the server, or a back-off. It must not start one more event.
            self.task.cancel()
        await self._unsubscribe()
        while self.buffer:
            await self._give_back(self.buffer.popleft())

    async def _unsubscribe(self) -> None:
        """Close the inbox, so that the server stops sending to this consumer's pull requests.

        Draining the subscription waits until the server has seen the unsubscribe and
        what it sent before has gone through `_receive`, which gives it back: without
        that, an event on its way would wait for `ack_wait`, and one given back would
        come straight back to a pull request of this consumer that is still waiting.
        """
        sub, self._sub = self._sub, None
        if sub is None:
            return
        nc = self.broker.nc
        with contextlib.suppress(NatsError, TimeoutError):
            if nc.is_connected:
                await asyncio.wait_for(sub.drain(), UNSUBSCRIBE_WAIT)  # type: ignore[no-untyped-call]
            elif not nc.is_closed:
                await sub.unsubscribe()

    def work(self) -> list[asyncio.Task[None]]:
        """The tasks still running handlers (the loop itself runs them at concurrency 1)."""
        tasks = [task for task in self.tasks if not task.done()]
        if self.task is not None and not self.task.done():
            tasks.append(self.task)
        return tasks

    async def release(self) -> None:
        """After the drain: give back what is held still (cancelled handlers), unsubscribe."""
        for message in list(self.held):
            await self._give_back(message.msg)
        self.held.clear()
        while self.buffer:
            await self._give_back(self.buffer.popleft())
        await self._unsubscribe()

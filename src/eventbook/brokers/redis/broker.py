"""The `redis://` broker: connection, publishing, the consumers' lifecycle, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError

from ...errors import BrokerError, redact
from ..base import DeadLetter, Deliver
from . import letters, scripts
from .consumer import COMMAND_TIMEOUT, Consumer
from .faults import SURVIVABLE, TRANSIENT, backoff
from .line import Line
from .settings import Keys, RedisSettings

if TYPE_CHECKING:
    from ...envelope import Envelope
    from ...service import Handler

log = logging.getLogger("eventbook.brokers.redis")

T = TypeVar("T")

#: Publishes sent in one script call at most (a script holds the server while it runs).
MAX_BATCH = 500
#: The oldest Redis with what this broker uses (XAUTOCLAIM, XADD NOMKSTREAM, MINID).
MIN_VERSION = (6, 2)

_warned_volatile: set[str] = set()


class Commands(Protocol):
    """What the broker uses of a redis-py client (whose methods are not annotated)."""

    async def execute_command(self, *args: Any, **options: Any) -> Any: ...


class RedisBroker:
    """Redis Streams broker; see `eventbook.brokers.redis`."""

    encodes = True

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.settings = RedisSettings.from_url(url)
        self.keys = Keys(namespace)
        # Unique per broker (so per process), stable while it runs: its pending entries
        # are its own, and a dead process's are reclaimed by the others.
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.stopping = False
        self._pool: ConnectionPool | None = None
        self._client: Redis | None = None
        self._consumers: list[Consumer] = []
        self._background: list[asyncio.Task[None]] = []
        self._outbox: list[tuple[str, str, bytes, asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._sending = False
        self._publisher: Line | None = None
        self._drained = False
        self._volatile = False

    # -- lifecycle -------------------------------------------------------------------

    async def connect(self) -> None:
        settings = self.settings
        pool = ConnectionPool.from_url(
            settings.server,
            socket_connect_timeout=settings.connect_timeout,
            # No timeout per socket operation (it costs a task per command on 3.11):
            # every command runs under a deadline of ours instead, see `reliably`.
            socket_timeout=None,
            # Never retried inside redis-py: consume loops and publishes do it, knowing
            # what is safe to send again.
            retry=Retry(NoBackoff(), 0),
            client_name=f"eventbook:{self.consumer}",
            # RESP2: replies of the same shape on every server version this supports.
            protocol=2,
            # Each consumer group holds one connection for its blocking reads.
            max_connections=10_000,
        )
        client = Redis(connection_pool=pool)
        commands: Commands = client
        shown = redact(self.url)
        try:
            async with asyncio.timeout(settings.connect_timeout + 1):
                server = await commands.execute_command("INFO", "server")
                persistence = await commands.execute_command("INFO", "persistence")
        except AuthenticationError as exc:
            await _dispose(client, pool)
            raise BrokerError(
                f"the Redis server at {shown} refused the credentials ({exc}): "
                "check the user and password in the URL"
            ) from None
        except SURVIVABLE as exc:
            await _dispose(client, pool)
            reason = (str(exc) or type(exc).__name__).rstrip(".")
            raise BrokerError(
                f"cannot reach the Redis server at {shown}: {reason}; is it running, "
                "and is the URL right (redis://host:6379/0)?"
            ) from None
        version = str(_info(server).get("redis_version", "0"))
        if tuple(int(part) for part in version.split(".")[:2]) < MIN_VERSION:
            await _dispose(client, pool)
            raise BrokerError(
                f"the Redis server at {shown} is version {version}; the redis:// broker "
                "needs Redis 6.2 or newer (XAUTOCLAIM)"
            )
        self._volatile = str(_info(persistence).get("aof_enabled", "1")) == "0"
        self._pool, self._client = pool, client
        self._publisher = Line(pool)
        self.stopping = self._drained = False
        self._background = [
            asyncio.create_task(self._renew_leases(), name="eventbook-redis-leases"),
            asyncio.create_task(self._tidy_now_and_then(), name="eventbook-redis-tidy"),
        ]

    async def drain(self, timeout: float) -> None:
        self.stopping = True
        consumers = self._consumers
        for consumer in consumers:
            consumer.wake.set()
        unblocking = [asyncio.create_task(consumer.unblock()) for consumer in consumers]
        work = {t for c in consumers for t in (*c.tasks, *c.in_flight) if not t.done()}
        if work and timeout > 0:
            _, work = await asyncio.wait(work, timeout=timeout)
        for task in [*work, *unblocking]:
            task.cancel()
        if work:
            if timeout > 0:
                log.warning("drain: %d handlers still running after %gs", len(work), timeout)
            await asyncio.wait(work)
        await asyncio.gather(*unblocking, return_exceptions=True)
        for consumer in consumers:
            await consumer.flush_acks()
            await consumer.release()
        self._drained = True

    async def close(self) -> None:
        self.stopping = True
        if self._client is not None and not self._drained:
            await self.drain(0)
        for task in self._background:
            task.cancel()
        for task in [*self._background, *([self._sender] if self._sender else [])]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._background = []
        client, pool = self._client, self._pool
        if client is not None and pool is not None:
            channels = [c for c in self._consumers if c.reply_channel]
            if channels:
                # This process's reply channels: nobody else reads them.
                keys = [key for c in channels for key in (c.stream, c.retries)]
                with contextlib.suppress(*SURVIVABLE):
                    async with asyncio.timeout(COMMAND_TIMEOUT):
                        await self.client.execute_command("DEL", *keys)
            for consumer in self._consumers:
                await consumer.close()
            if self._publisher is not None:
                await self._publisher.close()
            await _dispose(client, pool)
        self._client = self._pool = self._publisher = None
        self._consumers = []

    # -- publishing and consuming ----------------------------------------------------

    async def declare(self, group: str, topic: str) -> None:
        stream = self.keys.stream(topic)
        await self.reliably("create a consumer group", lambda: self._create(stream, group, "$"))

    async def create_group(self, consumer: Consumer, start: str) -> None:
        """Create `consumer`'s group (and stream) unless it exists; from `start` ('$': now)."""
        await self._create(consumer.stream, consumer.group, start)
        if consumer.reply_channel:
            await self.client.execute_command("EXPIRE", consumer.stream, self.reply_ttl)

    async def _create(self, stream: str, group: str, start: str) -> None:
        try:
            await self.client.execute_command("XGROUP", "CREATE", stream, group, start, "MKSTREAM")
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    async def publish(self, envelope: Envelope, body: bytes | None) -> None:
        if body is None:
            raise BrokerError("redis:// publishes encoded events only")
        done = asyncio.get_running_loop().create_future()
        self._outbox.append((envelope.type, envelope.id, body, done))
        if not self._sending:
            # Nobody is sending: this publish sends at once, itself. Publishes made
            # while it waits go together in one script call, sent by a task after it.
            self._sending = True
            try:
                await self._append(self._take())
            except BaseException:
                if done.done() and not done.cancelled():
                    done.exception()  # this publish is being cancelled: nobody will look
                raise
            finally:
                if self._outbox:
                    self._sender = asyncio.create_task(self._send())
                else:
                    self._sending = False
        await done

    def _take(self) -> list[tuple[str, str, bytes, asyncio.Future[None]]]:
        batch, self._outbox = self._outbox[:MAX_BATCH], self._outbox[MAX_BATCH:]
        return batch

    async def _send(self) -> None:
        try:
            while self._outbox:
                await self._append(self._take())
        finally:
            self._sending = False
            self._sender = None

    async def _append(self, batch: list[tuple[str, str, bytes, asyncio.Future[None]]]) -> None:
        keys = self.keys
        names: list[str] = []
        args: list[Any] = [math.ceil(self.settings.dedupe * 1000)]
        for topic, event_id, body, _ in batch:
            names += (keys.stream(topic), keys.dedupe(event_id))
            args += ("r" if topic.startswith("_reply.") else "", body)
        try:
            # Sent again until confirmed: the dedupe key makes a re-send of an event
            # that was appended (its confirmation lost) append nothing.
            await self.reliably("publish", lambda: scripts.PUBLISH(self.publisher, names, args))
        except BaseException as exc:
            error = exc if isinstance(exc, BrokerError) else None
            for *_, done in batch:
                if not done.done():
                    done.set_exception(
                        BrokerError(str(error) if error else "redis://: the publish was cancelled")
                    )
            if error is None:
                raise
            return
        for *_, done in batch:
            if not done.done():
                done.set_result(None)

    async def consume(self, handler: Handler, deliver: Deliver) -> None:
        shown = redact(self.settings.server)
        if self._volatile and shown not in _warned_volatile:
            _warned_volatile.add(shown)  # once per server and process; tools never consume
            log.warning(
                "the Redis server at %s keeps no append-only file: events are lost if it "
                "restarts (durable: appendonly yes, appendfsync always)",
                shown,
            )
        consumer = Consumer(self, handler, deliver)
        await self.reliably("create a consumer group", lambda: self.create_group(consumer, "$"))
        self._consumers.append(consumer)
        consumer.start()

    # -- dead letters (see `letters`) -------------------------------------------------

    async def dead_letters(self) -> list[DeadLetter]:
        return await letters.read(self)

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        return await letters.replay(self, ids)

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        return await letters.purge(self, ids)

    # -- plumbing used by the consumers ----------------------------------------------

    @property
    def client(self) -> Commands:
        if self._client is None:
            raise BrokerError("the redis:// broker is not connected")
        return self._client

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            raise BrokerError("the redis:// broker is not connected")
        return self._pool

    @property
    def publisher(self) -> Line:
        if self._publisher is None:
            raise BrokerError("the redis:// broker is not connected")
        return self._publisher

    @property
    def reply_ttl(self) -> int:
        """Seconds a reply channel outlives its process's last renewal (a killed process)."""
        return max(60, math.ceil(6 * self.settings.trim))

    async def reliably(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call` until it succeeds, through reconnects, for up to `publish_timeout`.

        Raises:
            BrokerError: the server refused it, or was unreachable all that time.
        """
        loop = asyncio.get_running_loop()
        limit = self.settings.publish_timeout
        deadline = loop.time() + limit
        failures = 0
        while True:
            try:
                async with asyncio.timeout(min(COMMAND_TIMEOUT, deadline - loop.time())):
                    return await call()
            except TRANSIENT as exc:
                failures += 1
                pause = backoff(failures)
                if loop.time() + pause >= deadline:
                    reason = (str(exc) or type(exc).__name__).rstrip(".")
                    raise BrokerError(
                        f"redis://: could not {what} within {limit:g}s ({reason}); "
                        f"is the server at {redact(self.url)} up?"
                    ) from None
                if failures == 1:
                    log.warning("redis://: cannot %s yet (%s); trying again", what, exc)
                await asyncio.sleep(pause)
            except ResponseError as exc:
                raise BrokerError(
                    f"the Redis server at {redact(self.url)} refused to {what}: {exc}"
                ) from None

    async def _renew_leases(self) -> None:
        """Keep what this process holds from being reclaimed, however long handlers run."""
        while True:
            await asyncio.sleep(self.settings.lease / 3)
            for consumer in self._consumers:
                held = list(consumer.held)
                for lo in range(0, len(held), MAX_BATCH):
                    try:
                        async with asyncio.timeout(COMMAND_TIMEOUT):
                            await scripts.RENEW(
                                self.client,
                                (consumer.stream,),
                                (consumer.group, self.consumer, *held[lo : lo + MAX_BATCH]),
                            )
                    except SURVIVABLE as exc:
                        log.warning("%s: cannot renew leases (%s)", consumer.group, exc)

    async def _tidy_now_and_then(self) -> None:
        """Trim what every group is done with; forget dead consumers; keep reply channels."""
        forget_ms = math.ceil(max(300.0, 10 * self.settings.lease) * 1000)
        while True:
            await asyncio.sleep(self.settings.trim)
            for stream in dict.fromkeys(c.stream for c in self._consumers):
                try:
                    async with asyncio.timeout(COMMAND_TIMEOUT):
                        await scripts.TIDY(self.client, (stream,), (forget_ms,))
                except SURVIVABLE as exc:
                    log.warning("redis://: cannot trim %s (%s)", stream, exc)
            for consumer in self._consumers:
                if consumer.reply_channel:
                    with contextlib.suppress(*SURVIVABLE):
                        async with asyncio.timeout(COMMAND_TIMEOUT):
                            await self.client.execute_command(
                                "EXPIRE", consumer.stream, self.reply_ttl
                            )


def _info(reply: Any) -> dict[str, Any]:
    """INFO as a dict, whether redis-py parsed it or not."""
    if isinstance(reply, dict):
        return reply
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


async def _dispose(client: Redis, pool: ConnectionPool) -> None:
    await client.aclose()
    await pool.aclose()

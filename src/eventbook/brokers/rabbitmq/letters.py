"""Dead letters: a durable quorum queue per book, `<book>.dead-letters`.

Each letter is the event's body as received, with headers saying why: `reason`,
`error`, `attempts`, `topic`, `group`, `queue`, `event_id`, `failed_at`; its
`message_id` is the letter's own id. Listing takes every letter off the queue
unacknowledged (`basic.get`) and gives them all back (`basic.nack`), so nothing is
lost, even if the listing process dies half-way: the broker returns them itself.
A queue also sends here, by itself, an event it has given out more than
`?delivery_limit=` times without a settlement (a consumer that crashes on it every
time); such a letter has the broker's `x-death` header instead, and reason
`delivery-limit`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic

from ... import ids
from ...errors import BrokerError
from ..base import DeadLetter

if TYPE_CHECKING:
    from .broker import RabbitBroker

#: The longest error text kept in a letter's headers: they travel in one AMQP frame.
MAX_ERROR = 32 * 1024
#: A dead-letter queue's delivery limit: never reached by listing it (RabbitMQ 4.x
#: would otherwise drop a letter listed 20 times).
UNLIMITED = 2**31 - 1
PERSISTENT = 2


class DeadLetterQueue:
    """The book's dead letters on the broker."""

    def __init__(self, broker: RabbitBroker) -> None:
        self.broker = broker
        self.name = f"{broker.namespace}.dead-letters"
        self.arguments: dict[str, Any] = {"x-queue-type": "quorum", "x-delivery-limit": UNLIMITED}

    async def park(
        self,
        body: bytes,
        *,
        content_type: str | None,
        event_id: str | None,
        group: str,
        topic: str,
        queue: str,
        reason: str,
        error: str,
        attempts: int,
    ) -> None:
        """Keep an event as a dead letter; return once the broker confirmed it."""
        if len(error) > MAX_ERROR:
            error = error[:MAX_ERROR] + "\n... (truncated)"
        now = time.time()
        properties = Basic.Properties(
            content_type=content_type,
            message_id=ids.new_id(),
            delivery_mode=PERSISTENT,
            timestamp=datetime.fromtimestamp(int(now), UTC),
            headers={
                "reason": reason,
                "error": error,
                "attempts": attempts,
                "topic": topic,
                "group": group,
                "queue": queue,
                "event_id": event_id or "",
                "failed_at": _iso(now),
            },
        )
        await self.broker.send("", self.name, body, properties, f"the dead letter of {topic!r}")

    async def read(self) -> list[DeadLetter]:
        async with self._taken() as taken:
            letters = [self._letter(raw) for raw in taken]
        return sorted(letters, key=lambda letter: (letter.failed_at, letter.id))

    async def replay(self, ids: Sequence[str] | None) -> int:
        """Send letters back to their group's queue (only that group gets them), as new."""
        replayed = 0
        async with self._taken() as taken:
            for raw in taken:
                letter = self._letter(raw)
                if ids is not None and letter.id not in ids:
                    continue
                queue = _text(raw, "queue") or _death(raw).get("queue") or ""
                properties = Basic.Properties(
                    content_type=raw.content_type,
                    message_id=letter.event_id or None,
                    delivery_mode=PERSISTENT,
                    headers={"topic": letter.topic},
                )
                # Through the default exchange, straight to the queue: a new message,
                # so its first delivery is attempt 1.
                await self.broker.send(
                    "", str(queue), raw.body, properties, f"the replay of letter {letter.id}"
                )
                await raw.ack()
                replayed += 1
        return replayed

    async def purge(self, ids: Sequence[str] | None) -> int:
        purged = 0
        async with self._taken() as taken:
            for raw in taken:
                if ids is None or self._letter(raw).id in ids:
                    await raw.ack()
                    purged += 1
        return purged

    @asynccontextmanager
    async def _taken(self) -> AsyncIterator[list[AbstractIncomingMessage]]:
        """Every letter, taken unacknowledged on a channel of its own; the rest given back."""
        channel = await self.broker.connection.channel(publisher_confirms=False)
        try:
            queue = await channel.declare_queue(
                self.name, durable=True, arguments=self.arguments, robust=False
            )
            taken: list[AbstractIncomingMessage] = []
            while (raw := await queue.get(no_ack=False, fail=False, timeout=10)) is not None:
                taken.append(raw)
            yield taken
            unsettled = [
                raw.delivery_tag for raw in taken if not raw.processed and raw.delivery_tag
            ]
            if unsettled:
                underlay = await channel.get_underlay_channel()
                await underlay.basic_nack(max(unsettled), multiple=True)
        except BrokerError:
            raise
        except Exception as exc:
            raise BrokerError(
                f"cannot read the dead letters of book {self.broker.namespace!r} "
                f"(queue {self.name!r}): {self.broker.scrub(exc)}"
            ) from None
        finally:
            # Whatever is still unsettled goes back to the queue with the channel.
            with contextlib.suppress(Exception):
                await channel.close()

    def _letter(self, raw: AbstractIncomingMessage) -> DeadLetter:
        body = raw.body.decode("utf-8", "replace")
        stamp = raw.timestamp.timestamp() if raw.timestamp else time.time()
        reason = _text(raw, "reason")
        if reason is not None:
            attempts = raw.headers.get("attempts")
            return DeadLetter(
                id=raw.message_id or "",
                event_id=_text(raw, "event_id") or "",
                topic=_text(raw, "topic") or "",
                handler=_text(raw, "group") or "",
                reason=reason,
                error=_text(raw, "error") or "",
                attempts=attempts if isinstance(attempts, int) else 0,
                failed_at=_text(raw, "failed_at") or _iso(stamp),
                body=body,
            )
        # Dead-lettered by the queue itself, past its delivery limit.
        death = _death(raw)
        queue = str(death.get("queue", ""))
        prefix = f"{self.broker.namespace}."
        keys = death.get("routing-keys") or []
        limit = self.broker.settings.delivery_limit
        when = death.get("time")
        return DeadLetter(
            id=f"{raw.message_id}@{queue}",
            event_id=raw.message_id or "",
            topic=str(keys[0]) if keys else "",
            handler=queue[len(prefix) :] if queue.startswith(prefix) else queue,
            reason="delivery-limit",
            error=(
                f"RabbitMQ gave this event out more than {limit} times without a "
                "settlement (its consumer crashed or lost its connection each time), "
                f"and the queue dead-lettered it ({death.get('reason', 'delivery_limit')})"
            ),
            attempts=limit + 1,
            failed_at=_iso(when.timestamp() if isinstance(when, datetime) else stamp),
            body=body,
        )


def _text(raw: AbstractIncomingMessage, name: str) -> str | None:
    value = raw.headers.get(name) if raw.headers else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _death(raw: AbstractIncomingMessage) -> dict[str, Any]:
    deaths = raw.headers.get("x-death") if raw.headers else None
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return {k: v.decode() if isinstance(v, bytes) else v for k, v in deaths[0].items()}
    return {}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")

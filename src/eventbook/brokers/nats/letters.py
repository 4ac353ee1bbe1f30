"""Dead letters: kept in the book's dead-letter stream until replayed or purged.

One message per dead letter on `_eventbook.dead.<book>.<consumer>`: its payload is
the event exactly as it was received, and headers say the rest (`Eventbook-Topic`,
`-Handler`, `-Reason`, `-Attempts`, `-Event-Id`, `-Failed-At`, and `-Error`, the
error with its traceback as a JSON string, since a header holds one line). A
dead letter's id is its sequence number in that stream.

Replaying publishes the event again on its topic's subject with the header
`Eventbook-Replay-For: <consumer>`: that handler takes it as a new delivery (attempt
1), and the other handlers of the topic ack it unseen. Then the dead letter is
deleted. Each step is idempotent on a retry (`Nats-Msg-Id`), so a crash between
them can at worst leave a dead letter that was also replayed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from ...errors import BrokerError
from ..base import DeadLetter
from . import names

if TYPE_CHECKING:
    from nats.js.api import RawStreamMsg

    from .broker import NatsBroker
    from .consumer import Consumer, NatsMessage

#: Room left in a message for the headers other than the error.
_HEADER_ROOM = 2048


class Letters:
    """The dead-letter stream of one book."""

    def __init__(self, broker: NatsBroker) -> None:
        self.broker = broker
        self.stream = names.dead_stream(broker.namespace)

    async def park(self, consumer: Consumer, message: NatsMessage, reason: str, error: str) -> None:
        """Store one delivery as a dead letter (confirmed) before it is acked."""
        body = message.body or b""
        original = message.msg.headers or {}
        error_json = json.dumps(error)
        room = self.broker.nc.max_payload - len(body) - _HEADER_ROOM
        if len(error_json) > room:
            cut = max(0, room - 100)
            error_json = json.dumps(error[:cut] + "\n… (cut to fit the NATS max_payload)")
        event_id = original.get(names.MSG_ID, "")
        headers = {
            # The same delivery dead-lettered again (its ack was lost) is one dead letter.
            names.MSG_ID: f"{consumer.name}:{message.seq}:{event_id}",
            names.TOPIC: consumer.topic,
            names.HANDLER: consumer.group,
            names.REASON: reason,
            names.ATTEMPTS: str(message.attempt),
            names.EVENT_ID: event_id,
            names.FAILED_AT: datetime.now(UTC).isoformat(timespec="milliseconds"),
            names.ERROR: error_json,
        }
        subject = names.dead_subject(self.broker.namespace, consumer.name)
        await self.broker.publisher.publish(subject, body, headers)

    async def _messages(self) -> list[RawStreamMsg]:
        js = self.broker.js
        try:
            info = await js.stream_info(self.stream)
            found: list[RawStreamMsg] = []
            if not info.state.messages:
                return found
            seq = info.state.first_seq
            wildcard = names.dead_subjects(self.broker.namespace)
            while seq <= info.state.last_seq:
                try:
                    msg = await js.get_msg(self.stream, seq=seq, subject=wildcard, next=True)
                except NotFoundError:
                    break
                found.append(msg)
                seq = (msg.seq or seq) + 1
            return found
        except NatsError as exc:
            raise BrokerError(
                f"cannot read the dead letters in stream {self.stream}: {exc}"
            ) from None

    async def all(self) -> list[DeadLetter]:
        return [self._letter(msg) for msg in await self._messages()]

    def _letter(self, msg: RawStreamMsg) -> DeadLetter:
        headers = msg.headers or {}
        try:
            error = json.loads(headers.get(names.ERROR, '""'))
        except ValueError:
            error = headers.get(names.ERROR, "")
        return DeadLetter(
            id=str(msg.seq),
            event_id=headers.get(names.EVENT_ID, ""),
            topic=headers.get(names.TOPIC, ""),
            handler=headers.get(names.HANDLER, ""),
            reason=headers.get(names.REASON, ""),
            error=str(error),
            attempts=int(headers.get(names.ATTEMPTS, "0") or 0),
            failed_at=headers.get(names.FAILED_AT, ""),
            body=(msg.data or b"").decode("utf-8", "replace"),
        )

    async def _chosen(self, ids: Sequence[str] | None) -> list[RawStreamMsg]:
        wanted = None if ids is None else set(ids)
        return [msg for msg in await self._messages() if wanted is None or str(msg.seq) in wanted]

    async def replay(self, ids: Sequence[str] | None) -> int:
        chosen = await self._chosen(ids)
        book = self.broker.namespace
        for msg in chosen:
            headers = msg.headers or {}
            consumer = (msg.subject or "").rsplit(".", 1)[-1]
            topic = headers.get(names.TOPIC, "")
            await self.broker.publisher.publish(
                names.subject(book, topic),
                msg.data or b"",
                {
                    names.MSG_ID: f"replay:{self.stream}:{msg.seq}",
                    names.REPLAY_FOR: consumer,
                },
            )
            await self._delete(msg)
        return len(chosen)

    async def purge(self, ids: Sequence[str] | None) -> int:
        chosen = await self._chosen(ids)
        for msg in chosen:
            await self._delete(msg)
        return len(chosen)

    async def _delete(self, msg: RawStreamMsg) -> None:
        try:
            await self.broker.js.delete_msg(self.stream, msg.seq or 0)
        except NotFoundError:
            pass  # deleted meanwhile, by another process
        except NatsError as exc:
            raise BrokerError(f"cannot delete dead letter {msg.seq}: {exc}") from None

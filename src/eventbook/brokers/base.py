"""The broker boundary: what every broker adapter implements, and nothing more.

Decoding, validation, calling handlers, retry decisions, dead-letter reasons and
replies are not here: they live once in `eventbook.delivery`, above the brokers.
A broker moves bytes (or, in-process, envelopes), counts attempts and keeps dead
letters.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..envelope import Envelope
    from ..service import Handler


class Message(Protocol):
    """One delivery of one event to one handler.

    Exactly one of `envelope` (an in-process broker) and `body` (the CloudEvent's
    JSON, as received) is set. `attempt` is counted by the broker, starting at 1;
    never read from a header a sender could forge.
    """

    attempt: int
    envelope: Envelope | None
    body: bytes | None

    async def ack(self) -> None:
        """The handler is done with the event; never deliver it to this handler again."""

    async def retry(self, delay: float) -> None:
        """Deliver the event to this handler again, no sooner than `delay` seconds."""

    async def dead_letter(self, reason: str, error: str) -> None:
        """Park the event in the dead-letter store with why, and stop delivering it."""


Deliver = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a handler could not take, kept with the reason until replayed or purged."""

    id: str
    event_id: str
    topic: str
    handler: str
    reason: str
    error: str
    attempts: int
    failed_at: str
    body: str


class Broker(Protocol):
    """What a broker adapter implements. Chosen by URL scheme (`brokers.from_url`)."""

    url: str
    #: False for an in-process broker, which moves `Envelope` objects, not bytes.
    encodes: bool

    async def connect(self) -> None:
        """Connect, and create what the book's channels need."""

    async def declare(self, group: str, topic: str) -> None:
        """Make sure consumer group `group` exists on `topic`.

        Called at start for every handler of the book, also those run by other
        processes, so that events published from then on wait for each of them.
        """

    async def publish(self, envelope: Envelope, body: bytes | None) -> None:
        """Return once the broker has durably accepted the event."""

    async def consume(self, handler: Handler, deliver: Deliver) -> None:
        """Start delivering `handler`'s topic to `deliver`, in `handler.name`'s consumer group."""

    async def drain(self, timeout: float) -> None:
        """Stop taking new events, and wait up to `timeout` seconds for those in flight."""

    async def close(self) -> None:
        """Release connections; the broker's stored state stays."""

    async def dead_letters(self) -> list[DeadLetter]:
        """Return the dead letters, oldest first."""

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        """Send dead letters (all, or those with these ids) back to their handler."""

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (all, or those with these ids); return how many."""

    # Optional, for in-process brokers only:
    #   def publish_here(self, envelope: Envelope) -> bool
    # delivers in the calling (non-loop) thread when it can, else returns False.

"""The consume path every broker shares: decode, validate, call, then ack, retry or dead-letter.

A broker hands each received event to the `Dispatcher` of the handler it is for,
as a `Message`; everything after that is decided here, once for all brokers.
Bad input is dead-lettered with its reason and never raises out of here, so a
malformed event can neither crash a consumer nor block the events behind it.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .context import _current
from .envelope import decode
from .errors import DecodeError, PayloadError

if TYPE_CHECKING:
    from .brokers.base import Message
    from .envelope import Envelope
    from .observe import Observer
    from .runtime import Runtime
    from .service import Handler

log = logging.getLogger("eventbook.delivery")

# Why an event was dead-lettered.
FAILED = "failed"  # the handler raised on every try
UNDECODABLE = "undecodable"  # not a CloudEvent eventbook can read
INVALID = "invalid"  # the payload does not match the topic's type
OVERSIZE = "oversize"  # larger than the payload limit; not even decoded
UNKNOWN_TYPE = "unknown-type"  # a CloudEvent of another type on this handler's channel


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a delivery that did not succeed: retry it later, or dead-letter it."""

    retry_in: float | None = None
    reason: str = ""
    error: str = ""


class Dispatcher:
    """Delivers events to one handler and decides what becomes of each."""

    __slots__ = ("_call", "_done", "_observers", "_topic", "_validate", "handler", "runtime")

    #: How many finished event ids each handler remembers (see `_done`).
    REMEMBERED = 10_000

    def __init__(self, handler: Handler, runtime: Runtime) -> None:
        self.handler = handler
        self.runtime = runtime
        # The process-local inbox: ids of events this handler finished lately here. A
        # broker may deliver an event again after its ack was lost (a reconnect) or a
        # publisher re-sent it (a lost confirm); neither runs the handler twice in this
        # process. Brokers with a durable inbox (sqlite://) need it less, but it is cheap.
        self._done: dict[str, None] | None = {} if runtime.broker.encodes else None
        # Bound once: this runs for every event and every handler.
        self._topic = handler.topic.name
        self._validate = handler.topic.payload.validate
        self._call = handler.call
        self._observers = runtime.observers

    async def __call__(self, message: Message) -> None:
        """Handle `message` and settle it with its broker: ack, retry or dead-letter."""
        verdict = await self.handle(message.envelope, message.body, message.attempt)
        if verdict is None:
            await message.ack()
        elif verdict.retry_in is not None:
            await message.retry(verdict.retry_in)
        else:
            await message.dead_letter(verdict.reason, verdict.error)

    async def handle(
        self, envelope: Envelope | None, body: bytes | None, attempt: int
    ) -> Verdict | None:
        """Run the handler on one event (decoded or not); None means done, ack it.

        Never raises for bad input or a failing handler; cancellation propagates,
        leaving the event unacked for redelivery.
        """
        if envelope is None:
            body = body or b""
            limit = self.runtime.max_payload
            if len(body) > limit:
                return self._reject(OVERSIZE, f"{len(body)} bytes > limit {limit}")
            try:
                envelope = decode(body)
            except DecodeError as exc:
                return self._reject(UNDECODABLE, str(exc))
        if envelope.type != self._topic:
            return self._reject(
                UNKNOWN_TYPE,
                f"event type {envelope.type!r} on the channel of topic {self._topic!r}",
            )
        try:
            payload = self._validate(envelope.data)
        except PayloadError as exc:
            return self._reject(INVALID, str(exc))
        envelope.data = payload  # observers and current_event() see the typed payload
        done = self._done
        if done is not None and envelope.id in done:
            log.info(
                "%s: event %s was handled already; acked again", self.handler.name, envelope.id
            )
            return None

        token = _current.set(envelope)
        try:
            result = await self._call(payload)
        except Exception as exc:
            return await self._failed(envelope, attempt, exc)
        finally:
            _current.reset(token)

        if done is not None:
            done[envelope.id] = None
            if len(done) > self.REMEMBERED:
                del done[next(iter(done))]  # the oldest: dicts keep insertion order
        if envelope.replyto is not None:
            await self.runtime.reply(envelope, result, None)
        if self._observers:
            notify(self._observers, "handled", self.handler, envelope, attempt)
        return None

    async def _failed(self, envelope: Envelope, attempt: int, exc: Exception) -> Verdict:
        verdict = self._verdict(envelope, attempt, exc)
        if verdict.retry_in is None and envelope.replyto is not None:
            await self.runtime.reply(envelope, None, f"{type(exc).__name__}: {exc}")
        return verdict

    def _verdict(self, envelope: Envelope, attempt: int, exc: Exception) -> Verdict:
        """Retry a failed call while the policy allows, then dead-letter it."""
        handler = self.handler
        verdict: Verdict
        if attempt < handler.policy.max_attempts:
            retry_in = handler.policy.backoff.delay(attempt)
            log.warning(
                "%s failed on try %d of %d (%s: %s); retrying in %.3gs",
                handler.name,
                attempt,
                handler.policy.max_attempts,
                type(exc).__name__,
                exc,
                retry_in,
            )
            verdict = Verdict(retry_in=retry_in)
        else:
            log.error("%s failed on its last try (%d); dead-lettered", handler.name, attempt)
            verdict = Verdict(reason=FAILED, error=describe(exc))
        notify(self._observers, "failed", handler, envelope, attempt, exc, verdict.retry_in)
        return verdict

    def _reject(self, reason: str, error: str) -> Verdict:
        log.error("%s: event dead-lettered as %s: %s", self.handler.name, reason, error)
        notify(self._observers, "rejected", self.handler, reason, error)
        return Verdict(reason=reason, error=error)


async def fan_out(
    envelope: Envelope, dispatchers: Sequence[Dispatcher], attempt: int = 1
) -> list[tuple[Dispatcher, Verdict]]:
    """Deliver one in-process event to several handlers of its topic, in order.

    The same as `handle` on each, but the payload is validated once (they share the
    topic, so its type) and the context set once: this is the in-process hot path.
    Returns the dispatchers that did not succeed, with their verdicts.
    """
    unsettled: list[tuple[Dispatcher, Verdict]] = []
    payload = _payload(envelope, dispatchers, unsettled)
    if unsettled or not dispatchers:
        return unsettled
    replying = envelope.replyto is not None
    observers = dispatchers[0]._observers  # one runtime's list, shared by its dispatchers
    token = _current.set(envelope)
    try:
        for dispatcher in dispatchers:
            try:
                result = await dispatcher._call(payload)
            except Exception as exc:
                unsettled.append((dispatcher, await dispatcher._failed(envelope, attempt, exc)))
                continue
            if replying:
                await dispatcher.runtime.reply(envelope, result, None)
            if observers:
                notify(observers, "handled", dispatcher.handler, envelope, attempt)
    finally:
        _current.reset(token)
    return unsettled


def _payload(
    envelope: Envelope,
    dispatchers: Sequence[Dispatcher],
    rejected: list[tuple[Dispatcher, Verdict]],
) -> Any:
    """Validate once for all `dispatchers` (one topic, one type); on failure fill `rejected`."""
    if not dispatchers:
        return None
    try:
        return dispatchers[0]._validate(envelope.data)
    except PayloadError as exc:
        rejected.extend((d, d._reject(INVALID, str(exc))) for d in dispatchers)
        return None


def fan_out_here(
    envelope: Envelope, dispatchers: Sequence[Dispatcher]
) -> list[tuple[Dispatcher, Verdict]] | None:
    """`fan_out`, run in the calling thread: for a sync publisher and only sync handlers.

    A sync publisher is off the event loop already, so calling sync handlers right
    here blocks nothing, and skips two thread hops per handler. Returns None, having
    called nothing, when a handler is async or the event expects a reply.
    """
    if envelope.replyto is not None or any(d.handler.sync_call is None for d in dispatchers):
        return None
    unsettled: list[tuple[Dispatcher, Verdict]] = []
    payload = _payload(envelope, dispatchers, unsettled)
    if unsettled or not dispatchers:
        return unsettled
    observers = dispatchers[0]._observers
    token = _current.set(envelope)
    try:
        for dispatcher in dispatchers:
            try:
                dispatcher.handler.sync_call(payload)  # type: ignore[misc]
            except Exception as exc:
                unsettled.append((dispatcher, dispatcher._verdict(envelope, 1, exc)))
                continue
            if observers:
                notify(observers, "handled", dispatcher.handler, envelope, 1)
    finally:
        _current.reset(token)
    return unsettled


def notify(observers: Sequence[Observer], hook: str, *args: Any) -> None:
    """Call `hook` on every observer; one that raises is logged, never lets delivery fail."""
    for observer in observers:
        try:
            getattr(observer, hook)(*args)
        except Exception:
            log.exception("observer %r failed in %s()", observer, hook)


_OWN_FILES = str(Path(__file__).parent)


def describe(exc: BaseException) -> str:
    """Return the error and the traceback of the user's code, without eventbook's frames."""
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if not _is_plumbing(f.filename)] or frames
    lines = traceback.format_list(user)
    return "".join([*lines, *traceback.format_exception_only(exc)]).strip()


def _is_plumbing(filename: str) -> bool:
    return filename.startswith(_OWN_FILES) or "/asyncio/" in filename or "/concurrent/" in filename

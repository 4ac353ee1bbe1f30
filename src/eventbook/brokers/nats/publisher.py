"""Confirmed publishes: each one returns when JetStream stored it (its PubAck arrived).

Every publish carries `Nats-Msg-Id` (the event id), so the server drops a copy of
an event it already stored within the stream's duplicate window. That makes
sending again safe, and this module does it whenever a confirm may have been lost:
after `RESEND_AFTER` seconds without an answer, at once after a reconnect (for
what was sent before the connection dropped), and after a short back-off while
JetStream answers that it is not available (a server starting up). A publish
gives up with `BrokerError` after the broker's `publish_timeout`.

The confirms of all publishes come back on one wildcard subscription, matched
by a token, and one watcher task looks for overdue ones: cheaper than the
client's request() per publish (a timeout timer and a task each), which shows
most when many publishes are awaited at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

from nats.errors import (
    ConnectionClosedError,
    ConnectionDrainingError,
    MaxPayloadError,
    OutboundBufferLimitError,
)

from ...errors import BrokerError, PayloadTooLargeError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

log = logging.getLogger("eventbook.brokers.nats")

#: Seconds without a confirm before the same publish is sent again.
RESEND_AFTER = 5.0
#: Back-off while JetStream says it is unavailable (first, longest).
UNAVAILABLE_BACKOFF = (0.05, 1.0)
#: Seconds between looks for publishes that wait too long.
WATCH_EVERY = 0.1


class _Publish:
    __slots__ = (
        "backoff",
        "deadline",
        "done",
        "headers",
        "payload",
        "resend_at",
        "sent_at",
        "subject",
    )

    def __init__(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        done: asyncio.Future[None],
        now: float,
        timeout: float,
    ) -> None:
        self.subject = subject
        self.payload = payload
        self.headers = headers
        self.done = done
        self.deadline = now + timeout
        self.sent_at = now
        self.resend_at = now + RESEND_AFTER
        self.backoff = UNAVAILABLE_BACKOFF[0]


class Publisher:
    """Publishes to JetStream and waits for each confirm; see the module docstring."""

    def __init__(self, nc: Client, timeout: float) -> None:
        self._nc = nc
        self._timeout = timeout
        self._prefix = nc.new_inbox() + "."
        self._cut = len(self._prefix)
        self._waiting: dict[str, _Publish] = {}
        self._count = 0
        self._sub: Subscription | None = None
        self._watch: asyncio.Task[None] | None = None
        self._resending: set[asyncio.Task[None]] = set()
        self._disconnected_at = 0.0

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)
        self._watch = asyncio.create_task(self._watch_overdue(), name="eventbook-nats-publish")

    async def stop(self) -> None:
        """Fail what still waits for a confirm, and stop listening for confirms."""
        for publish in self._waiting.values():
            if not publish.done.done():
                publish.done.set_exception(BrokerError("the nats:// broker was closed"))
        tasks = [*self._resending, *([self._watch] if self._watch is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._resending.clear()
        self._watch = None
        if self._sub is not None and not self._nc.is_closed:
            with contextlib.suppress(ConnectionClosedError, ConnectionDrainingError):
                await self._sub.unsubscribe()
        self._sub = None

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Return once JetStream confirmed it stored the message.

        Raises:
            PayloadTooLargeError: the message is over the server's max_payload.
            BrokerError: no confirm within the publish timeout, or JetStream refused it.
        """
        self._count += 1
        token = str(self._count)
        publish = _Publish(
            subject,
            payload,
            headers,
            asyncio.get_running_loop().create_future(),
            time.monotonic(),
            self._timeout,
        )
        self._waiting[token] = publish
        try:
            await self._send(token, publish)
            await publish.done
        finally:
            del self._waiting[token]

    # -- sending (and sending again) ----------------------------------------------------

    async def _send(self, token: str, publish: _Publish) -> None:
        publish.sent_at = time.monotonic()
        try:
            await self._nc.publish(
                publish.subject, publish.payload, self._prefix + token, publish.headers
            )
        except MaxPayloadError:
            raise PayloadTooLargeError(
                f"a message of {len(publish.payload)} bytes is over the NATS server's "
                f"max_payload ({self._nc.max_payload} bytes): lower the book's max_payload "
                "or raise the server's"
            ) from None
        except OutboundBufferLimitError:
            # Disconnected, and the client's buffer is full: sent again on reconnecting.
            publish.sent_at = 0.0
            log.debug("nats://: publish on %s not sent while disconnected", publish.subject)
        except (ConnectionClosedError, ConnectionDrainingError):
            raise BrokerError("the nats:// broker is closed: cannot publish") from None

    async def _watch_overdue(self) -> None:
        """Send again what waits too long for its confirm; fail what waited past its deadline."""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            now = time.monotonic()
            for token, publish in list(self._waiting.items()):
                if publish.done.done() or now < publish.resend_at:
                    continue
                if now >= publish.deadline:
                    publish.done.set_exception(
                        BrokerError(
                            f"NATS did not confirm a publish on {publish.subject!r} within "
                            f"{self._timeout:g}s: is the server up, with JetStream, and does "
                            "the book's stream exist?"
                        )
                    )
                    continue
                publish.resend_at = now + RESEND_AFTER
                self._resend(token, publish)

    def _resend(self, token: str, publish: _Publish) -> None:
        task = asyncio.get_running_loop().create_task(self._send_quietly(token, publish))
        self._resending.add(task)
        task.add_done_callback(self._resending.discard)

    async def _send_quietly(self, token: str, publish: _Publish) -> None:
        try:
            await self._send(token, publish)
        except (BrokerError, PayloadTooLargeError) as exc:
            if not publish.done.done():
                publish.done.set_exception(exc)

    def disconnected(self) -> None:
        self._disconnected_at = time.monotonic()

    def reconnected(self) -> None:
        """Send again at once what was sent before the connection dropped: its confirm is lost."""
        now = time.monotonic()
        for token, publish in list(self._waiting.items()):
            if not publish.done.done() and publish.sent_at <= self._disconnected_at:
                publish.resend_at = now + RESEND_AFTER
                self._resend(token, publish)

    # -- confirms -----------------------------------------------------------------------

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[self._cut :]
        publish = self._waiting.get(token)
        if publish is None or publish.done.done():
            return  # the confirm of a copy, after the first one
        data = msg.data
        if not data:
            # A status instead of a PubAck: 503, nobody answers for this subject (yet).
            self._unavailable(publish)
            return
        if b'"error"' in data:
            error = json.loads(data).get("error") or {}
            if error.get("code") == 503:  # JetStream temporarily unavailable
                self._unavailable(publish)
                return
            publish.done.set_exception(
                BrokerError(
                    f"NATS refused a publish on {publish.subject!r}: "
                    f"{error.get('description', error)} (error {error.get('err_code', '?')})"
                )
            )
            return
        publish.done.set_result(None)

    def _unavailable(self, publish: _Publish) -> None:
        """JetStream is not there (yet): send again after a growing back-off."""
        log.debug("nats://: JetStream unavailable for %s; trying again", publish.subject)
        publish.resend_at = time.monotonic() + publish.backoff
        publish.backoff = min(publish.backoff * 2, UNAVAILABLE_BACKOFF[1])

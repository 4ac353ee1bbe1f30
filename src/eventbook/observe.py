"""Observers: hooks that see events published and handled, for traces, logs and metrics.

Subclass `Observer`, override what you need, and add it with `book.observe(...)`.
Observers are called inline on the hot path: keep them quick, and never raise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .envelope import Envelope
    from .service import Handler


class Observer:
    """No-op hooks; every method is optional to override."""

    def publishing(self, envelope: Envelope) -> None:
        """`envelope` is being handed to the broker (an in-process one delivers it at once)."""

    def handled(self, handler: Handler, envelope: Envelope, attempt: int) -> None:
        """`handler` returned for `envelope`, on try number `attempt`."""

    def failed(
        self,
        handler: Handler,
        envelope: Envelope,
        attempt: int,
        error: BaseException,
        retry_in: float | None,
    ) -> None:
        """`handler` raised; it is tried again in `retry_in` seconds, or (None) dead-lettered."""

    def rejected(self, handler: Handler, reason: str, error: str) -> None:
        """An event for `handler` was dead-lettered unread: undecodable, invalid or oversize."""

"""Helpers for testing code built on eventbook; the broker contract suite is in `.contract`.

Wait on conditions with a deadline instead of sleeping: these machines are shared
and their timing is noisy.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

from ..clock import VirtualClock
from ..envelope import Envelope
from ..observe import Observer
from ..service import Handler


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, interval: float = 0.005
) -> None:
    """Return as soon as `condition()` (sync or async) is true; fail after `timeout` seconds.

    Raises:
        AssertionError: the condition was still false at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {timeout:g}s")
        await asyncio.sleep(interval)


class Recorder(Observer):
    """An observer that keeps what it saw, for assertions."""

    def __init__(self) -> None:
        self.published: list[Envelope] = []
        self.deliveries: list[tuple[str, Envelope, int]] = []
        self.failures: list[tuple[str, int, str, float | None]] = []
        self.rejections: list[tuple[str, str, str]] = []

    def publishing(self, envelope: Envelope) -> None:
        self.published.append(envelope)

    def handled(self, handler: Handler, envelope: Envelope, attempt: int) -> None:
        self.deliveries.append((handler.name, envelope, attempt))

    def handled_by(self, handler_name: str) -> list[Envelope]:
        """Envelopes handled by the handler with this name, in order."""
        return [env for name, env, _ in self.deliveries if name == handler_name]

    def failed(
        self,
        handler: Handler,
        envelope: Envelope,
        attempt: int,
        error: BaseException,
        retry_in: float | None,
    ) -> None:
        self.failures.append((handler.name, attempt, repr(error), retry_in))

    def rejected(self, handler: Handler, reason: str, error: str) -> None:
        self.rejections.append((handler.name, reason, error))


__all__ = ["Recorder", "VirtualClock", "eventually"]

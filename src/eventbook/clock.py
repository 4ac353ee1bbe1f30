"""Time as sagas see it: real by default, virtual in tests (`eventbook.testing.VirtualClock`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

T = TypeVar("T")


class Clock:
    """Wall-clock time and asyncio waits."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def wait(self, future: asyncio.Future[T], timeout: float | None) -> T:
        """Wait for `future`, at most `timeout` seconds (None: no limit).

        Raises:
            TimeoutError: the time ran out; `future` is left alone.
        """
        if timeout is None:
            return await future
        return await asyncio.wait_for(asyncio.shield(future), timeout)


class VirtualClock(Clock):
    """A clock that moves only when told to: timeouts and sleeps without waiting.

    `await clock.advance(seconds)` moves time forward and wakes every sleeper whose
    time has come, in order.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def _timer(self, seconds: float) -> asyncio.Future[None]:
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if seconds <= 0:
            timer.set_result(None)
        else:
            self._sleepers.append((self._now + seconds, timer))
        return timer

    @property
    def sleepers(self) -> int:
        """How many sleeps and timeouts are waiting for time to pass."""
        return sum(1 for _, timer in self._sleepers if not timer.done())

    async def sleep(self, seconds: float) -> None:
        await self._timer(seconds)

    async def wait(self, future: asyncio.Future[T], timeout: float | None) -> T:
        if timeout is None:
            return await future
        timer = self._timer(timeout)
        either: set[asyncio.Future[Any]] = {future, timer}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if future.done():
            timer.cancel()
            return future.result()
        raise TimeoutError

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking whatever falls due."""
        self._now += seconds
        due = sorted((t for t in self._sleepers if t[0] <= self._now), key=lambda t: t[0])
        self._sleepers = [t for t in self._sleepers if t[0] > self._now]
        for _, timer in due:
            if not timer.done():
                timer.set_result(None)
        for _ in range(10):  # let the woken tasks run up to their next wait
            await asyncio.sleep(0)

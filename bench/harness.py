"""What every throughput contestant shares: the event, the clock, the drive loop."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import eventbook as eb

Mode = Literal["one", "window"]
MODES: dict[Mode, str] = {"one": "one at a time", "window": "windows of 100"}
WINDOW = 100
#: The longest a run may take before it is declared lost (an event never seen).
RUN_TIMEOUT = 300.0

#: A contestant: move n events in `mode`, return (wall seconds, latency of each event).
Run = Callable[[Mode, int], Coroutine[Any, Any, tuple[float, list[float]]]]


class Tick(eb.Event):
    n: int


class Recorder:
    """When each event's publish was called, and when the consumer saw it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.started = [0.0] * n
        self.seen = [0.0] * n
        self.count = 0
        self.done = asyncio.Event()

    def saw(self, i: int) -> None:
        if self.seen[i]:
            return  # a redelivery: the first sighting counts
        self.seen[i] = time.perf_counter()
        self.count += 1
        if self.count == self.n:
            self.done.set()

    def result(self) -> tuple[float, list[float]]:
        elapsed = max(self.seen) - self.started[0]
        pairs = zip(self.seen, self.started, strict=True)
        return elapsed, [seen - started for seen, started in pairs]


async def drive(
    mode: Mode,
    recorder: Recorder,
    publish_one: Callable[[int], Awaitable[object]],
    publish_window: Callable[[int, int], Awaitable[object]],
) -> tuple[float, list[float]]:
    """Publish events 0..n-1 as `mode` says, wait until all were seen, return the timings."""
    clock, started, n = time.perf_counter, recorder.started, recorder.n
    if mode == "one":
        for i in range(n):
            started[i] = clock()
            await publish_one(i)
    else:
        for lo in range(0, n, WINDOW):
            hi = min(lo + WINDOW, n)
            started[lo:hi] = [clock()] * (hi - lo)
            await publish_window(lo, hi)
    try:
        await asyncio.wait_for(recorder.done.wait(), RUN_TIMEOUT)
    except TimeoutError:
        raise RuntimeError(f"only {recorder.count} of {n} events seen") from None
    return recorder.result()


def raw_body(i: int) -> bytes:
    """The JSON a hand-written producer would send: eventbook's CloudEvent attributes."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": "01a23d19-fa65-7000-8001-b8eb0443dcb9",
            "source": "/bench",
            "type": "tick",
            "datacontenttype": "application/json",
            "correlationid": "01a23d19-fa65-7000-8001-b8eb0443dcb9",
            "time": "2026-12-03T18:10:42.405Z",
            "data": {"n": i},
        },
        separators=(",", ":"),
    ).encode()


def raw_index(body: bytes) -> int:
    index: int = json.loads(body)["data"]["n"]
    return index


@dataclass(frozen=True, slots=True)
class Contestant:
    name: str
    run: Run

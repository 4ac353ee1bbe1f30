"""Broker throughput: publish + consume + ack of small events in one process, vs a raw client.

Each contestant moves N events (default 20,000) of one small CloudEvent from a
publisher to one consumer running in the same asyncio loop, on a fresh store per
run, in two modes:
  * one at a time: `await publish(...)` N times in sequence, each returning once
    the event is durable;
  * windows of 100: 100 publishes awaited together (`asyncio.gather`), N/100 times.
A run ends when the consumer has seen all N. Reported per contestant and mode:
events/s (N / wall time from the first publish call to the last event seen) and
the end-to-end latency p50 / p99 (publish call started -> consumer saw the event;
in windows, every event of a window counts from the window's start). The consumer
runs only when the publisher yields to the loop, and a SQLite commit is a plain
call that does not (the raw peer's never does): the latencies include that wait.

Contestants, in pairs of eventbook and a raw client of the same broker with the
same durability and the same bytes:
  * eventbook sqlite://: `async with book.start(broker="sqlite:///<tmp>/bench.db")`,
    one `@eb.sub` async handler, with the default settings (concurrency 1: each
    event acked before the next starts) and with `concurrency=100` ("c100");
  * raw sqlite3: one WAL table (synchronous=NORMAL, as sqlite:// by default),
    INSERT + COMMIT per event or one COMMIT per window of 100, and a consumer task
    that SELECTs batches of up to 100 rows and DELETEs them in one transaction,
    woken in-process when the publisher commits.
The events are the smallest CloudEvents eventbook sends (an `eb.Event` with one int
field): the raw peer sends JSON of the same attributes, so of the same size.

To add a broker, write a `run(mode, n) -> (elapsed, latencies)` coroutine for
eventbook and one for its raw peer, and add both to CONTESTANTS and PAIRS.

Contestants are alternated within each round, and the median of the rounds is
reported, so drift of a shared machine hits all of them alike.

    python bench/throughput.py [--rounds 3] [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import sqlite3
import statistics
import tempfile
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


# -- eventbook ---------------------------------------------------------------------------


async def eventbook_sqlite(mode: Mode, n: int, concurrency: int = 1) -> tuple[float, list[float]]:
    ticks = [Tick(n=i) for i in range(n)]
    recorder = Recorder(n)
    book = eb.EventBook("bench")
    topic = book.topic("tick", Tick)

    @book.service
    class Consumer:
        @eb.sub(topic, concurrency=concurrency)
        async def handle(self, tick: Tick) -> None:
            recorder.saw(tick.n)

    def publish_window(lo: int, hi: int) -> Awaitable[object]:
        return asyncio.gather(*(book.publish(topic, ticks[i]) for i in range(lo, hi)))

    with tempfile.TemporaryDirectory() as tmp:
        async with book.start(broker=f"sqlite:///{tmp}/bench.db"):
            return await drive(
                mode, recorder, lambda i: book.publish(topic, ticks[i]), publish_window
            )


# -- raw clients -------------------------------------------------------------------------


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


async def raw_sqlite(mode: Mode, n: int) -> tuple[float, list[float]]:
    recorder = Recorder(n)
    wake = asyncio.Event()
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(f"{tmp}/bench.db", isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE queue (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")

            async def publish_one(i: int) -> None:
                db.execute("INSERT INTO queue (body) VALUES (?)", (raw_body(i),))  # autocommit
                wake.set()

            async def publish_window(lo: int, hi: int) -> None:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(
                    "INSERT INTO queue (body) VALUES (?)", [(raw_body(i),) for i in range(lo, hi)]
                )
                db.execute("COMMIT")
                wake.set()

            async def consume() -> None:
                while recorder.count < n:
                    wake.clear()  # before reading: a wake-up from now on is not lost
                    rows = db.execute(
                        f"SELECT id, body FROM queue ORDER BY id LIMIT {WINDOW}"
                    ).fetchall()
                    if not rows:
                        await wake.wait()
                        continue
                    for _, body in rows:
                        recorder.saw(raw_index(body))
                    db.execute("BEGIN IMMEDIATE")
                    db.execute("DELETE FROM queue WHERE id <= ?", (rows[-1][0],))
                    db.execute("COMMIT")
                    await asyncio.sleep(0)  # let the publisher in between batches

            consumer = asyncio.create_task(consume())
            try:
                return await drive(mode, recorder, publish_one, publish_window)
            finally:
                consumer.cancel()
        finally:
            db.close()


# -- the table ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contestant:
    name: str
    run: Run


CONTESTANTS = [
    # The defaults: one event at a time per handler, acked before the next starts.
    Contestant("eventbook sqlite://", eventbook_sqlite),
    # A handler that takes 100 events at once: acks that finish together share a commit.
    Contestant("eventbook sqlite:// c100", functools.partial(eventbook_sqlite, concurrency=100)),
    Contestant("raw sqlite3", raw_sqlite),
]
#: (eventbook, its raw peer): the ratios printed, with the issue's targets per mode.
PAIRS = [("eventbook sqlite://", "raw sqlite3"), ("eventbook sqlite:// c100", "raw sqlite3")]
TARGETS: dict[Mode, float] = {"one": 0.20, "window": 0.30}


@dataclass(frozen=True, slots=True)
class Sample:
    rate: float  # events/s
    p50: float  # seconds
    p99: float


def measure(contestant: Contestant, mode: Mode, n: int) -> Sample:
    gc.collect()
    elapsed, latencies = asyncio.run(contestant.run(mode, n))
    latencies.sort()
    return Sample(
        rate=n / elapsed,
        p50=latencies[(len(latencies) - 1) // 2],
        p99=latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    n = args.events
    began = time.perf_counter()

    names = [c.name for c in CONTESTANTS]
    for contestant in CONTESTANTS:  # warm-up
        for mode in MODES:
            measure(contestant, mode, min(n, 2_000))
    results: dict[tuple[str, Mode], list[Sample]] = {
        (c.name, mode): [] for c in CONTESTANTS for mode in MODES
    }
    for round_no in range(args.rounds):
        shift = round_no % len(CONTESTANTS)
        for mode in MODES:
            for contestant in CONTESTANTS[shift:] + CONTESTANTS[:shift]:
                results[contestant.name, mode].append(measure(contestant, mode, n))

    size = len(raw_body(n - 1))
    print(
        f"publish + consume + ack of {n:,} events of {size} bytes, one process;"
        f" median of {args.rounds} alternated rounds"
    )
    print(
        f"{'contestant':<26}{'mode':<16}{'events/s':>10}{'min':>10}{'max':>10}"
        f"{'p50 ms':>10}{'p99 ms':>10}"
    )
    rate: dict[tuple[str, Mode], float] = {}
    for mode, label in MODES.items():
        for name in names:
            samples = results[name, mode]
            rates = [s.rate for s in samples]
            rate[name, mode] = statistics.median(rates)
            p50 = statistics.median(s.p50 for s in samples) * 1e3
            p99 = statistics.median(s.p99 for s in samples) * 1e3
            print(
                f"{name:<26}{label:<16}{rate[name, mode]:>10,.0f}{min(rates):>10,.0f}"
                f"{max(rates):>10,.0f}{p50:>10.2f}{p99:>10.2f}"
            )
    print()
    for mine, theirs in PAIRS:
        for mode, label in MODES.items():
            ratio = rate[mine, mode] / rate[theirs, mode]
            print(
                f"{f'{mine} / {theirs}, {label}':<62}{ratio:>6.2f}x"
                f"   (target >= {TARGETS[mode]:.2f}x)"
            )
    print(f"\ntook {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()

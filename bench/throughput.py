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
    one `@eb.sub` async handler, with the default settings (concurrency 1: one
    event at a time, in order) and with `concurrency=100` ("c100");
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
import gc
import importlib
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import MODES, Contestant, Mode, raw_body

#: Brokers with a `throughput_<name>.py` module of contestants, in print order.
BROKERS = ["sqlite", "nats", "redis", "rabbitmq"]


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
    parser.add_argument(
        "--brokers", default=",".join(BROKERS), help="comma-separated: " + ", ".join(BROKERS)
    )
    args = parser.parse_args()
    n = args.events
    began = time.perf_counter()
    CONTESTANTS: list[Contestant] = []
    PAIRS: list[tuple[str, str, Mode, float | None]] = []
    for broker in args.brokers.split(","):
        try:
            module = importlib.import_module(f"throughput_{broker}")
        except ModuleNotFoundError as exc:
            print(f"skipping {broker}: {exc}", file=sys.stderr)
            continue
        CONTESTANTS += module.CONTESTANTS
        PAIRS += module.PAIRS

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
    for mine, theirs, mode, target in PAIRS:
        ratio = rate[mine, mode] / rate[theirs, mode]
        label = f"{mine} / {theirs}, {MODES[mode]}"
        if target is None:
            print(f"{label:<62}{ratio:>6.2f}x   (for reference)")
        else:
            verdict = "met" if ratio >= target else "MISSED"
            print(f"{label:<62}{ratio:>6.2f}x   (target >= {target:.2f}x: {verdict})")
    print(f"\ntook {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()

"""In-process dispatch: one typed event to 3 subscribing services, eventbook vs its peers.

Peers, with the same shape (3 service instances, one handler method each, one
typed event per publish):
  * blinker: `Signal.send` (sync) and `Signal.send_async` (async receivers);
  * pypubsub: `pub.sendMessage` (sync only).
eventbook runs on `memory://`: async handlers published with `await book.publish`,
and sync handlers published from plain sync code with `book.emit` (sync handlers
run in worker threads so they never block the event loop: that hop is the price).

Contestants are alternated within each round, and the median of the rounds is
reported, so drift of a shared machine hits all of them alike.

    python bench/dispatch.py [--rounds 15] [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from blinker import Signal
from pubsub import pub as pypubsub

import eventbook as eb


class Customer(eb.Event):
    name: str
    address: str
    email: str


EVENT = Customer(name="SELO", address="Seoul, Korea", email="rochan87@gmail.com")
SERVICES = ("BankService", "MailService", "PostService")


def make_eventbook(is_async: bool) -> tuple[eb.EventBook, eb.Topic[Customer]]:
    book = eb.EventBook("bench")
    signup = book.topic("customer.signup", Customer)
    for name in SERVICES:
        if is_async:

            class Service:
                async def handle(self, customer: Customer) -> None:
                    self.last = customer

        else:

            class Service:  # type: ignore[no-redef]
                def handle(self, customer: Customer) -> None:
                    self.last = customer

        Service.handle = eb.sub(signup)(Service.handle)  # type: ignore[method-assign]
        book.service(Service(), name=name)
    return book, signup


def make_blinker(is_async: bool) -> tuple[Signal, list[Any]]:
    signal = Signal()
    keep: list[Any] = []  # blinker holds receivers weakly
    for _ in SERVICES:
        if is_async:

            class Service:
                async def handle(self, sender: Any, event: Customer) -> None:
                    self.last = event

        else:

            class Service:  # type: ignore[no-redef]
                def handle(self, sender: Any, event: Customer) -> None:
                    self.last = event

        service = Service()
        keep.append(service)
        signal.connect(service.handle)
    return signal, keep


def make_pypubsub() -> list[Any]:
    keep: list[Any] = []
    for _ in SERVICES:

        class Service:
            def handle(self, event: Customer) -> None:
                self.last = event

        service = Service()
        keep.append(service)
        pypubsub.subscribe(service.handle, "customer_signup")
    return keep


def timed_sync(send: Callable[[], Any], n: int) -> float:
    gc.collect()
    start = time.perf_counter_ns()
    for _ in range(n):
        send()
    return (time.perf_counter_ns() - start) / n


def timed_async(
    loop: asyncio.AbstractEventLoop, send: Callable[[], Awaitable[Any]], n: int
) -> float:
    async def burst() -> float:
        gc.collect()
        start = time.perf_counter_ns()
        for _ in range(n):
            await send()
        return (time.perf_counter_ns() - start) / n

    return loop.run_until_complete(burst())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    n = args.events

    loop = asyncio.new_event_loop()
    async_book, async_topic = make_eventbook(is_async=True)
    async_running = async_book.start("memory://")
    loop.run_until_complete(async_running.__aenter__())
    sync_book, sync_topic = make_eventbook(is_async=False)
    sync_running = sync_book.start("memory://")
    sync_running.__enter__()
    blinker_async, keep_a = make_blinker(is_async=True)
    blinker_sync, keep_s = make_blinker(is_async=False)
    keep_p = make_pypubsub()

    sender = object()
    contestants: dict[str, Callable[[], float]] = {
        "eventbook async": lambda: timed_async(
            loop, lambda: async_book.publish(async_topic, EVENT), n
        ),
        "blinker send_async": lambda: timed_async(
            loop, lambda: blinker_async.send_async(sender, event=EVENT), n
        ),
        "eventbook sync": lambda: timed_sync(lambda: sync_book.emit(sync_topic, EVENT), n),
        "blinker send": lambda: timed_sync(lambda: blinker_sync.send(sender, event=EVENT), n),
        "pypubsub": lambda: timed_sync(
            lambda: pypubsub.sendMessage("customer_signup", event=EVENT), n
        ),
    }
    names = list(contestants)
    for name in names:  # warm-up
        contestants[name]()
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(args.rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(contestants[name]())

    sync_running.__exit__(None, None, None)
    loop.run_until_complete(async_running.__aexit__(None, None, None))
    loop.close()
    del keep_a, keep_s, keep_p

    median = {name: statistics.median(values) for name, values in results.items()}
    print(f"dispatch of one typed event to 3 services; median of {args.rounds} alternated rounds")
    print(f"{'contestant':<22}{'ns/event':>12}{'min':>12}{'max':>12}")
    for name in names:
        values = results[name]
        print(f"{name:<22}{median[name]:>12,.0f}{min(values):>12,.0f}{max(values):>12,.0f}")
    print()
    ratios = [
        ("eventbook async / blinker send_async", "eventbook async", "blinker send_async"),
        ("eventbook sync / blinker send", "eventbook sync", "blinker send"),
        ("eventbook sync / pypubsub", "eventbook sync", "pypubsub"),
    ]
    for label, mine, theirs in ratios:
        print(f"{label:<40}{median[mine] / median[theirs]:>8.2f}x")


if __name__ == "__main__":
    main()

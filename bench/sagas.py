"""Durable sagas: three-step sagas completed per second, and the price of durability.

Each contestant starts N sign-ups (events on `customer.signup`, published in windows
of 100) and ends when all are done, participants in the same process:
  * saga on sqlite: the saga `onboard` (bank, mail, post steps, each a command over
    the broker answered by its service), broker and journal in one SQLite file;
  * saga on PostgreSQL: the same, the journal in PostgreSQL (127.0.0.1:5432,
    database `test`), the broker sqlite;
  * choreography: the same three handlers subscribed to the event, on sqlite, no
    journal, no commands, no order between them.
For context, Temporal's own Python benchmark reports about 80 workflows/s; the
issue's aim is 1,000 three-step sagas/s on sqlite.

    python bench/sagas.py [--sagas 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

import eventbook as eb

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


class Customer(eb.Event):
    n: int
    email: str = "selo@example.com"


def book_with_services(done: Callable[[], None]) -> tuple[eb.EventBook, eb.Topic[Customer], type]:
    book = eb.EventBook(f"bench-{uuid.uuid4().hex[:8]}")
    signup = book.topic("customer.signup", Customer)

    @book.service
    class BankService:
        async def create_account(self, customer: Customer) -> dict[str, int]:
            return {"account": customer.n}

        async def close_account(self, customer: Customer) -> None: ...

    @book.service
    class MailService:
        async def send(self, customer: Customer) -> None: ...

    @book.service
    class PostService:
        async def send(self, customer: Customer) -> None:
            done()

    @book.saga("onboarding", start_on=signup)
    async def onboard(saga: eb.Saga, customer: Customer) -> None:
        await saga.step(BankService.create_account, customer, undo=BankService.close_account)
        await saga.step(MailService.send, customer)
        await saga.step(PostService.send, customer)

    return book, signup, BankService


async def run_sagas(n: int, store: str | None) -> float:
    finished = asyncio.Event()
    count = 0

    def done() -> None:
        nonlocal count
        count += 1
        if count == n:
            finished.set()

    book, signup, _ = book_with_services(done)
    with tempfile.TemporaryDirectory() as tmp:
        async with book.start(f"sqlite:///{tmp}/bench.db", store=store):
            began = time.perf_counter()
            for lo in range(0, n, 100):
                await asyncio.gather(
                    *(book.publish(signup, Customer(n=i)) for i in range(lo, min(n, lo + 100)))
                )
            await asyncio.wait_for(finished.wait(), 600)
            # The last step ran; its saga is journaled completed a moment later.
            while await book.journal.list(["running"], limit=1):  # noqa: ASYNC110 - a poll of the store
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - began
            completed = await book.journal.list(["completed"], limit=n)
            if len(completed) != n:
                raise RuntimeError(f"{len(completed)} of {n} sagas completed")
            return n / elapsed


async def run_choreography(n: int) -> float:
    book = eb.EventBook(f"bench-{uuid.uuid4().hex[:8]}")
    signup = book.topic("customer.signup", Customer)
    finished = asyncio.Event()
    count = 0

    async def one(customer: Customer) -> None:
        nonlocal count
        count += 1
        if count == 3 * n:
            finished.set()

    for name in ("BankService", "MailService", "PostService"):

        class Service:
            @eb.sub(signup)
            async def handle(self, customer: Customer) -> None:
                await one(customer)

        book.service(Service(), name=name)
    with tempfile.TemporaryDirectory() as tmp:
        async with book.start(f"sqlite:///{tmp}/bench.db"):
            began = time.perf_counter()
            for lo in range(0, n, 100):
                await asyncio.gather(
                    *(book.publish(signup, Customer(n=i)) for i in range(lo, min(n, lo + 100)))
                )
            await asyncio.wait_for(finished.wait(), 600)
            return n / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sagas", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL journal")
    args = parser.parse_args()
    n = args.sagas
    contestants: dict[str, Callable[[], Awaitable[float]]] = {
        "saga, journal on sqlite": lambda: run_sagas(n, None),
        "choreography, same handlers": lambda: run_choreography(n),
    }
    if not args.no_postgres:
        contestants["saga, journal on PostgreSQL"] = lambda: run_sagas(n, POSTGRES)
    results: dict[str, list[float]] = {name: [] for name in contestants}
    names = list(contestants)
    began = time.perf_counter()
    for round_no in range(args.rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(asyncio.run(contestants[name]()))
    print(f"{n} three-step sign-ups per run, median of {args.rounds} alternated rounds")
    print(f"{'contestant':<32}{'per second':>12}{'min':>10}{'max':>10}")
    median = {name: statistics.median(values) for name, values in results.items()}
    for name, values in results.items():
        print(f"{name:<32}{median[name]:>12,.0f}{min(values):>10,.0f}{max(values):>10,.0f}")
    choreography = median["choreography, same handlers"]
    print()
    for name in names:
        if name.startswith("saga"):
            print(f"{name} / choreography: {median[name] / choreography:.2f}x")
    print(f"\ntook {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()

"""The broker contract: one test suite every broker passes unchanged.

A broker's tests subclass `BrokerContract` (every broker) or `WireBrokerContract`
(brokers that move bytes between processes) and provide one fixture, `broker_url`:

    class TestSqlite(WireBrokerContract):
        @pytest.fixture
        def broker_url(self, tmp_path):
            return f"sqlite:///{tmp_path}/eb.db"

An outside broker implementation can run the same suite against itself. Each
test uses a book of its own (a unique name), so tests on a shared server never
see each other's events.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ..book import EventBook
from ..decorators import sub
from ..envelope import Envelope, encode
from ..errors import PayloadTooLargeError
from ..event import Event
from ..observe import Observer
from ..retry import Backoff
from ..service import Handler
from . import eventually

DEADLINE = 30.0
NO_JITTER = Backoff(initial=0.05, factor=2.0, jitter=0.0)


class Item(Event):
    n: int
    note: str = ""


def unique_book(prefix: str = "contract") -> EventBook:
    """A book whose name no other test uses: its channels are its own."""
    return EventBook(f"{prefix}-{uuid.uuid4().hex[:10]}")


async def inject(
    book: EventBook, topic: str, *, body: bytes | None = None, data: Any = None
) -> None:
    """Put an event on `topic` as a careless producer would, unchecked.

    `body` is sent as it is; without it, an event carrying `data` is built (and
    encoded, for a broker that moves bytes).
    """
    broker = book._running().broker
    envelope = Envelope(topic, data, "/contract/rogue")
    if body is None and broker.encodes:
        body = encode(envelope, json.dumps(data).encode())
    await broker.publish(envelope, body)


async def dead_letter_count(book: EventBook, count: int) -> bool:
    """True once `book` has exactly `count` dead letters (a condition for `eventually`)."""
    return len(await book.dead_letters()) == count


class _Attempts(Observer):
    """When each try of each event started (handled or failed), per handler."""

    def __init__(self) -> None:
        self.tries: dict[int, list[tuple[int, float]]] = {}

    def record(self, envelope: Envelope, attempt: int) -> None:
        data = envelope.data
        n = data.n if isinstance(data, Item) else int(data["n"])
        self.tries.setdefault(n, []).append((attempt, time.monotonic()))

    def handled(self, handler: Handler, envelope: Envelope, attempt: int) -> None:
        self.record(envelope, attempt)

    def failed(
        self,
        handler: Handler,
        envelope: Envelope,
        attempt: int,
        error: BaseException,
        retry_in: float | None,
    ) -> None:
        self.record(envelope, attempt)


class BrokerContract:
    """What every broker guarantees, in-process ones included."""

    @pytest.fixture
    def broker_url(self) -> str:
        raise NotImplementedError("a broker's contract tests provide the broker_url fixture")

    @asynccontextmanager
    async def running(
        self, book: EventBook, url: str, services: list[str] | None = None
    ) -> AsyncIterator[EventBook]:
        async with book.start(url, services=services, drain_timeout=DEADLINE):
            yield book

    async def test_at_least_once_delivery(self, broker_url: str) -> None:
        book = unique_book()
        topic = book.topic("items", Item)
        seen: list[int] = []

        @sub(topic)
        async def collect(item: Item) -> None:
            seen.append(item.n)

        async with self.running(book, broker_url):
            for n in range(100):
                await book.publish(topic, Item(n=n))
            await eventually(lambda: len(set(seen)) == 100, DEADLINE)
        assert set(seen) == set(range(100))

    async def test_fan_out_across_services(self, broker_url: str) -> None:
        book = unique_book()
        topic = book.topic("items", Item)
        seen: dict[str, list[int]] = {"BankService": [], "MailService": [], "post": []}

        @book.service
        class BankService:
            @sub(topic)
            async def open(self, item: Item) -> None:
                seen[type(self).__name__].append(item.n)

        @book.service
        class MailService:
            @sub(topic)
            def send(self, item: Item) -> None:
                seen[type(self).__name__].append(item.n)

        @sub(topic)
        async def post(item: Item) -> None:
            seen["post"].append(item.n)

        async with self.running(book, broker_url):
            for n in range(30):
                await book.publish(topic, Item(n=n))
            await eventually(lambda: all(len(v) >= 30 for v in seen.values()), DEADLINE)
        for name, got in seen.items():
            assert sorted(got) == list(range(30)), name

    async def test_retry_with_backoff_counted_by_the_broker(self, broker_url: str) -> None:
        book = unique_book()
        topic = book.topic("items", Item)
        attempts = book.observe(_Attempts())
        assert isinstance(attempts, _Attempts)
        calls: list[int] = []

        @sub(topic, retries=3, backoff=NO_JITTER)
        async def flaky(item: Item) -> None:
            calls.append(item.n)
            if len(calls) < 3:
                raise RuntimeError(f"try {len(calls)} fails")

        async with self.running(book, broker_url):
            await book.publish(topic, Item(n=7))
            await eventually(lambda: len(attempts.tries.get(7, [])) == 3, DEADLINE)
            assert await book.dead_letters() == []
        tries = attempts.tries[7]
        assert [a for a, _ in tries] == [1, 2, 3]
        gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(tries)]
        # Backoff is a lower bound: 0.05 s, then 0.1 s (a little slack for clock granularity).
        assert gaps[0] >= 0.045
        assert gaps[1] >= 0.095

    async def test_dead_letter_after_n_attempts_with_the_error(self, broker_url: str) -> None:
        book = unique_book()
        topic = book.topic("items", Item)
        healthy = False
        handled: list[int] = []

        @sub(topic, retries=2, backoff=Backoff(initial=0.01, jitter=0.0))
        async def fragile(item: Item) -> None:
            if not healthy:
                raise ValueError(f"cannot take item {item.n}")
            handled.append(item.n)

        steady_saw: list[int] = []

        @sub(topic)
        async def steady(item: Item) -> None:
            steady_saw.append(item.n)

        async with self.running(book, broker_url):
            await book.publish(topic, Item(n=1))
            await eventually(lambda: dead_letter_count(book, 1), DEADLINE)
            [letter] = await book.dead_letters()
            assert letter.topic == "items"
            assert letter.handler == "fragile"
            assert letter.reason == "failed"
            assert letter.attempts == 3
            assert "ValueError: cannot take item 1" in letter.error
            assert '"n":1' in letter.body.replace(" ", "")
            healthy = True
            assert await book.replay() == 1
            await eventually(lambda: handled == [1], DEADLINE)
            assert await book.dead_letters() == []
            # The replay went to `fragile` only: `steady`, which keeps order, sees the
            # next event right after the first one.
            await book.publish(topic, Item(n=2))
            await eventually(lambda: handled == [1, 2] and steady_saw[-1:] == [2], DEADLINE)
            assert steady_saw == [1, 2]

    async def test_invalid_payload_is_dead_lettered_and_the_next_event_handled(
        self, broker_url: str
    ) -> None:
        book = unique_book()
        topic = book.topic("items", Item)
        handled: list[int] = []

        @sub(topic)
        async def collect(item: Item) -> None:
            handled.append(item.n)

        async with self.running(book, broker_url):
            await inject(book, "items", data={"n": "not a number"})
            await book.publish(topic, Item(n=2))
            await eventually(lambda: handled == [2], DEADLINE)
            await eventually(lambda: dead_letter_count(book, 1), DEADLINE)
            [letter] = await book.dead_letters()
        assert letter.reason == "invalid"
        assert "field 'n'" in letter.error

    async def test_graceful_drain_lets_in_flight_handlers_finish(self, broker_url: str) -> None:
        book = unique_book()
        topic = book.topic("items", Item)
        started = asyncio.Event()
        finished: list[int] = []

        @sub(topic)
        async def slow(item: Item) -> None:
            started.set()
            await asyncio.sleep(0.3)
            finished.append(item.n)

        async with self.running(book, broker_url):
            await book.publish(topic, Item(n=1))
            await asyncio.wait_for(started.wait(), DEADLINE)
        # Leaving start() waited for the handler, which was not cancelled.
        assert finished == [1]
        # And it was acked: running again delivers nothing.
        async with self.running(book, broker_url):
            await book.publish(topic, Item(n=2))
            await eventually(lambda: finished == [1, 2], DEADLINE)

    async def test_every_handled_event_stays_acked_after_a_restart(self, broker_url: str) -> None:
        book = unique_book()
        topic = book.topic("items", Item)
        seen: list[int] = []

        @sub(topic)
        async def quick(item: Item) -> None:
            # Never awaits: brokers that share one commit among the acks of a batch
            # must still have committed them all when start() is left.
            seen.append(item.n)

        async with self.running(book, broker_url):
            for lo in range(0, 300, 100):
                await asyncio.gather(*(book.publish(topic, Item(n=n)) for n in range(lo, lo + 100)))
            await eventually(lambda: len(set(seen)) == 300, DEADLINE)
        async with self.running(book, broker_url):
            await book.publish(topic, Item(n=300))
            await eventually(lambda: 300 in seen, DEADLINE)
        assert sorted(seen) == list(range(301)), "a handled event was delivered again"

    async def test_order_is_kept_with_concurrency_1(self, broker_url: str) -> None:
        book = unique_book()
        topic = book.topic("items", Item)
        seen: list[int] = []

        @sub(topic, concurrency=1)
        async def ordered(item: Item) -> None:
            await asyncio.sleep(0)
            seen.append(item.n)

        async with self.running(book, broker_url):
            for n in range(200):
                await book.publish(topic, Item(n=n))
            await eventually(lambda: len(seen) == 200, DEADLINE)
        assert seen == list(range(200))


class WireBrokerContract(BrokerContract):
    """What a broker that moves bytes, between processes, guarantees on top."""

    #: URL for tests where a killed consumer's work must come back soon.
    def fast_redelivery(self, url: str) -> str:
        return url

    async def test_publish_refuses_a_payload_over_the_size_limit(self, broker_url: str) -> None:
        book = EventBook(unique_book().name, max_payload=2048)
        topic = book.topic("items", Item)
        handled: list[int] = []

        @sub(topic)
        async def collect(item: Item) -> None:
            handled.append(item.n)

        async with self.running(book, broker_url):
            with pytest.raises(PayloadTooLargeError, match="over the 2048-byte limit"):
                await book.publish(topic, Item(n=1, note="x" * 4096))
            await book.publish(topic, Item(n=2, note="x" * 1000))  # under the limit: fine
            await eventually(lambda: handled == [2], DEADLINE)

    async def test_undecodable_and_unknown_events_are_dead_lettered(self, broker_url: str) -> None:
        book = unique_book()
        topic = book.topic("items", Item)
        handled: list[int] = []

        @sub(topic)
        async def collect(item: Item) -> None:
            handled.append(item.n)

        async with self.running(book, broker_url):
            await inject(book, "items", body=b"\x00 this is not JSON")
            other = Envelope("orders.placed", {"n": 1}, "/rogue")
            await inject(book, "items", body=encode(other, b'{"n": 1}'))
            await book.publish(topic, Item(n=3))
            await eventually(lambda: handled == [3], DEADLINE)
            await eventually(lambda: dead_letter_count(book, 2), DEADLINE)
            reasons = sorted(letter.reason for letter in await book.dead_letters())
        assert reasons == ["undecodable", "unknown-type"]

    async def test_oversize_event_is_dead_lettered_without_decoding(self, broker_url: str) -> None:
        book = EventBook(unique_book().name, max_payload=1024)
        topic = book.topic("items", Item)
        handled: list[int] = []

        @sub(topic)
        async def collect(item: Item) -> None:
            handled.append(item.n)

        async with self.running(book, broker_url):
            big = Envelope("items", {"n": 1}, "/rogue")
            await inject(
                book, "items", body=encode(big, b'{"n": 1, "note": "' + b"x" * 2000 + b'"}')
            )
            await book.publish(topic, Item(n=4))
            await eventually(lambda: handled == [4], DEADLINE)
            await eventually(lambda: dead_letter_count(book, 1), DEADLINE)
            [letter] = await book.dead_letters()
        assert letter.reason == "oversize"
        assert "> limit 1024" in letter.error

    async def test_competing_replicas_share_a_services_events(self, broker_url: str) -> None:
        name = unique_book().name
        replicas = [EventBook(name), EventBook(name)]
        seen: list[list[int]] = [[], []]
        publisher = EventBook(name)
        for index, book in enumerate([*replicas, publisher]):
            topic = book.topic("items", Item)

            def make(i: int, topic: Any = topic) -> type:
                class Worker:
                    @sub(topic, concurrency=1)
                    async def work(self, item: Item) -> None:
                        seen[i].append(item.n)
                        await asyncio.sleep(0.005)

                return Worker

            book.service(make(index), name="Worker")

        async with (
            self.running(replicas[0], broker_url),
            self.running(replicas[1], broker_url),
            self.running(publisher, broker_url, services=[]),
        ):
            topic = publisher.topics["items"]
            for n in range(200):
                await publisher.publish(topic, Item(n=n))
            await eventually(lambda: len(seen[0]) + len(seen[1]) >= 200, DEADLINE)
        assert sorted(seen[0] + seen[1]) == list(range(200))  # each event once, no loss
        assert seen[0]
        assert seen[1]

    async def test_a_killed_consumers_work_is_redelivered(
        self, broker_url: str, tmp_path: Path
    ) -> None:
        url = self.fast_redelivery(broker_url)
        name = unique_book().name
        marker = tmp_path / "claimed"
        app = _write_app(tmp_path, name)
        env = {**os.environ, "CONTRACT_BOOK": name, "CONTRACT_MARKER": str(marker)}
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the loop's work
            [sys.executable, "-m", "eventbook", "run", "contract_app:book", "--broker", url],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            module = _import(app, name)
            book: EventBook = module.book
            async with self.running(book, url, services=[]):
                await book.publish(book.topics["items"], Item(n=1))
                await eventually(marker.exists, DEADLINE)
            proc.send_signal(signal.SIGKILL)  # mid-handler: the event is leased, not acked
            proc.wait(DEADLINE)
            async with self.running(book, url):
                await eventually(lambda: module.handled == [(1, 2)], DEADLINE)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


_APP = """
import asyncio
import os
import eventbook as eb
from eventbook.testing.contract import Item

book = eb.EventBook(os.environ.get("CONTRACT_BOOK", "{name}"))
ITEMS = book.topic("items", Item)
handled = []


class Attempts(eb.Observer):
    def handled(self, handler, envelope, attempt):
        handled.append((envelope.data.n, attempt))


book.observe(Attempts())


@book.service
class Holder:
    @eb.sub(ITEMS)
    async def hold(self, item: Item) -> None:
        marker = os.environ.get("CONTRACT_MARKER")
        if marker:  # the process to be killed: take the event, then hang
            open(marker, "w").close()
            await asyncio.Event().wait()
"""


def _write_app(folder: Path, name: str) -> Path:
    path = folder / "contract_app.py"
    path.write_text(_APP.replace("{name}", name))
    return path


def _import(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"contract_app_{name.replace('-', '_')}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


__all__ = [
    "BrokerContract",
    "Item",
    "WireBrokerContract",
    "dead_letter_count",
    "inject",
    "unique_book",
]

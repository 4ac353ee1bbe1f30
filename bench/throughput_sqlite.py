"""sqlite:// contestants: eventbook on the embedded broker, and a raw sqlite3 queue."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import tempfile
from collections.abc import Awaitable

from harness import WINDOW, Contestant, Mode, Recorder, Tick, drive, raw_body, raw_index

import eventbook as eb


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


CONTESTANTS = [
    # The defaults: one event at a time per handler, in order.
    Contestant("eventbook sqlite://", eventbook_sqlite),
    # A handler that takes 100 events at once: acks that finish together share a commit.
    Contestant("eventbook sqlite:// c100", functools.partial(eventbook_sqlite, concurrency=100)),
    Contestant("raw sqlite3", raw_sqlite),
]
#: (eventbook, peer, mode, target): the ratios printed, with the issue's targets; the
#: targets are on eventbook's defaults, c100 is shown for reference (target None).
PAIRS: list[tuple[str, str, Mode, float | None]] = [
    ("eventbook sqlite://", "raw sqlite3", "one", 0.20),
    ("eventbook sqlite://", "raw sqlite3", "window", 0.30),
    ("eventbook sqlite:// c100", "raw sqlite3", "one", None),
    ("eventbook sqlite:// c100", "raw sqlite3", "window", None),
]

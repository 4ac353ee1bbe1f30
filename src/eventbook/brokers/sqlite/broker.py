"""The `sqlite://` broker: connection, background duties, publish, and dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import BrokerError
from ..base import DeadLetter, Deliver
from . import store
from .consumer import Consumer
from .settings import SqliteSettings
from .writer import Writer, is_lock_error

if TYPE_CHECKING:
    from ...envelope import Envelope
    from ...service import Handler

log = logging.getLogger("eventbook.brokers.sqlite")

#: Pages the WAL may grow to before SQLite folds it back into the database; each
#: fold costs an fsync, and the default (1000 pages) folds every few thousand events.
WAL_PAGES = 8000


class SqliteBroker:
    """Embedded durable broker; see `eventbook.brokers.sqlite`."""

    encodes = True

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.settings = SqliteSettings.from_url(url)
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stopping = False
        self._db: sqlite3.Connection | None = None
        self._writer: Writer | None = None
        self._consumers: list[Consumer] = []
        self._background: list[asyncio.Task[None]] = []
        self._ephemeral: list[str] = []
        self._rows: list[tuple[str, str, bytes, float]] = []
        self._appended: asyncio.Future[None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def connect(self) -> None:
        path = Path(self.settings.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # Wait only briefly inside SQLite (that wait blocks the event loop); longer
            # waits for the write lock are asynchronous (see writer.py).
            db.execute("PRAGMA busy_timeout=5")
            # While another process creates a new file, even reading its header waits.
            await _retry_locked(lambda: self._prepare(db))
        except (sqlite3.Error, OSError) as exc:
            raise BrokerError(f"cannot open the sqlite:// broker at {path}: {exc}") from None
        self._db = db
        self._writer = Writer(db)
        self.stopping = False
        self._background = [
            asyncio.create_task(self._watch(), name="eventbook-sqlite-watch"),
            asyncio.create_task(self._renew_leases(), name="eventbook-sqlite-leases"),
            asyncio.create_task(self._compact_now_and_then(), name="eventbook-sqlite-compact"),
        ]

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute(f"PRAGMA synchronous={self.settings.durability.upper()}")
        # Small pages: an ack rewrites one page of eb_pending, and a commit's cost is
        # mostly the pages it writes (measured: 9 µs an ack at 1 KiB, 13 µs at 4 KiB).
        # Only takes effect on a new file.
        db.execute("PRAGMA page_size=1024")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
        db.execute("PRAGMA journal_mode=WAL")
        store.create(db)

    async def drain(self, timeout: float) -> None:
        self.stopping = True
        self.wake()
        await Consumer.drain_all(self._consumers, timeout)

    async def close(self) -> None:
        self.stopping = True
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background = []
        await Consumer.drain_all(self._consumers, 0)
        self._consumers = []
        if self._db is not None:
            if self._ephemeral:
                topics = list(self._ephemeral)
                with contextlib.suppress(BrokerError):
                    await self.write(lambda db: store.forget_topics(db, topics))
            await self.write.close()  # the acks still queued, of handlers that finished
            self._db.close()
            self._db = None
            self._writer = None

    # -- publishing and consuming ----------------------------------------------------

    def channel(self, topic: str) -> str:
        """The topic's name in the file: under the book's name, like the other brokers."""
        return f"{self.namespace}.{topic}"

    async def declare(self, group: str, topic: str) -> None:
        channel = self.channel(topic)
        await self.write(lambda db: store.declare(db, group, channel))

    async def publish(self, envelope: Envelope, body: bytes | None) -> None:
        if body is None:
            raise BrokerError("sqlite:// publishes encoded events only")
        # The publishes of one loop turn are appended by one statement, in one commit,
        # and wait for that commit together.
        self._rows.append((self.channel(envelope.type), envelope.id, body, time.time()))
        if self._appended is None:
            self._appended = self.write.submit(self._append)
        await self._appended

    def _append(self, db: sqlite3.Connection) -> None:
        rows, self._rows, self._appended = self._rows, [], None
        store.append(db, rows)
        self.wake()

    async def consume(self, handler: Handler, deliver: Deliver) -> None:
        if handler.topic.name.startswith("_reply."):
            # This process's reply channel: nobody else reads it; dropped on close.
            self._ephemeral.append(self.channel(handler.topic.name))
        await self.declare(handler.name, handler.topic.name)
        consumer = Consumer(self, handler, deliver)
        self._consumers.append(consumer)
        consumer.start()

    # -- dead letters ----------------------------------------------------------------

    async def dead_letters(self) -> list[DeadLetter]:
        prefix = f"{self.namespace}."
        return [
            DeadLetter(
                id=str(letter_id),
                event_id=event_id,
                topic=topic[len(prefix) :],
                handler=group,
                reason=reason,
                error=error,
                attempts=attempts,
                failed_at=datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"),
                body=body.decode("utf-8", "replace") if body is not None else "",
            )
            for letter_id, event_id, topic, group, reason, error, attempts, at, body in (
                store.dead_letters(self.database(), prefix)
            )
        ]

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        chosen = self._chosen(ids)
        await self.write(lambda db: store.replay(db, chosen))
        self.wake()
        return len(chosen)

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        chosen = [letter_id for letter_id, _, _ in self._chosen(ids)]
        await self.write(lambda db: store.purge(db, chosen))
        return len(chosen)

    def _chosen(self, ids: Sequence[str] | None) -> list[tuple[int, str, int]]:
        rows = store.dead_letters(self.database(), f"{self.namespace}.")
        wanted = None if ids is None else set(ids)
        return [
            (row[0], row[3], seq)
            for row, seq in ((row, self._seq_of(row[0])) for row in rows)
            if wanted is None or str(row[0]) in wanted
        ]

    def _seq_of(self, letter_id: int) -> int:
        (seq,) = (
            self.database().execute("SELECT seq FROM eb_dead WHERE id = ?", (letter_id,)).fetchone()
        )
        return int(seq)

    # -- plumbing used by the consumers ----------------------------------------------

    def database(self) -> sqlite3.Connection:
        if self._db is None:
            raise BrokerError("the sqlite:// broker is not connected")
        return self._db

    @property
    def write(self) -> Writer:
        if self._writer is None:
            raise BrokerError("the sqlite:// broker is not connected")
        return self._writer

    def wake(self) -> None:
        """Something changed: let every idle consumer of this process look."""
        for consumer in self._consumers:
            consumer.changed.set()

    async def _watch(self) -> None:
        """Notice other processes' commits (PRAGMA data_version) and wake the consumers."""
        db = self.database()
        seen = None
        while True:
            try:
                version = db.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.OperationalError:
                version = None  # busy for a moment: wake everyone, to be safe
            if version != seen or version is None:
                seen = version
                self.wake()
            await asyncio.sleep(self.settings.poll)

    async def _renew_leases(self) -> None:
        """Keep the leases of what this process holds, however long its handlers run."""
        while True:
            await asyncio.sleep(self.settings.lease / 3)
            groups = [consumer.group for consumer in self._consumers]
            try:
                await self.write(
                    functools.partial(
                        store.renew, groups=groups, owner=self.owner, lease=self.settings.lease
                    )
                )
            except BrokerError as exc:
                log.error("sqlite://: cannot renew leases (%s); trying again", exc)

    async def _compact_now_and_then(self) -> None:
        """Delete events every group is done with, once older than the retention."""
        while True:
            await asyncio.sleep(min(60.0, max(1.0, self.settings.retention / 10)))
            before = time.time() - self.settings.retention
            try:
                await self.write(functools.partial(store.compact, before=before))
            except BrokerError as exc:
                log.warning("sqlite:// compaction skipped: %s", exc)


async def _retry_locked(action: Callable[[], object]) -> None:
    """Run statements that need a lock another process holds, waiting without blocking."""
    delay = 0.001
    while True:
        try:
            action()
            return
        except sqlite3.OperationalError as exc:
            if not is_lock_error(exc):
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)

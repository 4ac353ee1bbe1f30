"""`sqlite:///path.db`: the embedded durable broker; zero infrastructure, many processes.

One SQLite file in WAL mode holds an append-only event log and, per consumer
group (one per handler), a cursor into it plus the events it holds in flight:

* `eb_events`   the log; `event_id` is unique, so a re-sent publish is dropped.
* `eb_groups`   each group's position in each topic.
* `eb_pending`  events a group has claimed and not finished: leased to a
                consumer (`owner`, until `due`) or waiting to be retried (`due`).
* `eb_inbox`    event ids each group has finished (the idempotent consumer).
* `eb_dead`     dead letters, with the reason, the error and the attempts.

Replicas of a service (other processes on the same file) claim from the same
group, so they share its events. A consumer renews the leases of what it holds;
when it dies, its leases run out and the events are claimed again, with their
attempt count (kept here, never in a header) one higher.

SQLite is called on the event loop thread: a statement takes microseconds, far
less than a hop to a worker thread. Write locks are awaited without blocking
the loop (a short busy timeout, then an async back-off).

Durability: by default (`synchronous=NORMAL` in WAL mode) an acknowledged
publish survives a crash of any process; `?durability=full` also survives a
power loss, at the price of an fsync per commit.

URL parameters: `durability` (normal|full), `lease` (seconds, 30),
`retention` (seconds a consumed event is kept, 3600), `prefetch` (events a
consumer claims at once, 100), `poll` (seconds between checks for other
processes' writes, 0.005).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from ..errors import BrokerError, ConfigurationError
from .base import DeadLetter, Deliver

if TYPE_CHECKING:
    from ..envelope import Envelope
    from ..service import Handler

log = logging.getLogger("eventbook.brokers.sqlite")

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS eb_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS eb_events_by_topic ON eb_events (topic, seq);
CREATE TABLE IF NOT EXISTS eb_groups (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (grp, topic)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS eb_pending (
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    due REAL NOT NULL,
    owner TEXT,
    PRIMARY KEY (grp, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS eb_pending_by_due ON eb_pending (grp, due);
CREATE INDEX IF NOT EXISTS eb_pending_by_owner ON eb_pending (owner);
CREATE TABLE IF NOT EXISTS eb_inbox (
    grp TEXT NOT NULL,
    event_id TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (grp, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS eb_inbox_by_age ON eb_inbox (at);
CREATE TABLE IF NOT EXISTS eb_dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    """What a `sqlite://` URL says; see the module docstring."""

    path: str
    durability: str = "normal"
    lease: float = 30.0
    retention: float = 3600.0
    prefetch: int = 100
    poll: float = 0.005

    @classmethod
    def from_url(cls, url: str) -> SqliteSettings:
        """Parse `sqlite:///relative.db` or `sqlite:////absolute/path.db` with parameters.

        Raises:
            ConfigurationError: no path, or a parameter that is unknown or out of range.
        """
        parts = urlsplit(url)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc or not path:
            raise ConfigurationError(
                f"expected sqlite:///relative/path.db or sqlite:////absolute/path.db, got {url!r}"
            )
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(params) - {"durability", "lease", "retention", "prefetch", "poll"}
        if unknown:
            raise ConfigurationError(
                f"unknown sqlite:// parameter(s): {', '.join(sorted(unknown))}"
            )
        try:
            settings = cls(
                path=path,
                durability=params.get("durability", "normal"),
                lease=float(params.get("lease", 30.0)),
                retention=float(params.get("retention", 3600.0)),
                prefetch=int(params.get("prefetch", 100)),
                poll=float(params.get("poll", 0.005)),
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad sqlite:// parameter in {url!r}: {exc}") from None
        if settings.durability not in ("normal", "full"):
            raise ConfigurationError("sqlite:// durability is 'normal' or 'full'")
        if settings.lease <= 0 or settings.prefetch < 1 or settings.poll <= 0:
            raise ConfigurationError("sqlite:// lease and poll must be > 0, prefetch >= 1")
        return settings


class SqliteMessage:
    """One claimed event of one consumer group."""

    __slots__ = ("_consumer", "attempt", "body", "envelope", "event_id", "seq")

    def __init__(
        self, consumer: _Consumer, seq: int, event_id: str, body: bytes, attempt: int
    ) -> None:
        self._consumer = consumer
        self.seq = seq
        self.event_id = event_id
        self.body: bytes | None = body
        self.envelope: Envelope | None = None  # bytes brokers leave decoding to delivery
        self.attempt = attempt

    async def ack(self) -> None:
        await self._consumer.broker._complete(self._consumer.group, self.seq, self.event_id)

    async def retry(self, delay: float) -> None:
        broker, group = self._consumer.broker, self._consumer.group
        await broker._write(
            lambda db: db.execute(
                "UPDATE eb_pending SET due = ?, owner = NULL WHERE grp = ? AND seq = ?",
                (time.time() + delay, group, self.seq),
            )
        )
        broker._wake()

    async def dead_letter(self, reason: str, error: str) -> None:
        consumer = self._consumer
        await consumer.broker._write(
            lambda db: _park(
                db,
                consumer.group,
                consumer.topic,
                self.seq,
                self.event_id,
                reason,
                error,
                self.attempt,
            )
        )


def _park(
    db: sqlite3.Connection,
    group: str,
    topic: str,
    seq: int,
    event_id: str,
    reason: str,
    error: str,
    attempts: int,
) -> None:
    db.execute(
        "INSERT INTO eb_dead (grp, topic, seq, event_id, reason, error, attempts, at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (group, topic, seq, event_id, reason, error, attempts, time.time()),
    )
    db.execute("DELETE FROM eb_pending WHERE grp = ? AND seq = ?", (group, seq))


class _Consumer:
    """Claims one group's events and hands them to the delivery path."""

    def __init__(self, broker: SqliteBroker, handler: Handler, deliver: Deliver) -> None:
        self.broker = broker
        self.group = handler.name
        self.topic = broker._channel(handler.topic.name)
        self.deliver = deliver
        self.slots = asyncio.Semaphore(handler.concurrency)
        self.concurrency = handler.concurrency
        self.in_flight: set[asyncio.Task[None]] = set()
        self.task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"eventbook-consume-{self.group}")

    async def _run(self) -> None:
        broker = self.broker
        while not broker._stopping:
            self.changed.clear()  # before claiming: a wake-up from now on is not lost
            messages = await broker._claim(self)
            if not messages:
                await broker._idle_wait(self)
                continue
            for index, message in enumerate(messages):
                await self.slots.acquire()
                if broker._stopping:
                    self.slots.release()
                    await broker._release([m.seq for m in messages[index:]], self.group)
                    return
                task = asyncio.create_task(self._deliver(message))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)

    async def _deliver(self, message: SqliteMessage) -> None:
        try:
            await self.deliver(message)
        except Exception:
            # The delivery path settles bad input and failed handlers itself; what
            # lands here is the broker failing. The lease runs out, the event comes back.
            log.exception("%s: could not settle event %s", self.group, message.event_id)
        finally:
            self.slots.release()


class SqliteBroker:
    """Embedded durable broker; see the module docstring."""

    encodes = True

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.settings = SqliteSettings.from_url(url)
        self._db: sqlite3.Connection | None = None
        self._owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._consumers: list[_Consumer] = []
        self._stopping = False
        self._background: list[asyncio.Task[None]] = []
        self._completions: list[tuple[str, int, str, asyncio.Future[None]]] = []
        self._flush_scheduled = False
        self._ephemeral: list[str] = []

    # -- lifecycle -------------------------------------------------------------------

    async def connect(self) -> None:
        path = Path(self.settings.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # Wait only briefly inside SQLite (that wait blocks the event loop);
            # longer waits for the write lock are asynchronous, in _write.
            db.execute("PRAGMA busy_timeout=5")
            db.execute(f"PRAGMA synchronous={self.settings.durability.upper()}")
            self._db = db
            await self._write(lambda c: c.execute("PRAGMA journal_mode=WAL") and None, script=True)
            await self._write(lambda c: c.executescript(SCHEMA) and None, script=True)
        except (sqlite3.Error, OSError) as exc:
            raise BrokerError(f"cannot open the sqlite:// broker at {path}: {exc}") from None
        self._stopping = False
        self._background = [
            asyncio.create_task(self._watch(), name="eventbook-sqlite-watch"),
            asyncio.create_task(self._renew_leases(), name="eventbook-sqlite-leases"),
            asyncio.create_task(self._compact_now_and_then(), name="eventbook-sqlite-compact"),
        ]

    async def drain(self, timeout: float) -> None:
        self._stopping = True
        self._wake()
        loops = [c.task for c in self._consumers if c.task is not None]
        if loops:
            await asyncio.wait(loops, timeout=timeout)
        in_flight = [t for c in self._consumers for t in c.in_flight]
        if in_flight:
            _, late = await asyncio.wait(in_flight, timeout=timeout)
            for task in late:
                task.cancel()  # unacked: redelivered once its lease runs out
            if late:
                log.warning(
                    "drain: %d handlers still running after %gs, cancelled", len(late), timeout
                )
                await asyncio.wait(late)

    async def close(self) -> None:
        self._stopping = True
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background = []
        for consumer in self._consumers:
            if consumer.task is not None and not consumer.task.done():
                consumer.task.cancel()
        self._consumers = []
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error, BrokerError):
                channels = list(self._ephemeral)
                await self._write(lambda db: _forget_topics(db, channels))
            self._db.close()
            self._db = None

    # -- publishing and consuming ----------------------------------------------------

    def _channel(self, topic: str) -> str:
        return f"{self.namespace}.{topic}"

    async def declare(self, group: str, topic: str) -> None:
        channel = self._channel(topic)
        await self._write(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO eb_groups (grp, topic, position)"
                " SELECT ?, ?, COALESCE(MAX(seq), 0) FROM eb_events",
                (group, channel),
            )
        )

    async def publish(self, envelope: Envelope, body: bytes | None) -> None:
        if body is None:
            raise BrokerError("sqlite:// publishes encoded events only")
        channel = self._channel(envelope.type)
        event_id = envelope.id
        await self._write(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO eb_events (topic, event_id, body, at) VALUES (?, ?, ?, ?)",
                (channel, event_id, body, time.time()),
            )
        )
        self._wake()

    async def consume(self, handler: Handler, deliver: Deliver) -> None:
        if handler.topic.name.startswith("_reply."):
            # A process's own reply channel: nobody else reads it; forget it on close.
            self._ephemeral.append(self._channel(handler.topic.name))
        await self.declare(handler.name, handler.topic.name)
        consumer = _Consumer(self, handler, deliver)
        self._consumers.append(consumer)
        consumer.start()

    async def _claim(self, consumer: _Consumer) -> list[SqliteMessage]:
        """Lease the group's due retries and expired leases, then its next new events."""
        limit = max(self.settings.prefetch, consumer.concurrency)
        group, channel, owner = consumer.group, consumer.topic, self._owner

        def claim(db: sqlite3.Connection) -> list[tuple[int, str, bytes, int]]:
            now = time.time()
            lease_end = now + self.settings.lease
            rows: list[tuple[int, str, bytes, int]] = db.execute(
                "SELECT p.seq, e.event_id, e.body, p.attempt + 1 FROM eb_pending p"
                " JOIN eb_events e ON e.seq = p.seq"
                " WHERE p.grp = ? AND p.due <= ? ORDER BY p.seq LIMIT ?",
                (group, now, limit),
            ).fetchall()
            if rows:
                db.executemany(
                    "UPDATE eb_pending SET attempt = attempt + 1, due = ?, owner = ?"
                    " WHERE grp = ? AND seq = ?",
                    [(lease_end, owner, group, row[0]) for row in rows],
                )
            room = limit - len(rows)
            if room > 0:
                position = db.execute(
                    "SELECT position FROM eb_groups WHERE grp = ? AND topic = ?",
                    (group, channel),
                ).fetchone()[0]
                fresh = db.execute(
                    "SELECT seq, event_id, body FROM eb_events"
                    " WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (channel, position, room),
                ).fetchall()
                if fresh:
                    done = {
                        r[0]
                        for r in db.execute(
                            "SELECT event_id FROM eb_inbox WHERE grp = ? AND event_id IN"
                            f" ({','.join('?' * len(fresh))})",
                            (group, *(f[1] for f in fresh)),
                        )
                    }
                    db.executemany(
                        "INSERT OR IGNORE INTO eb_pending (grp, seq, attempt, due, owner)"
                        " VALUES (?, ?, 1, ?, ?)",
                        [(group, f[0], lease_end, owner) for f in fresh if f[1] not in done],
                    )
                    db.execute(
                        "UPDATE eb_groups SET position = ? WHERE grp = ? AND topic = ?",
                        (fresh[-1][0], group, channel),
                    )
                    rows += [(f[0], f[1], f[2], 1) for f in fresh if f[1] not in done]
            return rows

        if self._stopping:
            return []
        rows = await self._write(claim)
        return [
            SqliteMessage(consumer, seq, eid, body, attempt) for seq, eid, body, attempt in rows
        ]

    async def _release(self, seqs: list[int], group: str) -> None:
        """Give back claimed events never started, for another replica to take at once."""
        if not seqs:
            return
        await self._write(
            lambda db: db.executemany(
                "UPDATE eb_pending SET due = 0, owner = NULL, attempt = attempt - 1"
                " WHERE grp = ? AND seq = ? AND owner = ?",
                [(group, seq, self._owner) for seq in seqs],
            )
        )

    async def _complete(self, group: str, seq: int, event_id: str) -> None:
        """Ack: forget the pending event and record it done, in one transaction.

        Completions that arrive together are committed together (one commit for
        many concurrent handlers); each ack returns once its own commit is done.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._completions.append((group, seq, event_id, done))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_soon)
        await done

    def _flush_soon(self) -> None:
        task = asyncio.create_task(self._flush())
        self._background.append(task)
        task.add_done_callback(self._background.remove)

    async def _flush(self) -> None:
        batch, self._completions = self._completions, []
        self._flush_scheduled = False
        now = time.time()

        def commit(db: sqlite3.Connection) -> None:
            db.executemany(
                "DELETE FROM eb_pending WHERE grp = ? AND seq = ?", [(g, s) for g, s, _, _ in batch]
            )
            db.executemany(
                "INSERT OR IGNORE INTO eb_inbox (grp, event_id, at) VALUES (?, ?, ?)",
                [(g, e, now) for g, _, e, _ in batch],
            )

        try:
            await self._write(commit)
        except BaseException as exc:
            for *_, done in batch:
                if not done.done():
                    done.set_exception(
                        exc if isinstance(exc, Exception) else BrokerError("ack lost")
                    )
            raise
        for *_, done in batch:
            if not done.done():
                done.set_result(None)

    # -- dead letters ----------------------------------------------------------------

    async def dead_letters(self) -> list[DeadLetter]:
        prefix = f"{self.namespace}."
        rows = (
            self._database()
            .execute(
                "SELECT d.id, d.event_id, d.topic, d.grp, d.reason, d.error, d.attempts,"
                " d.at, e.body"
                " FROM eb_dead d LEFT JOIN eb_events e ON e.seq = d.seq"
                " WHERE d.topic >= ? AND d.topic < ? ORDER BY d.id",
                (prefix, prefix[:-1] + "/"),
            )
            .fetchall()
        )
        return [
            DeadLetter(
                id=str(row[0]),
                event_id=row[1],
                topic=row[2][len(prefix) :],
                handler=row[3],
                reason=row[4],
                error=row[5],
                attempts=row[6],
                failed_at=datetime.fromtimestamp(row[7], UTC).isoformat(timespec="milliseconds"),
                body=_text(row[8]),
            )
            for row in rows
        ]

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        chosen = await self._chosen(ids)

        def replay(db: sqlite3.Connection) -> int:
            for letter_id, group, seq in chosen:
                db.execute(
                    "INSERT OR REPLACE INTO eb_pending (grp, seq, attempt, due, owner)"
                    " VALUES (?, ?, 0, 0, NULL)",
                    (group, seq),
                )
                db.execute(
                    "DELETE FROM eb_inbox WHERE grp = ? AND event_id ="
                    " (SELECT event_id FROM eb_events WHERE seq = ?)",
                    (group, seq),
                )
                db.execute("DELETE FROM eb_dead WHERE id = ?", (letter_id,))
            return len(chosen)

        count = await self._write(replay)
        self._wake()
        return count

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        chosen = await self._chosen(ids)
        await self._write(
            lambda db: db.executemany("DELETE FROM eb_dead WHERE id = ?", [(c[0],) for c in chosen])
        )
        return len(chosen)

    async def _chosen(self, ids: Sequence[str] | None) -> list[tuple[int, str, int]]:
        prefix = f"{self.namespace}."
        rows: list[tuple[int, str, int]] = (
            self._database()
            .execute(
                "SELECT id, grp, seq FROM eb_dead WHERE topic >= ? AND topic < ? ORDER BY id",
                (prefix, prefix[:-1] + "/"),
            )
            .fetchall()
        )
        if ids is None:
            return rows
        wanted = set(ids)
        return [row for row in rows if str(row[0]) in wanted]

    # -- plumbing --------------------------------------------------------------------

    def _database(self) -> sqlite3.Connection:
        if self._db is None:
            raise BrokerError("the sqlite:// broker is not connected")
        return self._db

    async def _write(self, work: Callable[[sqlite3.Connection], T], script: bool = False) -> T:
        """Run `work` in one write transaction; wait for the write lock without blocking."""
        db = self._database()
        delay = 0.0005
        while True:
            try:
                if script:
                    return work(db)
                with _transaction(db):
                    return work(db)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise BrokerError(f"sqlite:// broker: {exc}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _wake(self) -> None:
        for consumer in self._consumers:
            consumer.changed.set()

    async def _idle_wait(self, consumer: _Consumer) -> None:
        """Sleep until something may have changed for `consumer`, or its next retry is due."""
        # Due: retries (no owner) and the leases of other consumers, which may be dead.
        due = (
            self._database()
            .execute(
                "SELECT MIN(due) FROM eb_pending WHERE grp = ? AND (owner IS NULL OR owner != ?)",
                (consumer.group, self._owner),
            )
            .fetchone()[0]
        )
        timeout = 1.0 if due is None else max(0.0, min(1.0, due - time.time()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consumer.changed.wait(), timeout)

    async def _watch(self) -> None:
        """Notice other processes' commits (PRAGMA data_version) and wake the consumers."""
        db = self._database()
        seen = db.execute("PRAGMA data_version").fetchone()[0]
        while True:
            await asyncio.sleep(self.settings.poll)
            version = db.execute("PRAGMA data_version").fetchone()[0]
            if version != seen:
                seen = version
                self._wake()

    async def _renew_leases(self) -> None:
        """Keep the leases of what this process holds, however long its handlers run."""
        while True:
            await asyncio.sleep(self.settings.lease / 3)
            await self._write(
                lambda db: db.execute(
                    "UPDATE eb_pending SET due = ? WHERE owner = ?",
                    (time.time() + self.settings.lease, self._owner),
                )
            )

    async def _compact_now_and_then(self) -> None:
        """Delete events every group is done with, once older than the retention."""
        while True:
            await asyncio.sleep(min(60.0, max(1.0, self.settings.retention / 10)))
            try:
                await self._write(lambda db: _compact(db, time.time() - self.settings.retention))
            except BrokerError as exc:
                log.warning("sqlite:// compaction skipped: %s", exc)


def _compact(db: sqlite3.Connection, before: float) -> None:
    # An event may go when it is old enough, every group on its topic has moved past
    # it, and no group holds it pending or dead-lettered.
    db.execute(
        """
        DELETE FROM eb_events WHERE seq IN (
            SELECT e.seq FROM eb_events e
            WHERE e.at < ?
              AND e.seq <= COALESCE(
                  (SELECT MIN(g.position) FROM eb_groups g WHERE g.topic = e.topic), e.seq)
              AND NOT EXISTS (SELECT 1 FROM eb_pending p WHERE p.seq = e.seq)
              AND NOT EXISTS (SELECT 1 FROM eb_dead d WHERE d.seq = e.seq)
            LIMIT 10000)
        """,
        (before,),
    )
    db.execute("DELETE FROM eb_inbox WHERE at < ?", (before,))


def _forget_topics(db: sqlite3.Connection, channels: list[str]) -> None:
    for channel in channels:
        db.execute("DELETE FROM eb_groups WHERE topic = ?", (channel,))
        db.execute(
            "DELETE FROM eb_pending WHERE seq IN (SELECT seq FROM eb_events WHERE topic = ?)",
            (channel,),
        )
        db.execute("DELETE FROM eb_events WHERE topic = ?", (channel,))


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _text(body: Any) -> str:
    if body is None:
        return ""
    return body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)

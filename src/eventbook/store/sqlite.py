"""`sqlite:///path.db`: the saga journal in a SQLite file, shared by the processes of one host.

The URL is the `sqlite://` broker's (its parameters are accepted; `durability`
applies here too), and the tables are prefixed `eb_saga` so one file can hold
both. As in the broker, SQLite is called on the event loop thread (a statement
takes microseconds; a hop to a thread costs more) with a busy timeout of a few
milliseconds, and a lock another process holds is waited for asynchronously.
Writes take the write lock up front (BEGIN IMMEDIATE), so an ownership check and
the write it guards cannot be split by another process's claim; the writes of one
loop turn share a commit (group commit, as the broker's: sagas that advance together
pay for one commit, not one each), and a write whose check fails fails alone.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..brokers.sqlite.settings import SqliteSettings
from ..brokers.sqlite.writer import Writer, is_lock_error
from ..errors import StoreError
from . import sqlite_schema as schema
from .base import (
    TERMINAL_STATES,
    SagaRecord,
    SagaState,
    SagaStore,
    StepRecord,
    check_state,
    lost,
    to_json,
)

T = TypeVar("T")

#: How long an operation waits for another process's lock before it gives up.
LOCK_PATIENCE = 30.0


class SqliteSagaStore(SagaStore):
    """Saga journal in a SQLite file; see `eventbook.store.sqlite`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.settings = SqliteSettings.from_url(url)
        self._db: sqlite3.Connection | None = None
        self._writer: Writer | None = None

    async def open(self) -> None:
        if self._db is not None:
            return
        path = Path(self.settings.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the saga store at {path}: {exc}") from None
        # Wait only briefly inside SQLite (that wait blocks the event loop); longer
        # waits for another process's lock are asynchronous (see `_run`).
        db.execute("PRAGMA busy_timeout=5")
        self._db = db
        try:
            await self._run(self._pragmas, transaction=None)
            await self._run(schema.create)
        except BaseException:
            self._db = None
            db.close()
            raise
        self._writer = Writer(db, error=lambda exc: StoreError(f"saga store {self.url}: {exc}"))

    def _pragmas(self, db: sqlite3.Connection) -> None:
        db.execute(f"PRAGMA synchronous={self.settings.durability.upper()}")
        # The broker's page size, so the file is the same whichever opens it first
        # (it only takes effect on a new file).
        db.execute("PRAGMA page_size=1024")
        db.execute("PRAGMA journal_mode=WAL")

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
        if self._db is not None:
            self._db.close()
            self._db = None
            self._writer = None

    async def create(self, record: SagaRecord) -> bool:
        check_state(record.state)
        row = (
            record.id,
            record.name,
            record.version,
            record.state,
            to_json(record.payload, "saga payload"),
            record.created_at,
            record.updated_at,
            record.deadline,
            record.owner,
            record.lease_until,
            record.error,
        )
        return await self._write(lambda db: schema.insert_saga(db, row))

    async def get(self, saga_id: str) -> tuple[SagaRecord, list[StepRecord]] | None:
        return await self._run(lambda db: schema.get(db, saga_id), transaction="BEGIN")

    async def claim(
        self, owner: str, lease: float, limit: int, names: Sequence[str] | None = None
    ) -> list[SagaRecord]:
        if limit <= 0 or (names is not None and not names):
            return []
        chosen = None if names is None else list(names)
        return await self._write(
            lambda db: schema.claim(db, owner, time.time(), lease, limit, chosen)
        )

    async def renew(self, owner: str, saga_ids: Sequence[str], lease: float) -> list[str]:
        def renew(db: sqlite3.Connection) -> list[str]:
            now = time.time()
            return [
                saga_id
                for saga_id in saga_ids
                if db.execute(
                    "UPDATE eb_sagas SET lease_until = ?"
                    " WHERE id = ? AND owner = ? AND lease_until >= ?",
                    (now + lease, saga_id, owner, now),
                ).rowcount
            ]

        return await self._write(renew)

    async def release(self, owner: str, saga_ids: Sequence[str]) -> None:
        await self._write(
            lambda db: db.executemany(
                "UPDATE eb_sagas SET owner = NULL, lease_until = 0 WHERE id = ? AND owner = ?",
                [(saga_id, owner) for saga_id in saga_ids],
            )
        )

    async def put_step(self, owner: str, step: StepRecord) -> None:
        row = (
            step.saga_id,
            step.position,
            step.kind,
            step.name,
            step.status,
            to_json(step.result, "step result"),
            step.error,
            step.started_at,
            step.finished_at,
            step.attempts,
        )

        def put(db: sqlite3.Connection) -> None:
            _check_owner(db, owner, step.saga_id, time.time())
            db.execute(
                "INSERT OR REPLACE INTO eb_saga_steps (saga_id, position, kind, name, status,"
                " result, error, started_at, finished_at, attempts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        await self._write(put)

    async def set_state(
        self, owner: str, saga_id: str, state: SagaState, error: str | None = None
    ) -> None:
        check_state(state)
        terminal = state in TERMINAL_STATES

        def set_state(db: sqlite3.Connection) -> None:
            now = time.time()
            _check_owner(db, owner, saga_id, now)
            db.execute(
                "UPDATE eb_sagas SET state = ?, error = ?, updated_at = ?"
                + (", owner = NULL, lease_until = 0" if terminal else "")
                + " WHERE id = ?",
                (state, error, now, saga_id),
            )

        await self._write(set_state)

    async def force_state(self, saga_id: str, state: SagaState, error: str | None = None) -> None:
        check_state(state)

        def force(db: sqlite3.Connection) -> None:
            changed = db.execute(
                "UPDATE eb_sagas SET state = ?, error = ?, updated_at = ?, owner = NULL,"
                " lease_until = 0 WHERE id = ?",
                (state, error, time.time(), saga_id),
            ).rowcount
            if not changed:
                raise StoreError(f"there is no saga {saga_id!r}")

        await self._write(force)

    async def command_result(self, key: str) -> tuple[bool, Any]:
        return await self._run(lambda db: schema.command_result(db, key), transaction=None)

    async def save_command_result(self, key: str, result: Any) -> bool:
        text = to_json(result, "command result")
        # At once, in a transaction of its own rather than with the next group commit:
        # the participant's effect has happened, and until this commits, a crash makes
        # the step run again; no other work of this process may come in between.
        return await self._run(
            lambda db: (
                db.execute(
                    "INSERT OR IGNORE INTO eb_saga_commands (key, result, at) VALUES (?, ?, ?)",
                    (key, text, time.time()),
                ).rowcount
                == 1
            )
        )

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in this loop turn's write transaction; see `brokers/sqlite/writer.py`."""
        if self._writer is None:
            raise StoreError(f"the saga store {self.url} is not open")
        try:
            async with asyncio.timeout(LOCK_PATIENCE):
                return await self._writer(work)
        except TimeoutError:
            raise StoreError(
                f"saga store {self.url}: still locked by another process after {LOCK_PATIENCE:g}s"
            ) from None

    async def _run(
        self, work: Callable[[sqlite3.Connection], T], transaction: str | None = "BEGIN IMMEDIATE"
    ) -> T:
        """Run `work` in one transaction, waiting without blocking while another process locks.

        `work` never awaits, so the operations of this process's tasks never interleave
        on the connection; it runs again from the start after a lock error.
        """
        db = self._db
        if db is None:
            raise StoreError(f"the saga store {self.url} is not open")
        delay = 0.001
        deadline = time.monotonic() + LOCK_PATIENCE
        while True:
            try:
                if transaction is not None:
                    db.execute(transaction)
                result = work(db)
                if transaction is not None:
                    db.execute("COMMIT")
                return result
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.rollback()
                if not is_lock_error(exc):
                    raise StoreError(f"saga store {self.url}: {exc}") from None
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"saga store {self.url}: still locked by another process after"
                        f" {LOCK_PATIENCE:g}s"
                    ) from None
            except BaseException:
                if db.in_transaction:
                    db.rollback()
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def list(
        self, states: Sequence[str] | None = None, name: str | None = None, limit: int = 100
    ) -> list[SagaRecord]:
        chosen = None if states is None else list(states)
        return await self._run(
            lambda db: schema.list_sagas(db, chosen, name, limit), transaction=None
        )


def _check_owner(db: sqlite3.Connection, owner: str, saga_id: str, now: float) -> None:
    """Raise LostOwnershipError unless `owner` holds a valid lease on the saga."""
    row = db.execute("SELECT owner, lease_until FROM eb_sagas WHERE id = ?", (saga_id,)).fetchone()
    if row is None or row[0] != owner or row[1] < now:
        raise lost(saga_id, owner, None if row is None else (row[0], row[1]), now)

"""Group commit: the writes asked for in one turn of the event loop share one transaction.

A hundred concurrent publishes cost one commit, not a hundred; so do the acks of
handlers that finish together, and the journal writes of sagas that advance
together. SQLite is called on the event loop thread (a statement takes
microseconds, a hop to a worker thread far more); the write lock is awaited
without blocking the loop: a short busy timeout inside SQLite, then an
asynchronous back-off.

A job runs again from the start when its transaction could not commit, so it
must only touch the database. A job that raises (a constraint, a check of its own)
fails alone: the transaction is rolled back and the other jobs run again without it.
A job nobody waits for (`defer`) has its failure logged, and `close` commits it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from ...errors import BrokerError

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], Any]

log = logging.getLogger("eventbook.brokers.sqlite")

_FIRST_BACKOFF = 0.0005
_MAX_BACKOFF = 0.05


def is_lock_error(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


class Writer:
    """Runs write jobs in shared transactions on one connection."""

    def __init__(
        self,
        db: sqlite3.Connection,
        error: Callable[[sqlite3.Error], Exception] = lambda exc: BrokerError(
            f"sqlite:// broker: {exc}"
        ),
    ) -> None:
        self._db = db
        self._error = error
        self._jobs: list[tuple[Work, asyncio.Future[Any]]] = []
        self._scheduled = False
        self._backoff = _FIRST_BACKOFF

    async def __call__(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in a write transaction shared with this loop turn's other writes."""
        return await self.submit(work)

    def submit(self, work: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue `work` for this loop turn's transaction; the future tells when it committed."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._jobs.append((work, done))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return done

    def defer(self, work: Work, what: str, *args: object) -> None:
        """Queue `work` for this loop turn's transaction, and go on without waiting for it.

        Should it fail, the log says "could not <what % args>".
        """

        def logged(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.error("could not " + what + ": %s", *args, done.exception())

        self.submit(work).add_done_callback(logged)

    async def close(self) -> None:
        """Wait until every queued job has committed or failed, so none is lost on closing."""
        pending = [done for _, done in self._jobs]
        if pending:
            await asyncio.wait(pending)

    async def now(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in a transaction of its own right away, unless writes are queued.

        For a write nothing else can share (the ack of a handler that runs one event
        at a time): it saves the loop turn that waiting for company would cost.
        """
        if self._scheduled:
            return await self(work)
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            result = work(db)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if is_lock_error(exc):
                return await self(work)
            raise self._error(exc) from None
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    def _flush(self) -> None:
        jobs = [(work, done) for work, done in self._jobs if not done.cancelled()]
        self._jobs = []
        if not jobs:
            self._scheduled = False
            return
        db = self._db
        results: list[Any] = []  # one per job done: a job that raises is jobs[len(results)]
        began = False
        try:
            db.execute("BEGIN IMMEDIATE")
            began = True
            for work, _ in jobs:
                results.append(work(db))
            db.execute("COMMIT")
        except Exception as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            loop = asyncio.get_running_loop()
            if isinstance(exc, sqlite3.Error) and is_lock_error(exc):
                # Another process holds the write lock: try the same jobs again soon.
                self._jobs = jobs + self._jobs
                loop.call_later(self._backoff, self._flush)
                self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
                return
            error = self._error(exc) if isinstance(exc, sqlite3.Error) else exc
            if not began or len(results) == len(jobs):
                # BEGIN or COMMIT failed: the file is unwell, for every job alike.
                self._scheduled = bool(self._jobs)
                if self._jobs:
                    loop.call_soon(self._flush)
                for _, done in jobs:
                    if not done.done():
                        done.set_exception(error)
                return
            # One job refused (a constraint, a check of its own): it fails alone, and
            # the others run again without it, in a new transaction.
            failed = jobs[len(results)][1]
            if not failed.done():
                failed.set_exception(error)
            self._jobs = [job for job in jobs if job[1] is not failed] + self._jobs
            loop.call_soon(self._flush)
            return
        self._backoff = _FIRST_BACKOFF
        for (_, done), result in zip(jobs, results, strict=True):
            if not done.done():
                done.set_result(result)
        # Jobs added while these ran (by callbacks) get a transaction of their own.
        self._scheduled = bool(self._jobs)
        if self._jobs:
            asyncio.get_running_loop().call_soon(self._flush)

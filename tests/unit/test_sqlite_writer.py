"""The sqlite group-commit writer, on a real file: shared commits, lone failures, deferred jobs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from eventbook.brokers.sqlite.writer import Writer


def open_file(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)")
    return db


def rows(path: Path) -> list[int]:
    """What another connection sees: only committed rows."""
    other = sqlite3.connect(path)
    try:
        return [n for (n,) in other.execute("SELECT n FROM t ORDER BY n")]
    finally:
        other.close()


def insert(n: int) -> object:
    return lambda db: db.execute("INSERT INTO t (n) VALUES (?)", (n,))


async def test_a_job_that_raises_fails_alone_and_the_others_commit(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    writer = Writer(open_file(path))

    def refuse(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO t (n) VALUES (99)")
        raise LookupError("its own check failed")

    first, failing, last = writer.submit(insert(1)), writer.submit(refuse), writer.submit(insert(2))
    with pytest.raises(LookupError, match="its own check failed"):
        await failing
    await first
    await last
    assert rows(path) == [1, 2]  # the failing job's own insert was rolled back


async def test_close_commits_deferred_jobs_nobody_waits_for(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    writer = Writer(open_file(path))
    writer.defer(insert(1), "insert %s", 1)
    writer.defer(insert(2), "insert %s", 2)
    assert rows(path) == []  # queued for this loop turn's commit
    await writer.close()
    assert rows(path) == [1, 2]


async def test_a_deferred_job_that_fails_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "w.db"
    writer = Writer(open_file(path))
    writer.defer(insert(1), "insert %s", 1)
    writer.defer(insert(1), "insert %s", "the same row")  # violates the primary key
    await writer.close()
    assert rows(path) == [1]  # the constraint failed that job alone
    assert "could not insert the same row" in caplog.text
    assert "UNIQUE constraint failed" in caplog.text

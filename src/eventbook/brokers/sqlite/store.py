"""The tables of the `sqlite://` broker, and every statement that reads or writes them.

* `eb_events`   the append-only log: one row per event, `seq` its position.
* `eb_groups`   each consumer group's position in each topic.
* `eb_pending`  events a group claimed and has not finished: leased to a consumer
                (`owner`, until `due`) or waiting for a retry (`owner` NULL, from `due`).
* `eb_dead`     dead letters: the reason, the error and the attempts; the event
                stays in the log until purged.

Finishing an event deletes its `eb_pending` row: that one statement, committed,
is both the ack and the inbox (the event is never delivered to that group again).
"""

from __future__ import annotations

import sqlite3
import time

from ...errors import BrokerError

SCHEMA_VERSION = 1

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS eb_events (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    event_id TEXT NOT NULL,
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
CREATE INDEX IF NOT EXISTS eb_dead_by_seq ON eb_dead (seq);
PRAGMA user_version = {SCHEMA_VERSION};
"""

Row = tuple[int, str, bytes, int]  # seq, event_id, body, attempt


def create(db: sqlite3.Connection) -> None:
    """Create the tables, or check that an existing file has this version's tables."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        raise BrokerError(
            f"this file holds eventbook's sqlite schema version {version}; this eventbook "
            f"reads version {SCHEMA_VERSION}: use a new file, or the matching eventbook"
        )
    if version == 0:
        db.executescript(SCHEMA)


def declare(db: sqlite3.Connection, group: str, topic: str) -> None:
    """Create `group` on `topic` at the end of the log, unless it exists."""
    db.execute(
        "INSERT OR IGNORE INTO eb_groups (grp, topic, position)"
        " SELECT ?, ?, COALESCE(MAX(seq), 0) FROM eb_events",
        (group, topic),
    )


def append(db: sqlite3.Connection, rows: list[tuple[str, str, bytes, float]]) -> None:
    """Append events (topic, event id, body, time) to the log."""
    db.executemany("INSERT INTO eb_events (topic, event_id, body, at) VALUES (?, ?, ?, ?)", rows)


def claim(
    db: sqlite3.Connection, group: str, topic: str, owner: str, limit: int, lease: float
) -> list[Row]:
    """Lease up to `limit` of the group's events: due retries and lapsed leases first.

    Never this owner's own leases: it is still working on those, even if renewing
    them ran late.
    """
    now = time.time()
    until = now + lease
    rows: list[Row] = db.execute(
        "SELECT p.seq, e.event_id, e.body, p.attempt + 1 FROM eb_pending p"
        " JOIN eb_events e ON e.seq = p.seq"
        " WHERE p.grp = ? AND p.due <= ? AND (p.owner IS NULL OR p.owner != ?)"
        " ORDER BY p.seq LIMIT ?",
        (group, now, owner, limit),
    ).fetchall()
    if rows:
        db.executemany(
            "UPDATE eb_pending SET attempt = attempt + 1, due = ?, owner = ?"
            " WHERE grp = ? AND seq = ?",
            [(until, owner, group, row[0]) for row in rows],
        )
    room = limit - len(rows)
    if room <= 0:
        return rows
    (position,) = db.execute(
        "SELECT position FROM eb_groups WHERE grp = ? AND topic = ?", (group, topic)
    ).fetchone()
    fresh = db.execute(
        "SELECT seq, event_id, body FROM eb_events WHERE topic = ? AND seq > ?"
        " ORDER BY seq LIMIT ?",
        (topic, position, room),
    ).fetchall()
    if fresh:
        db.executemany(
            "INSERT INTO eb_pending (grp, seq, attempt, due, owner) VALUES (?, ?, 1, ?, ?)",
            [(group, seq, until, owner) for seq, _, _ in fresh],
        )
        db.execute(
            "UPDATE eb_groups SET position = ? WHERE grp = ? AND topic = ?",
            (fresh[-1][0], group, topic),
        )
        rows += [(seq, event_id, body, 1) for seq, event_id, body in fresh]
    return rows


def finish(db: sqlite3.Connection, group: str, seq: int) -> None:
    """Ack: the event is never delivered to the group again."""
    db.execute("DELETE FROM eb_pending WHERE grp = ? AND seq = ?", (group, seq))


def retry_later(db: sqlite3.Connection, group: str, seq: int, delay: float) -> None:
    db.execute(
        "UPDATE eb_pending SET due = ?, owner = NULL WHERE grp = ? AND seq = ?",
        (time.time() + delay, group, seq),
    )


def release(db: sqlite3.Connection, group: str, owner: str, seqs: list[int]) -> None:
    """Give back claimed events that were never started: due now, the claim not counted."""
    db.executemany(
        "UPDATE eb_pending SET due = 0, owner = NULL, attempt = attempt - 1"
        " WHERE grp = ? AND seq = ? AND owner = ?",
        [(group, seq, owner) for seq in seqs],
    )


def renew(db: sqlite3.Connection, groups: list[str], owner: str, lease: float) -> None:
    db.executemany(
        "UPDATE eb_pending SET due = ? WHERE grp = ? AND owner = ?",
        [(time.time() + lease, group, owner) for group in groups],
    )


def next_due(db: sqlite3.Connection, group: str, owner: str) -> float | None:
    """When the group's next retry, or another consumer's lease, falls due."""
    due: float | None = db.execute(
        "SELECT MIN(due) FROM eb_pending WHERE grp = ? AND (owner IS NULL OR owner != ?)",
        (group, owner),
    ).fetchone()[0]
    return due


def park(
    db: sqlite3.Connection,
    group: str,
    topic: str,
    seq: int,
    event_id: str,
    reason: str,
    error: str,
    attempts: int,
) -> None:
    """Dead-letter one event of one group."""
    db.execute(
        "INSERT INTO eb_dead (grp, topic, seq, event_id, reason, error, attempts, at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (group, topic, seq, event_id, reason, error, attempts, time.time()),
    )
    db.execute("DELETE FROM eb_pending WHERE grp = ? AND seq = ?", (group, seq))


DeadRow = tuple[int, str, str, str, str, str, int, float, bytes | None]


def dead_letters(db: sqlite3.Connection, prefix: str) -> list[DeadRow]:
    """Dead letters on topics starting with `prefix` (one book's), oldest first."""
    rows: list[DeadRow] = db.execute(
        "SELECT d.id, d.event_id, d.topic, d.grp, d.reason, d.error, d.attempts, d.at, e.body"
        " FROM eb_dead d LEFT JOIN eb_events e ON e.seq = d.seq"
        " WHERE substr(d.topic, 1, ?) = ? ORDER BY d.id",
        (len(prefix), prefix),
    ).fetchall()
    return rows


def replay(db: sqlite3.Connection, letters: list[tuple[int, str, int]]) -> None:
    """Send dead letters (id, group, seq) back to their group, as a first attempt."""
    for letter_id, group, seq in letters:
        db.execute(
            "INSERT OR REPLACE INTO eb_pending (grp, seq, attempt, due, owner)"
            " VALUES (?, ?, 0, 0, NULL)",
            (group, seq),
        )
        db.execute("DELETE FROM eb_dead WHERE id = ?", (letter_id,))


def purge(db: sqlite3.Connection, letter_ids: list[int]) -> None:
    db.executemany("DELETE FROM eb_dead WHERE id = ?", [(i,) for i in letter_ids])


def compact(db: sqlite3.Connection, before: float) -> None:
    """Delete events every group is done with, older than `before`.

    The newest event always stays: `seq` is a rowid, and the log must never hand
    out a position that a group has already passed.
    """
    db.execute(
        """
        DELETE FROM eb_events WHERE seq IN (
            SELECT e.seq FROM eb_events e
            WHERE e.at < ?
              AND e.seq < (SELECT MAX(seq) FROM eb_events)
              AND e.seq < COALESCE((SELECT MIN(seq) FROM eb_pending), e.seq + 1)
              AND e.seq <= COALESCE(
                  (SELECT MIN(g.position) FROM eb_groups g WHERE g.topic = e.topic), e.seq)
              AND NOT EXISTS (SELECT 1 FROM eb_dead d WHERE d.seq = e.seq)
            ORDER BY e.seq LIMIT 10000)
        """,
        (before,),
    )


def forget_topics(db: sqlite3.Connection, topics: list[str]) -> None:
    """Drop topics nobody else reads (a process's reply channel), with their events."""
    for topic in topics:
        db.execute(
            "DELETE FROM eb_pending WHERE seq IN (SELECT seq FROM eb_events WHERE topic = ?)",
            (topic,),
        )
        db.execute("DELETE FROM eb_groups WHERE topic = ?", (topic,))
        db.execute("DELETE FROM eb_events WHERE topic = ?", (topic,))

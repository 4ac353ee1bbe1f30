"""The saga journal's SQLite tables, and the statements that read them or claim from them.

* `eb_sagas`          one row per saga; JSON as text.
* `eb_saga_steps`     the journal: one row per (saga, position).
* `eb_saga_commands`  participants' command results by idempotency key.
* `eb_saga_meta`      this schema's version (the file's `user_version` is the broker's).

Each function runs inside the transaction `SqliteSagaStore._run` opened.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..errors import StoreError
from .base import ACTIVE_STATES, SagaRecord, StepRecord, check_state

SCHEMA_VERSION = "1"

_ACTIVE = ", ".join(f"'{state}'" for state in ACTIVE_STATES)

STATEMENTS = (
    """CREATE TABLE IF NOT EXISTS eb_sagas (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        deadline REAL,
        owner TEXT,
        lease_until REAL NOT NULL,
        error TEXT
    )""",
    # Claims look at active sagas only; finished ones pile up and are never claimed.
    f"CREATE INDEX IF NOT EXISTS eb_sagas_active ON eb_sagas (created_at, id)"
    f" WHERE state IN ({_ACTIVE})",
    "CREATE INDEX IF NOT EXISTS eb_sagas_by_name ON eb_sagas (name, created_at)",
    "CREATE INDEX IF NOT EXISTS eb_sagas_by_created ON eb_sagas (created_at)",
    """CREATE TABLE IF NOT EXISTS eb_saga_steps (
        saga_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        result TEXT NOT NULL,
        error TEXT,
        started_at REAL NOT NULL,
        finished_at REAL,
        attempts INTEGER NOT NULL,
        PRIMARY KEY (saga_id, position)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS eb_saga_commands (
        key TEXT PRIMARY KEY,
        result TEXT NOT NULL,
        at REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS eb_saga_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID""",
)

SAGA_COLUMNS = (
    "id, name, version, state, payload, created_at, updated_at, deadline, owner, lease_until, error"
)
_STEP_COLUMNS = "position, kind, name, status, result, error, started_at, finished_at, attempts"


def create(db: sqlite3.Connection) -> None:
    """Create the tables, or check that the file's are this version's.

    Raises:
        StoreError: the file holds another version of the saga tables.
    """
    for statement in STATEMENTS:
        db.execute(statement)
    db.execute(
        "INSERT OR IGNORE INTO eb_saga_meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
    )
    (version,) = db.execute("SELECT value FROM eb_saga_meta WHERE key = 'schema'").fetchone()
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"this file holds eventbook's saga tables version {version}; this eventbook reads"
            f" version {SCHEMA_VERSION}: use a new file, or the matching eventbook"
        )


def insert_saga(db: sqlite3.Connection, row: tuple[Any, ...]) -> bool:
    """Insert a saga row (in `SAGA_COLUMNS` order); False if its id exists."""
    inserted: int = db.execute(
        f"INSERT OR IGNORE INTO eb_sagas ({SAGA_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        row,
    ).rowcount
    return inserted == 1


def get(db: sqlite3.Connection, saga_id: str) -> tuple[SagaRecord, list[StepRecord]] | None:
    """The saga and its steps in position order, or None."""
    row = db.execute(f"SELECT {SAGA_COLUMNS} FROM eb_sagas WHERE id = ?", (saga_id,)).fetchone()
    if row is None:
        return None
    steps = db.execute(
        f"SELECT {_STEP_COLUMNS} FROM eb_saga_steps WHERE saga_id = ? ORDER BY position",
        (saga_id,),
    ).fetchall()
    return saga(row), [
        StepRecord(
            saga_id=saga_id,
            position=position,
            kind=kind,
            name=name,
            status=status,
            result=json.loads(result),
            error=error,
            started_at=started_at,
            finished_at=finished_at,
            attempts=attempts,
        )
        for position, kind, name, status, result, error, started_at, finished_at, attempts in steps
    ]


def claim(
    db: sqlite3.Connection,
    owner: str,
    now: float,
    lease: float,
    limit: int,
    names: list[str] | None,
) -> list[SagaRecord]:
    """Lease up to `limit` claimable sagas to `owner`, oldest first."""
    where = f"state IN ({_ACTIVE}) AND (owner IS NULL OR lease_until < ?)"
    params: list[Any] = [now]
    if names is not None:
        where += " AND name IN (SELECT value FROM json_each(?))"
        params.append(json.dumps(names))
    rows = db.execute(
        f"SELECT {SAGA_COLUMNS} FROM eb_sagas WHERE {where} ORDER BY created_at, id LIMIT ?",
        (*params, limit),
    ).fetchall()
    until = now + lease
    db.executemany(
        "UPDATE eb_sagas SET owner = ?, lease_until = ? WHERE id = ?",
        [(owner, until, row[0]) for row in rows],
    )
    return [saga((*row[:8], owner, until, row[10])) for row in rows]


def command_result(db: sqlite3.Connection, key: str) -> tuple[bool, Any]:
    row = db.execute("SELECT result FROM eb_saga_commands WHERE key = ?", (key,)).fetchone()
    return (False, None) if row is None else (True, json.loads(row[0]))


def list_sagas(
    db: sqlite3.Connection, states: list[str] | None, name: str | None, limit: int
) -> list[SagaRecord]:
    """Sagas newest first, optionally in these states and of this name."""
    where: list[str] = ["1"]
    params: list[Any] = []
    if states is not None:
        where.append("state IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(states))
    if name is not None:
        where.append("name = ?")
        params.append(name)
    rows = db.execute(
        f"SELECT {SAGA_COLUMNS} FROM eb_sagas WHERE {' AND '.join(where)}"
        " ORDER BY created_at DESC, id DESC LIMIT ?",
        (*params, max(limit, 0)),
    ).fetchall()
    return [saga(row) for row in rows]


def saga(row: tuple[Any, ...]) -> SagaRecord:
    """A row in `SAGA_COLUMNS` order as a record."""
    saga_id, name, version, state, payload, created, updated, deadline, owner, until, error = row
    return SagaRecord(
        id=saga_id,
        name=name,
        version=version,
        state=check_state(state),
        payload=json.loads(payload),
        created_at=created,
        updated_at=updated,
        deadline=deadline,
        owner=owner,
        lease_until=until,
        error=error,
    )

"""The saga journal's PostgreSQL tables (the same four as in SQLite, JSON as JSONB).

* `eb_sagas`          one row per saga.
* `eb_saga_steps`     the journal: one row per (saga, position).
* `eb_saga_commands`  participants' command results by idempotency key.
* `eb_saga_meta`      this schema's version.
"""

from __future__ import annotations

from .base import ACTIVE_STATES

SCHEMA_VERSION = "1"

_ACTIVE = ", ".join(f"'{state}'" for state in ACTIVE_STATES)

STATEMENTS = (
    """CREATE TABLE IF NOT EXISTS eb_sagas (
        id text PRIMARY KEY,
        name text NOT NULL,
        version integer NOT NULL,
        state text NOT NULL,
        payload jsonb NOT NULL,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        deadline double precision,
        owner text,
        lease_until double precision NOT NULL,
        error text
    )""",
    # Claims look at active sagas only; finished ones pile up and are never claimed.
    f"CREATE INDEX IF NOT EXISTS eb_sagas_active ON eb_sagas (created_at, id)"
    f" WHERE state IN ({_ACTIVE})",
    "CREATE INDEX IF NOT EXISTS eb_sagas_by_name ON eb_sagas (name, created_at)",
    "CREATE INDEX IF NOT EXISTS eb_sagas_by_created ON eb_sagas (created_at)",
    """CREATE TABLE IF NOT EXISTS eb_saga_steps (
        saga_id text NOT NULL REFERENCES eb_sagas (id) ON DELETE CASCADE,
        position integer NOT NULL,
        kind text NOT NULL,
        name text NOT NULL,
        status text NOT NULL,
        result jsonb NOT NULL,
        error text,
        started_at double precision NOT NULL,
        finished_at double precision,
        attempts integer NOT NULL,
        PRIMARY KEY (saga_id, position)
    )""",
    """CREATE TABLE IF NOT EXISTS eb_saga_commands (
        key text PRIMARY KEY,
        result jsonb NOT NULL,
        at double precision NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS eb_saga_meta (
        key text PRIMARY KEY,
        value text NOT NULL
    )""",
)

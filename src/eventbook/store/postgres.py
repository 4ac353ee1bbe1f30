"""`postgresql://user:pass@host/db`: the saga journal in PostgreSQL, for coordinators on many hosts.

Tables are created if missing, in the first schema of the connection's
`search_path` (choose one with `?options=-csearch_path%3Dmyschema`). JSON is
stored as JSONB. Lease times come from the server's clock, never a coordinator's,
so hosts whose clocks disagree still agree on whose lease ran out.

Every operation is one statement in autocommit mode, so it is atomic on its own
and concurrent operations share one connection (psycopg queues them). A claim
locks the rows it takes (`FOR UPDATE SKIP LOCKED`): a concurrent claim passes
over them instead of waiting, and never gets them. A journal write locks its
saga's row while it checks the lease (`FOR SHARE`), so no claim can take the saga
between the check and the write. A broken connection is replaced on the next
operation; the operation that met it fails with `StoreError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..errors import ConfigurationError, StoreError, redact
from .base import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    SagaRecord,
    SagaState,
    SagaStore,
    StepRecord,
    check_state,
    lost,
    to_json,
)
from .postgres_schema import SCHEMA_VERSION, STATEMENTS

#: The server's time in unix seconds, when the statement reads it.
NOW = "extract(epoch FROM clock_timestamp())::float8"
#: Key of the advisory lock that keeps two processes from creating the tables at once.
_SCHEMA_LOCK = 0x65625F73616761  # "eb_saga"
_ACTIVE = ", ".join(f"'{state}'" for state in ACTIVE_STATES)
_SAGA_COLUMNS = (
    "id, name, version, state, payload, created_at, updated_at, deadline, owner, lease_until, error"
)
_CLAIMABLE = f"state IN ({_ACTIVE}) AND (owner IS NULL OR lease_until < {NOW})"
_CLAIM = f"""
    WITH picked AS (
        SELECT id FROM eb_sagas WHERE {_CLAIMABLE} {{names}}
        ORDER BY created_at, id LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    UPDATE eb_sagas s SET owner = %(owner)s, lease_until = {NOW} + %(lease)s
    FROM picked WHERE s.id = picked.id
    RETURNING {", ".join(f"s.{c}" for c in _SAGA_COLUMNS.split(", "))}
"""
_PUT_STEP = f"""
    WITH held AS (
        SELECT id FROM eb_sagas
        WHERE id = %s AND owner = %s AND lease_until >= {NOW}
        FOR SHARE
    )
    INSERT INTO eb_saga_steps (saga_id, position, kind, name, status, result, error,
                               started_at, finished_at, attempts)
    SELECT held.id, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s FROM held
    ON CONFLICT (saga_id, position) DO UPDATE SET
        kind = EXCLUDED.kind, name = EXCLUDED.name, status = EXCLUDED.status,
        result = EXCLUDED.result, error = EXCLUDED.error, started_at = EXCLUDED.started_at,
        finished_at = EXCLUDED.finished_at, attempts = EXCLUDED.attempts
"""

Rows = list[tuple[Any, ...]]


class PostgresSagaStore(SagaStore):
    """Saga journal in PostgreSQL; see `eventbook.store.postgres`."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise ConfigurationError(f"bad PostgreSQL URL {redact(url)!r}: {exc}") from None
        self._password = str(params.get("password") or "")
        # Without a timeout, libpq waits on an unanswered host as long as TCP does.
        self._conninfo = (
            url if "connect_timeout" in params else make_conninfo(url, connect_timeout=10)
        )
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._opened = False
        self._reconnecting = asyncio.Lock()

    async def open(self) -> None:
        if self._opened:
            return
        conn = await self._connect()
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in STATEMENTS:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO eb_saga_meta (key, value) VALUES ('schema', %s)"
                    " ON CONFLICT (key) DO NOTHING",
                    (SCHEMA_VERSION,),
                )
                cursor = await conn.execute("SELECT value FROM eb_saga_meta WHERE key = 'schema'")
                row = await cursor.fetchone()
        except psycopg.Error as exc:
            await conn.close()
            raise self._error(exc, "cannot create the saga tables") from None
        version = row[0] if row else None
        if version != SCHEMA_VERSION:
            await conn.close()
            raise StoreError(
                f"the database holds eventbook's saga tables version {version}; this eventbook"
                f" reads version {SCHEMA_VERSION}: use another schema, or the matching eventbook"
            )
        self._conn = conn
        self._opened = True

    async def close(self) -> None:
        self._opened = False
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def create(self, record: SagaRecord) -> bool:
        check_state(record.state)
        _, count = await self._execute(
            f"INSERT INTO eb_sagas ({_SAGA_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO NOTHING",
            (
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
            ),
        )
        return count == 1

    async def get(self, saga_id: str) -> tuple[SagaRecord, list[StepRecord]] | None:
        # One statement, so the saga and its steps are one snapshot.
        rows, _ = await self._execute(
            f"SELECT {', '.join(f's.{c}' for c in _SAGA_COLUMNS.split(', '))},"
            " t.position, t.kind, t.name, t.status, t.result, t.error, t.started_at,"
            " t.finished_at, t.attempts"
            " FROM eb_sagas s LEFT JOIN eb_saga_steps t ON t.saga_id = s.id"
            " WHERE s.id = %s ORDER BY t.position",
            (saga_id,),
        )
        if not rows:
            return None
        steps = [
            StepRecord(saga_id, *row[11:]) for row in rows if row[11] is not None
        ]  # a saga without steps comes back as one row of NULL step columns
        return _saga(rows[0][:11]), steps

    async def claim(
        self, owner: str, lease: float, limit: int, names: Sequence[str] | None = None
    ) -> list[SagaRecord]:
        if limit <= 0 or (names is not None and not names):
            return []
        query = _CLAIM.format(names="" if names is None else "AND name = ANY(%(names)s)")
        params = {"owner": owner, "lease": lease, "limit": limit, "names": list(names or ())}
        rows, _ = await self._execute(query, params)
        return sorted((_saga(row) for row in rows), key=lambda saga: (saga.created_at, saga.id))

    async def renew(self, owner: str, saga_ids: Sequence[str], lease: float) -> list[str]:
        if not saga_ids:
            return []
        rows, _ = await self._execute(
            f"UPDATE eb_sagas SET lease_until = {NOW} + %s"
            f" WHERE id = ANY(%s) AND owner = %s AND lease_until >= {NOW} RETURNING id",
            (lease, list(saga_ids), owner),
        )
        kept = {row[0] for row in rows}
        return [saga_id for saga_id in saga_ids if saga_id in kept]

    async def release(self, owner: str, saga_ids: Sequence[str]) -> None:
        if saga_ids:
            await self._execute(
                "UPDATE eb_sagas SET owner = NULL, lease_until = 0"
                " WHERE id = ANY(%s) AND owner = %s",
                (list(saga_ids), owner),
            )

    async def put_step(self, owner: str, step: StepRecord) -> None:
        _, count = await self._execute(
            _PUT_STEP,
            (
                step.saga_id,
                owner,
                step.position,
                step.kind,
                step.name,
                step.status,
                to_json(step.result, "step result"),
                step.error,
                step.started_at,
                step.finished_at,
                step.attempts,
            ),
        )
        if count != 1:
            raise await self._lost(owner, step.saga_id)

    async def set_state(
        self, owner: str, saga_id: str, state: SagaState, error: str | None = None
    ) -> None:
        check_state(state)
        ends = ", owner = NULL, lease_until = 0" if state in TERMINAL_STATES else ""
        _, count = await self._execute(
            f"UPDATE eb_sagas SET state = %s, error = %s, updated_at = {NOW}{ends}"
            f" WHERE id = %s AND owner = %s AND lease_until >= {NOW}",
            (state, error, saga_id, owner),
        )
        if count != 1:
            raise await self._lost(owner, saga_id)

    async def force_state(self, saga_id: str, state: SagaState, error: str | None = None) -> None:
        check_state(state)
        _, count = await self._execute(
            f"UPDATE eb_sagas SET state = %s, error = %s, updated_at = {NOW}, owner = NULL,"
            " lease_until = 0 WHERE id = %s",
            (state, error, saga_id),
        )
        if count != 1:
            raise StoreError(f"there is no saga {saga_id!r}")

    async def command_result(self, key: str) -> tuple[bool, Any]:
        rows, _ = await self._execute("SELECT result FROM eb_saga_commands WHERE key = %s", (key,))
        return (True, rows[0][0]) if rows else (False, None)

    async def save_command_result(self, key: str, result: Any) -> bool:
        _, count = await self._execute(
            f"INSERT INTO eb_saga_commands (key, result, at) VALUES (%s, %s::jsonb, {NOW})"
            " ON CONFLICT (key) DO NOTHING",
            (key, to_json(result, "command result")),
        )
        return count == 1

    # -- plumbing --------------------------------------------------------------------

    async def _lost(self, owner: str, saga_id: str) -> Exception:
        """The LostOwnershipError for a refused write, saying who holds the saga now."""
        rows, _ = await self._execute(
            f"SELECT s.id, s.owner, s.lease_until, t.now"
            f" FROM (SELECT {NOW} AS now) t LEFT JOIN eb_sagas s ON s.id = %s",
            (saga_id,),
        )
        found, holder, until, now = rows[0]
        return lost(saga_id, owner, None if found is None else (holder, until), now)

    async def _connect(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        try:
            return await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise self._error(exc, "cannot connect") from None

    async def _execute(self, query: str, params: Any) -> tuple[Rows, int]:
        """Run one statement; return its rows (if it returns any) and its row count.

        Raises:
            StoreError: the statement failed, or the connection did (the next call
                connects again).
        """
        if not self._opened:
            raise StoreError(f"the saga store {redact(self.url)} is not open")
        conn = self._conn
        if conn is None or conn.closed:
            async with self._reconnecting:  # one new connection, however many tasks wait
                if self._conn is None or self._conn.closed:
                    self._conn = await self._connect()
                conn = self._conn
        try:
            cursor = await conn.execute(query, params)
            rows = await cursor.fetchall() if cursor.description is not None else []
        except psycopg.Error as exc:
            if conn.broken:
                await conn.close()
            raise self._error(exc, "failed") from None
        return rows, cursor.rowcount

    def _error(self, exc: psycopg.Error, what: str) -> StoreError:
        text = str(exc).strip()
        if self._password:
            # libpq does not echo passwords, but a message is no place to find out.
            text = text.replace(self._password, "***")
        return StoreError(f"saga store {redact(self.url)}: {what}: {text}")

    async def list(
        self, states: Sequence[str] | None = None, name: str | None = None, limit: int = 100
    ) -> list[SagaRecord]:
        where = ["TRUE"]
        params: dict[str, Any] = {"limit": max(limit, 0)}
        if states is not None:
            where.append("state = ANY(%(states)s)")
            params["states"] = list(states)
        if name is not None:
            where.append("name = %(name)s")
            params["name"] = name
        rows, _ = await self._execute(
            f"SELECT {_SAGA_COLUMNS} FROM eb_sagas WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, id DESC LIMIT %(limit)s",
            params,
        )
        return [_saga(row) for row in rows]


def _saga(row: Sequence[Any]) -> SagaRecord:
    saga_id, name, version, state, payload, created, updated, deadline, owner, until, error = row
    return SagaRecord(
        id=saga_id,
        name=name,
        version=version,
        state=check_state(state),
        payload=payload,
        created_at=created,
        updated_at=updated,
        deadline=deadline,
        owner=owner,
        lease_until=until,
        error=error,
    )

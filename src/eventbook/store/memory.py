"""`memory://`: the saga journal in this process's dicts, for tests and scripts.

It keeps the durable stores' semantics, leases included, so code tested on it
behaves the same on them: values are stored as JSON text (a caller's later
changes to a payload never reach the journal, and what is not JSON-compatible is
refused here as it would be there). Each method runs without awaiting, so on one
event loop it is atomic; the store is not for use from several threads.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

from ..errors import StoreError
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


class MemorySagaStore(SagaStore):
    """In-process saga journal; see `eventbook.store.memory`."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        # Records are kept with their JSON fields as text, decoded on the way out.
        self._sagas: dict[str, SagaRecord] = {}
        self._steps: dict[str, dict[int, StepRecord]] = {}
        self._commands: dict[str, str] = {}
        self._open = False

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        # The data stays: the store is its only copy, and a reopened store sees it.
        self._open = False

    async def create(self, record: SagaRecord) -> bool:
        self._live()
        check_state(record.state)
        text = to_json(record.payload, "saga payload")
        if record.id in self._sagas:
            return False
        self._sagas[record.id] = dataclasses.replace(record, payload=text)
        self._steps[record.id] = {}
        return True

    async def get(self, saga_id: str) -> tuple[SagaRecord, list[StepRecord]] | None:
        self._live()
        saga = self._sagas.get(saga_id)
        if saga is None:
            return None
        steps = self._steps[saga_id]
        return _out(saga), [
            dataclasses.replace(steps[p], result=json.loads(steps[p].result)) for p in sorted(steps)
        ]

    async def claim(
        self, owner: str, lease: float, limit: int, names: Sequence[str] | None = None
    ) -> list[SagaRecord]:
        self._live()
        now = time.time()
        wanted = None if names is None else set(names)
        free = sorted(
            (
                saga
                for saga in self._sagas.values()
                if saga.state in ACTIVE_STATES
                and (wanted is None or saga.name in wanted)
                and (saga.owner is None or saga.lease_until < now)
            ),
            key=lambda saga: (saga.created_at, saga.id),
        )[: max(limit, 0)]
        taken = []
        for saga in free:
            held = dataclasses.replace(saga, owner=owner, lease_until=now + lease)
            self._sagas[saga.id] = held
            taken.append(_out(held))
        return taken

    async def renew(self, owner: str, saga_ids: Sequence[str], lease: float) -> list[str]:
        self._live()
        now = time.time()
        kept = []
        for saga_id in saga_ids:
            saga = self._sagas.get(saga_id)
            if saga is not None and _holds(saga, owner, now):
                self._sagas[saga_id] = dataclasses.replace(saga, lease_until=now + lease)
                kept.append(saga_id)
        return kept

    async def release(self, owner: str, saga_ids: Sequence[str]) -> None:
        self._live()
        for saga_id in saga_ids:
            saga = self._sagas.get(saga_id)
            if saga is not None and saga.owner == owner:
                self._sagas[saga_id] = dataclasses.replace(saga, owner=None, lease_until=0.0)

    async def put_step(self, owner: str, step: StepRecord) -> None:
        self._live()
        text = to_json(step.result, "step result")
        self._owned(owner, step.saga_id, time.time())
        self._steps[step.saga_id][step.position] = dataclasses.replace(step, result=text)

    async def set_state(
        self, owner: str, saga_id: str, state: SagaState, error: str | None = None
    ) -> None:
        self._live()
        check_state(state)
        now = time.time()
        saga = self._owned(owner, saga_id, now)
        if state in TERMINAL_STATES:
            saga = dataclasses.replace(saga, owner=None, lease_until=0.0)
        self._sagas[saga_id] = dataclasses.replace(saga, state=state, error=error, updated_at=now)

    async def force_state(self, saga_id: str, state: SagaState, error: str | None = None) -> None:
        self._live()
        check_state(state)
        saga = self._sagas.get(saga_id)
        if saga is None:
            raise StoreError(f"there is no saga {saga_id!r}")
        self._sagas[saga_id] = dataclasses.replace(
            saga, state=state, error=error, updated_at=time.time(), owner=None, lease_until=0.0
        )

    async def command_result(self, key: str) -> tuple[bool, Any]:
        self._live()
        text = self._commands.get(key)
        return (False, None) if text is None else (True, json.loads(text))

    async def save_command_result(self, key: str, result: Any) -> bool:
        self._live()
        text = to_json(result, "command result")
        if key in self._commands:
            return False
        self._commands[key] = text
        return True

    def _live(self) -> None:
        if not self._open:
            raise StoreError(f"the saga store {self.url} is not open")

    def _owned(self, owner: str, saga_id: str, now: float) -> SagaRecord:
        saga = self._sagas.get(saga_id)
        if saga is None or not _holds(saga, owner, now):
            raise lost(
                saga_id, owner, None if saga is None else (saga.owner, saga.lease_until), now
            )
        return saga

    async def list(
        self, states: Sequence[str] | None = None, name: str | None = None, limit: int = 100
    ) -> list[SagaRecord]:
        self._live()
        chosen = [
            saga
            for saga in self._sagas.values()
            if (states is None or saga.state in states) and (name is None or saga.name == name)
        ]
        chosen.sort(key=lambda saga: (saga.created_at, saga.id), reverse=True)
        return [_out(saga) for saga in chosen[: max(limit, 0)]]


def _holds(saga: SagaRecord, owner: str, now: float) -> bool:
    return saga.owner == owner and saga.lease_until >= now


def _out(saga: SagaRecord) -> SagaRecord:
    """A stored record as callers see it: its payload decoded, a copy of its own."""
    return dataclasses.replace(saga, payload=json.loads(saga.payload))

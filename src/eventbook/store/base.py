"""The saga journal: its records, and the abstract store every backend implements.

A saga is one row (`SagaRecord`) plus its journal of steps (`StepRecord`, one per
position). Coordinators take sagas with `claim`, which leases them; every write
a coordinator makes (`put_step`, `set_state`) is accepted only while its lease
holds, so a coordinator that stalled past its lease cannot overwrite the journal
of the one that took over. Participants record their commands' results under an
idempotency key (`save_command_result`), so a command sent twice runs once.

Times are unix seconds on the store's clock: the process's for `memory://` and
`sqlite://`, the database server's for PostgreSQL (one clock for every host).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import EventbookError, StoreError

SagaState = Literal["running", "compensating", "completed", "compensated", "failed"]
ACTIVE_STATES: tuple[SagaState, ...] = ("running", "compensating")  # states an owner drives
TERMINAL_STATES: tuple[SagaState, ...] = ("completed", "compensated", "failed")
STATES: tuple[SagaState, ...] = ACTIVE_STATES + TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class SagaRecord:
    """One saga: what started it, where it stands, and who drives it."""

    id: str  # e.g. "customer.onboarding:<start event id>"
    name: str  # the saga's name
    version: int  # the code version it started on
    state: SagaState
    payload: Any  # JSON-compatible start payload
    created_at: float  # unix seconds
    updated_at: float
    deadline: float | None  # unix seconds, or None
    owner: str | None  # coordinator holding it, or None
    lease_until: float  # owner's lease end (0 when none)
    error: str | None  # why it failed / compensated


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One journal entry of a saga: a step, an undo, a timer, an expectation or a publish."""

    saga_id: str
    position: int  # 0, 1, 2, ... in the order the saga asked; undo entries use their own after
    kind: str  # "step" | "undo" | "sleep" | "expect" | "publish"
    name: str  # fingerprint: e.g. "BankService.create_account", "sleep", "expect:customer.update"
    status: str  # "started" | "done" | "failed"
    result: Any  # JSON-compatible, or None
    error: str | None
    started_at: float
    finished_at: float | None
    attempts: int


class LostOwnershipError(EventbookError):
    """The saga is owned by another coordinator, or this coordinator's lease lapsed.

    The coordinator must stop driving the saga: whoever claims it next resumes it
    from the journal.
    """


class SagaStore(ABC):
    """Durable saga journal; see the module's docstring for the ownership rules."""

    @abstractmethod
    async def open(self) -> None:
        """Connect, and create the tables if they are missing; a no-op when open.

        Raises:
            StoreError: the store cannot be reached or its tables are not this version's.
        """

    @abstractmethod
    async def close(self) -> None:
        """Disconnect; the store may be opened again. Until then, operations raise StoreError."""

    @abstractmethod
    async def create(self, record: SagaRecord) -> bool:
        """Insert a saga; False (and nothing changed) if a saga with its id exists.

        Raises:
            StoreError: the payload is not JSON-compatible, or the store failed.
        """

    @abstractmethod
    async def get(self, saga_id: str) -> tuple[SagaRecord, list[StepRecord]] | None:
        """Return the saga and its steps ordered by position, or None if there is none.

        Raises:
            StoreError: the store failed.
        """

    @abstractmethod
    async def claim(
        self, owner: str, lease: float, limit: int, names: Sequence[str] | None = None
    ) -> list[SagaRecord]:
        """Lease up to `limit` active sagas to `owner`, oldest first, and return them.

        A saga can be taken when it has no owner or its lease has run out; its lease
        then ends `lease` seconds from now. What `owner` holds already is not handed
        back (a coordinator asks for room it has free: `renew` keeps the rest). Two
        coordinators claiming at once never get the same saga.

        Args:
            owner: the coordinator's unique name.
            lease: seconds until the lease runs out unless renewed.
            limit: the most sagas to take.
            names: take only sagas with one of these names (all names when None).

        Raises:
            StoreError: the store failed.
        """

    @abstractmethod
    async def renew(self, owner: str, saga_ids: Sequence[str], lease: float) -> list[str]:
        """Extend the leases `owner` still holds to `lease` seconds from now.

        Returns:
            The ids (of `saga_ids`, in their order) still owned; the others were lost.

        Raises:
            StoreError: the store failed.
        """

    @abstractmethod
    async def release(self, owner: str, saga_ids: Sequence[str]) -> None:
        """Give up the sagas among `saga_ids` that `owner` holds, for anyone to claim.

        Raises:
            StoreError: the store failed.
        """

    @abstractmethod
    async def put_step(self, owner: str, step: StepRecord) -> None:
        """Insert or replace the step at (saga id, position), while `owner` holds the lease.

        Raises:
            LostOwnershipError: `owner` does not hold a lease on the saga that is still valid.
            StoreError: the result is not JSON-compatible, or the store failed.
        """

    @abstractmethod
    async def set_state(
        self, owner: str, saga_id: str, state: SagaState, error: str | None = None
    ) -> None:
        """Move the saga to `state` with `error` (None clears it), while `owner` holds it.

        A terminal state (completed, compensated, failed) also ends the ownership.

        Raises:
            LostOwnershipError: `owner` does not hold a lease on the saga that is still valid.
            StoreError: the store failed.
        """

    @abstractmethod
    async def force_state(self, saga_id: str, state: SagaState, error: str | None = None) -> None:
        """Move the saga to `state` whoever holds it, and end its ownership (operators only).

        Raises:
            StoreError: there is no such saga, or the store failed.
        """

    @abstractmethod
    async def command_result(self, key: str) -> tuple[bool, Any]:
        """Return (True, result) of the command with this idempotency key, or (False, None).

        Raises:
            StoreError: the store failed.
        """

    @abstractmethod
    async def save_command_result(self, key: str, result: Any) -> bool:
        """Record a command's result; the first write wins (False, and the old one kept).

        Raises:
            StoreError: the result is not JSON-compatible, or the store failed.
        """

    # Last in the class: below it, `list` would name this method, not the builtin.
    @abstractmethod
    async def list(
        self, states: Sequence[str] | None = None, name: str | None = None, limit: int = 100
    ) -> list[SagaRecord]:
        """Return up to `limit` sagas, newest first (by creation), optionally filtered.

        Args:
            states: only sagas in one of these states (all states when None).
            name: only sagas with this name.
            limit: the most sagas to return.

        Raises:
            StoreError: the store failed.
        """


def check_state(state: str) -> SagaState:
    """Return `state` if it is a saga state.

    Raises:
        StoreError: it is not one.
    """
    for known in STATES:
        if state == known:
            return known
    raise StoreError(f"unknown saga state {state!r}; one of {', '.join(STATES)}")


def to_json(value: Any, what: str) -> str:
    """Encode `value` as JSON text, the same way in every store.

    Raises:
        StoreError: `value` is not JSON-compatible (NaN and infinities included:
            PostgreSQL's JSON has no such numbers).
    """
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"the {what} is not JSON-compatible: {exc}") from None


def lost(
    saga_id: str, owner: str, holder: tuple[str | None, float] | None, now: float
) -> LostOwnershipError:
    """The error for a write `owner` may not make, saying who holds the saga instead.

    Args:
        holder: the saga's (owner, lease_until) as stored, or None if there is no such saga.
        now: the store's time when the write was refused.
    """
    if holder is None:
        why = "there is no such saga"
    elif holder[0] is None:
        why = "nobody holds it (released, finished or reset by an operator)"
    elif holder[0] != owner:
        why = f"{holder[0]!r} holds it"
    else:
        why = f"the lease ran out {now - holder[1]:.3f}s ago"
    return LostOwnershipError(f"{owner!r} may not write to saga {saga_id!r}: {why}")

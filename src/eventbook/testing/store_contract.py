"""The saga store contract: one test suite every `SagaStore` passes unchanged.

A store's tests subclass `SagaStoreContract` and provide one fixture,
`new_store`: a function that returns a new, unopened store on the backend under
test, seeing the same data as the others it returns (for `memory://`, the same
store every time):

    class TestSqliteStore(SagaStoreContract):
        @pytest.fixture
        def new_store(self, tmp_path):
            return lambda: SqliteSagaStore(f"sqlite:///{tmp_path}/sagas.db")

Every test names its sagas uniquely, but `claim` without names takes any saga:
give each test a fresh backend (a new file, a new schema). Leases run out by
the clock, which the tests wait on with `eventually`, never with sleeps.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ..errors import EventbookError, StoreError
from ..store import ACTIVE_STATES, LostOwnershipError, SagaRecord, SagaStore, StepRecord
from ..store.base import TERMINAL_STATES, SagaState
from . import eventually

LONG = 60.0  # a lease no test outlives
TINY = 0.01  # a lease that runs out while the test waits for it


def saga(name: str, n: int = 0, **fields: Any) -> SagaRecord:
    """A new running saga named `name`; the higher `n`, the later it was created."""
    created = 1_700_000_000.0 + n
    values: dict[str, Any] = {
        "id": f"{name}:{n}",
        "name": name,
        "version": 1,
        "state": "running",
        "payload": {"n": n, "who": "SELO", "tags": ["a", "b"], "nested": {"x": 1.5}},
        "created_at": created,
        "updated_at": created,
        "deadline": None,
        "owner": None,
        "lease_until": 0.0,
        "error": None,
    }
    values.update(fields)
    return SagaRecord(**values)


def step(saga_id: str, position: int, status: str = "done", **fields: Any) -> StepRecord:
    """A journal entry of `saga_id` at `position`."""
    values: dict[str, Any] = {
        "saga_id": saga_id,
        "position": position,
        "kind": "step",
        "name": f"Service.step{position}",
        "status": status,
        "result": {"position": position, "ok": True},
        "error": None,
        "started_at": 1_700_000_100.0 + position,
        "finished_at": 1_700_000_101.0 + position if status != "started" else None,
        "attempts": 1,
    }
    values.update(fields)
    return StepRecord(**values)


def unique(prefix: str = "saga") -> str:
    """A saga name no other test (or earlier run on a shared server) uses."""
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


class SagaStoreContract:
    """What every saga store does; subclass it and provide the `new_store` fixture."""

    @pytest.fixture
    def new_store(self) -> Callable[[], SagaStore]:
        raise NotImplementedError("a store's tests provide the `new_store` fixture")

    @pytest.fixture
    async def opened(self, new_store: Callable[[], SagaStore]) -> AsyncIterator[list[SagaStore]]:
        """Stores a test opened; all closed after it."""
        stores: list[SagaStore] = []
        yield stores
        for store in reversed(stores):
            await store.close()

    @pytest.fixture
    async def store(self, new_store: Callable[[], SagaStore], opened: list[SagaStore]) -> SagaStore:
        store = new_store()
        await store.open()
        opened.append(store)
        return store

    @pytest.fixture
    async def rival(self, new_store: Callable[[], SagaStore], opened: list[SagaStore]) -> SagaStore:
        """A second store on the same data, as another coordinator's process would have."""
        store = new_store()
        await store.open()
        opened.append(store)
        return store

    async def claimed(self, store: SagaStore, owner: str, name: str, lease: float = LONG) -> str:
        """Create a saga named `name` and have `owner` claim it; return its id."""
        record = saga(name)
        assert await store.create(record)
        [taken] = await store.claim(owner, lease, 10, names=[name])
        assert taken.id == record.id
        return record.id

    async def lapsed(self, store: SagaStore, owner: str, name: str) -> str:
        """Create a saga `owner` claimed with a lease that has since run out; return its id."""
        saga_id = await self.claimed(store, owner, name, lease=TINY)
        # Wait by the store's own clock (a server's, maybe): until the owner's writes fail.
        await eventually(lambda: _lost_lease(store, owner, saga_id))
        return saga_id

    # -- create, get, list -----------------------------------------------------------

    async def test_create_then_get_round_trips_every_field(self, store: SagaStore) -> None:
        record = saga(
            unique(),
            payload={"text": "Seoul, Korea — 서울", "n": [1, 2.5, None, True], "empty": {}},
            deadline=1_700_003_600.25,
            error=None,
        )
        assert await store.create(record)
        assert await store.get(record.id) == (record, [])

    @pytest.mark.parametrize("payload", [None, 0, "text", [1, "two"], {"a": {"b": [None]}}])
    async def test_any_json_payload_round_trips(self, store: SagaStore, payload: Any) -> None:
        record = saga(unique(), payload=payload)
        await store.create(record)
        found = await store.get(record.id)
        assert found is not None
        assert found[0].payload == payload

    async def test_create_is_idempotent(self, store: SagaStore) -> None:
        first = saga(unique())
        assert await store.create(first)
        again = saga(first.name, payload="other", version=2, state="failed")
        assert not await store.create(again)
        assert await store.get(first.id) == (first, [])

    async def test_get_unknown_saga_is_none(self, store: SagaStore) -> None:
        assert await store.get(f"{unique()}:nope") is None

    async def test_stored_values_are_copies(self, store: SagaStore) -> None:
        payload: dict[str, Any] = {"items": [1]}
        record = saga(unique(), payload=payload)
        await store.create(record)
        payload["items"].append(2)
        found = await store.get(record.id)
        assert found is not None
        assert found[0].payload == {"items": [1]}

    async def test_values_that_are_not_json_are_refused(self, store: SagaStore) -> None:
        with pytest.raises(StoreError, match="not JSON-compatible"):
            await store.create(saga(unique(), payload={"when": object()}))
        with pytest.raises(StoreError, match="not JSON-compatible"):
            await store.create(saga(unique(), payload=float("nan")))
        with pytest.raises(StoreError, match="not JSON-compatible"):
            await store.save_command_result(unique(), {1, 2})

    async def test_get_returns_steps_by_position(self, store: SagaStore) -> None:
        owner = unique("owner")
        saga_id = await self.claimed(store, owner, unique())
        for position in (2, 0, 3, 1):
            await store.put_step(owner, step(saga_id, position))
        found = await store.get(saga_id)
        assert found is not None
        assert [s.position for s in found[1]] == [0, 1, 2, 3]
        assert found[1][2] == step(saga_id, 2)

    async def test_put_step_replaces_the_step_at_its_position(self, store: SagaStore) -> None:
        owner = unique("owner")
        saga_id = await self.claimed(store, owner, unique())
        await store.put_step(owner, step(saga_id, 0, "started", result=None))
        done = step(saga_id, 0, "done", result=["account", 42], attempts=2)
        await store.put_step(owner, done)
        failed = step(saga_id, 1, "failed", kind="undo", result=None, error="boom")
        await store.put_step(owner, failed)
        found = await store.get(saga_id)
        assert found is not None
        assert found[1] == [done, failed]

    async def test_list_is_newest_first_and_filters(self, store: SagaStore) -> None:
        name, other = unique(), unique()
        for n in range(4):
            await store.create(saga(name, n, state="completed" if n % 2 else "running"))
        await store.create(saga(other, 9))
        listed = await store.list(name=name)
        assert [r.id for r in listed] == [f"{name}:{n}" for n in (3, 2, 1, 0)]
        assert listed[0] == saga(name, 3, state="completed")
        running = await store.list(states=["running"], name=name)
        assert [r.id for r in running] == [f"{name}:2", f"{name}:0"]
        both = await store.list(states=["running", "completed"], name=name, limit=3)
        assert [r.id for r in both] == [f"{name}:3", f"{name}:2", f"{name}:1"]
        assert await store.list(states=["failed"], name=name) == []
        assert await store.list(states=[], name=name) == []
        everything = [r.id for r in await store.list(limit=1000)]
        assert {f"{name}:0", f"{other}:9"} <= set(everything)

    # -- claim -----------------------------------------------------------------------

    async def test_claim_takes_active_sagas_oldest_first(self, store: SagaStore) -> None:
        name, owner = unique(), unique("owner")
        for n, state in enumerate(("running", "compensating", "running", "completed")):
            await store.create(saga(name, n, state=state))
        for state in ("compensated", "failed"):
            await store.create(saga(name, 10, id=f"{name}:{state}", state=state))
        before = time.time()
        first = await store.claim(owner, LONG, 2, names=[name])
        assert [r.id for r in first] == [f"{name}:0", f"{name}:1"]
        rest = await store.claim(unique("owner"), LONG, 10, names=[name])
        assert [r.id for r in rest] == [f"{name}:2"]
        for record in first:
            assert record.owner == owner
            # The store's clock may be a server's: allow it a little disagreement.
            assert before - 5 < record.lease_until - LONG < time.time() + 5
            assert await store.get(record.id) == (record, [])

    async def test_claim_never_takes_a_saga_another_owner_holds(self, store: SagaStore) -> None:
        name = unique()
        saga_id = await self.claimed(store, "first", name)
        assert await store.claim("second", LONG, 10, names=[name]) == []
        found = await store.get(saga_id)
        assert found is not None
        assert found[0].owner == "first"

    async def test_claim_takes_a_saga_whose_lease_ran_out(self, store: SagaStore) -> None:
        name = unique()
        saga_id = await self.lapsed(store, "first", name)
        [taken] = await store.claim("second", LONG, 10, names=[name])
        assert (taken.id, taken.owner) == (saga_id, "second")

    async def test_claim_with_no_lease_left_at_once(self, store: SagaStore) -> None:
        name = unique()
        await self.claimed(store, "first", name, lease=-1.0)
        [taken] = await store.claim("second", LONG, 10, names=[name])
        assert taken.owner == "second"

    async def test_claim_does_not_hand_back_what_the_owner_holds(self, store: SagaStore) -> None:
        name = unique()
        held = await self.claimed(store, "first", name, lease=LONG)
        await store.create(saga(name, 1))
        [new] = await store.claim("first", LONG, 10, names=[name])
        assert new.id != held
        assert await store.claim("first", LONG, 10, names=[name]) == []

    async def test_claim_by_name_and_limit(self, store: SagaStore) -> None:
        wanted, unwanted = unique(), unique()
        for n in range(3):
            await store.create(saga(wanted, n))
            await store.create(saga(unwanted, n))
        assert await store.claim("owner", LONG, 10, names=[]) == []
        assert await store.claim("owner", LONG, 0, names=[wanted]) == []
        taken = await store.claim("owner", LONG, 2, names=[wanted, unique()])
        assert [r.id for r in taken] == [f"{wanted}:0", f"{wanted}:1"]

    async def test_claim_without_names_takes_every_name(self, store: SagaStore) -> None:
        names = [unique(), unique()]
        for name in names:
            await store.create(saga(name))
        taken = await store.claim("owner", LONG, 100)
        assert {r.id for r in taken} >= {f"{name}:0" for name in names}

    async def test_concurrent_claimers_never_get_the_same_saga(
        self, store: SagaStore, rival: SagaStore
    ) -> None:
        name, count = unique(), 40
        for n in range(count):
            await store.create(saga(name, n))
        owners: dict[str, str] = {}
        # Small claims, many rounds, both sides at once: they overlap on every round.
        # A new owner each round: an owner's claim takes again what it holds.
        for round_ in range(count):
            a, b = f"a{round_}", f"b{round_}"
            got_a, got_b = await asyncio.gather(
                store.claim(a, LONG, 3, names=[name]), rival.claim(b, LONG, 3, names=[name])
            )
            if not got_a and not got_b:
                break
            for owner, got in ((a, got_a), (b, got_b)):
                for record in got:
                    assert record.id not in owners, f"{record.id} given to {owner} and {owners}"
                    owners[record.id] = owner
        assert sorted(owners) == sorted(f"{name}:{n}" for n in range(count))
        for record in await store.list(name=name, limit=count):
            assert record.owner == owners[record.id]

    async def test_concurrent_claims_of_lapsed_leases_give_each_saga_once(
        self, store: SagaStore, rival: SagaStore
    ) -> None:
        name = unique()
        for n in range(10):
            await store.create(saga(name, n, owner="gone", lease_until=1.0))
        round_a, round_b = await asyncio.gather(
            store.claim("a", LONG, 10, names=[name]), rival.claim("b", LONG, 10, names=[name])
        )
        ids_a, ids_b = {r.id for r in round_a}, {r.id for r in round_b}
        assert not ids_a & ids_b
        assert len(ids_a | ids_b) == 10

    # -- renew, release --------------------------------------------------------------

    async def test_renew_extends_only_the_leases_still_held(self, store: SagaStore) -> None:
        name = unique()
        mine = [await self.claimed(store, "me", f"{name}.{n}", lease=LONG / 2) for n in range(2)]
        theirs = await self.claimed(store, "them", f"{name}.x")
        gone = await self.lapsed(store, "me", f"{name}.y")
        asked = [mine[1], theirs, gone, f"{name}:unknown", mine[0]]
        assert await store.renew("me", asked, LONG) == [mine[1], mine[0]]
        for saga_id in mine:
            found = await store.get(saga_id)
            assert found is not None
            assert found[0].lease_until > time.time() + LONG / 2 - 5
        assert await store.renew("me", [], LONG) == []

    async def test_release_gives_sagas_back(self, store: SagaStore) -> None:
        name = unique()
        saga_id = await self.claimed(store, "me", name)
        await store.release("them", [saga_id])  # not theirs: nothing happens
        assert await store.claim("them", LONG, 10, names=[name]) == []
        await store.release("me", [saga_id, f"{name}:unknown"])
        found = await store.get(saga_id)
        assert found is not None
        assert (found[0].owner, found[0].lease_until) == (None, 0)
        [taken] = await store.claim("them", LONG, 10, names=[name])
        assert taken.id == saga_id

    # -- writes under a lease --------------------------------------------------------

    async def test_put_step_refused_to_anyone_but_the_owner(self, store: SagaStore) -> None:
        saga_id = await self.claimed(store, "me", unique())
        with pytest.raises(LostOwnershipError, match="'me' holds it"):
            await store.put_step("them", step(saga_id, 0))
        with pytest.raises(LostOwnershipError, match="no such saga"):
            await store.put_step("me", step(f"{unique()}:0", 0))
        found = await store.get(saga_id)
        assert found is not None
        assert found[1] == []

    async def test_put_step_refused_once_the_lease_ran_out(self, store: SagaStore) -> None:
        name = unique()
        saga_id = await self.lapsed(store, "me", name)
        with pytest.raises(LostOwnershipError, match="lease ran out"):
            await store.put_step("me", step(saga_id, 0))
        with pytest.raises(LostOwnershipError):
            await store.set_state("me", saga_id, "completed")
        # Even before anyone else claimed it; and after, all the more.
        await store.claim("them", LONG, 10, names=[name])
        with pytest.raises(LostOwnershipError, match="'them' holds it"):
            await store.put_step("me", step(saga_id, 0))
        found = await store.get(saga_id)
        assert found is not None
        assert (found[0].state, found[1]) == ("running", [])

    async def test_writes_refused_after_release(self, store: SagaStore) -> None:
        saga_id = await self.claimed(store, "me", unique())
        await store.release("me", [saga_id])
        with pytest.raises(LostOwnershipError, match="nobody holds it"):
            await store.put_step("me", step(saga_id, 0))
        with pytest.raises(LostOwnershipError):
            await store.set_state("me", saga_id, "compensating")

    async def test_set_state_by_the_owner(self, store: SagaStore) -> None:
        saga_id = await self.claimed(store, "me", unique())
        before = await store.get(saga_id)
        assert before is not None
        await store.set_state("me", saga_id, "compensating", error="step 1 failed: boom")
        found = await store.get(saga_id)
        assert found is not None
        record = found[0]
        assert (record.state, record.error) == ("compensating", "step 1 failed: boom")
        # Not terminal: the owner still drives it, under the same lease.
        assert (record.owner, record.lease_until) == ("me", before[0].lease_until)
        assert record.updated_at > before[0].updated_at
        await store.put_step("me", step(saga_id, 0, kind="undo"))
        await store.set_state("me", saga_id, "running")
        found = await store.get(saga_id)
        assert found is not None
        assert found[0].error is None  # error=None clears it

    async def test_set_state_refused_to_another_owner(self, store: SagaStore) -> None:
        saga_id = await self.claimed(store, "me", unique())
        with pytest.raises(LostOwnershipError, match="'me' holds it"):
            await store.set_state("them", saga_id, "failed", error="not yours")
        with pytest.raises(LostOwnershipError, match="no such saga"):
            await store.set_state("me", f"{unique()}:0", "failed")
        found = await store.get(saga_id)
        assert found is not None
        assert (found[0].state, found[0].owner, found[0].error) == ("running", "me", None)

    @pytest.mark.parametrize("state", TERMINAL_STATES)
    async def test_terminal_states_end_the_ownership(
        self, store: SagaStore, state: SagaState
    ) -> None:
        name = unique()
        saga_id = await self.claimed(store, "me", name)
        await store.set_state("me", saga_id, state, error=None if state == "completed" else "why")
        found = await store.get(saga_id)
        assert found is not None
        assert (found[0].state, found[0].owner, found[0].lease_until) == (state, None, 0)
        assert await store.claim("me", LONG, 10, names=[name]) == []
        with pytest.raises(LostOwnershipError):
            await store.put_step("me", step(saga_id, 5))

    async def test_unknown_states_are_refused(self, store: SagaStore) -> None:
        saga_id = await self.claimed(store, "me", unique())
        with pytest.raises(StoreError, match="unknown saga state"):
            await store.set_state("me", saga_id, "done")  # type: ignore[arg-type]
        with pytest.raises(StoreError, match="unknown saga state"):
            await store.create(saga(unique(), state="paused"))

    # -- operators -------------------------------------------------------------------

    async def test_force_state_whoever_holds_the_saga(self, store: SagaStore) -> None:
        name = unique()
        saga_id = await self.claimed(store, "me", name)
        await store.set_state("me", saga_id, "failed", error="boom")
        await store.force_state(saga_id, "running")  # `eventbook sagas retry`
        found = await store.get(saga_id)
        assert found is not None
        assert (found[0].state, found[0].owner, found[0].error) == ("running", None, None)
        [taken] = await store.claim("them", LONG, 10, names=[name])
        # Held by another coordinator: forced all the same, and its lease is gone.
        await store.force_state(saga_id, "compensating", error="skipped by operator")
        found = await store.get(saga_id)
        assert found is not None
        record = found[0]
        assert (record.state, record.owner, record.lease_until) == ("compensating", None, 0)
        assert record.error == "skipped by operator"
        assert record.updated_at >= taken.updated_at
        with pytest.raises(LostOwnershipError):
            await store.put_step("them", step(saga_id, 0))
        [again] = await store.claim("me", LONG, 10, names=[name])
        assert again.id == saga_id

    async def test_force_state_of_an_unknown_saga(self, store: SagaStore) -> None:
        with pytest.raises(StoreError, match="no saga"):
            await store.force_state(f"{unique()}:0", "failed")

    # -- participants' command results -----------------------------------------------

    async def test_command_results_first_write_wins(self, store: SagaStore) -> None:
        key = unique("command")
        assert await store.command_result(key) == (False, None)
        assert await store.save_command_result(key, {"account": 42})
        assert not await store.save_command_result(key, {"account": 43})
        assert await store.command_result(key) == (True, {"account": 42})

    async def test_a_command_result_of_none_is_found(self, store: SagaStore) -> None:
        key = unique("command")
        assert await store.save_command_result(key, None)
        assert await store.command_result(key) == (True, None)
        assert not await store.save_command_result(key, "later")

    # -- across stores and reopening -------------------------------------------------

    async def test_a_store_sees_what_another_wrote(
        self, store: SagaStore, rival: SagaStore
    ) -> None:
        name = unique()
        saga_id = await self.claimed(store, "me", name)
        await store.put_step("me", step(saga_id, 0))
        await store.save_command_result(f"{name}/cmd", [1])
        assert await rival.get(saga_id) == await store.get(saga_id)
        assert await rival.command_result(f"{name}/cmd") == (True, [1])
        with pytest.raises(LostOwnershipError):
            await rival.put_step("other", step(saga_id, 1))
        await rival.put_step("me", step(saga_id, 1))  # the lease is the owner's, not the store's

    async def test_data_survives_closing_and_opening(
        self, new_store: Callable[[], SagaStore], opened: list[SagaStore]
    ) -> None:
        first = new_store()
        await first.open()
        name = unique()
        await first.create(saga(name))
        [taken] = await first.claim("me", LONG, 1, names=[name])
        await first.put_step("me", step(taken.id, 0))
        found = await first.get(taken.id)
        await first.close()
        second = new_store()
        await second.open()
        opened.append(second)
        assert await second.get(taken.id) == found
        await second.set_state("me", taken.id, "completed")

    async def test_a_closed_store_refuses_to_work(self, new_store: Callable[[], SagaStore]) -> None:
        store = new_store()
        await store.open()
        await store.close()
        with pytest.raises(StoreError, match="not open"):
            await store.get("x")
        with pytest.raises(StoreError, match="not open"):
            await store.create(saga(unique()))

    async def test_lost_ownership_is_an_eventbook_error(self) -> None:
        assert issubclass(LostOwnershipError, EventbookError)
        assert not issubclass(LostOwnershipError, StoreError)
        assert set(ACTIVE_STATES) == {"running", "compensating"}


async def _lost_lease(store: SagaStore, owner: str, saga_id: str) -> bool:
    """True once `owner` may no longer write to the running saga `saga_id`.

    Probes with a write that changes nothing but `updated_at`: renewing, or
    claiming, would change what the test looks at.
    """
    try:
        await store.set_state(owner, saga_id, "running")
    except LostOwnershipError:
        return True
    return False

"""Sagas: journaled steps, undo in reverse, timeouts on a virtual clock, changed code refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import eventbook as eb
from eventbook.clock import VirtualClock
from eventbook.store import SagaRecord, StepRecord
from eventbook.testing import eventually
from tests.conftest import SELO, Customer

TERMINAL = ("completed", "compensated", "failed")


class Account(eb.Event):
    number: str


def build(calls: list[str], fail: str | None = None, hang: str | None = None) -> Any:
    book = eb.EventBook("onboarding")
    signup = book.topic("customer.signup", Customer)
    release = asyncio.Event()

    def act(name: str) -> None:
        calls.append(name)
        if name == fail:
            raise RuntimeError(f"{name} is down")

    @book.service
    class BankService:
        def create_account(self, customer: Customer) -> Account:
            act("bank.create")
            return Account(number=f"ACC-{customer.name}")

        def close_account(self, customer: Customer) -> None:
            act("bank.close")

    @book.service
    class MailService:
        async def send(self, customer: Customer) -> None:
            if hang == "mail.send":
                calls.append("mail.send (hangs)")
                await release.wait()
            act("mail.send")

        async def apologize(self, customer: Customer) -> None:
            act("mail.apologize")

    @book.service
    class PostService:
        def send(self, customer: Customer) -> None:
            act("post.send")

    results: dict[str, Any] = {}

    @book.saga("customer.onboarding", start_on=signup)
    async def onboard(saga: eb.Saga, customer: Customer) -> None:
        account = await saga.step(
            BankService.create_account, customer, undo=BankService.close_account
        )
        results["account"] = account
        await saga.step(MailService.send, customer, undo=MailService.apologize, timeout=5)
        await saga.step(PostService.send, customer)

    return book, signup, results, release


async def finished(book: eb.EventBook, saga_id: str) -> tuple[SagaRecord, list[StepRecord]]:
    async def done() -> bool:
        found = await book.journal.get(saga_id)
        return found is not None and found[0].state in TERMINAL

    await eventually(done, 30)
    found = await book.journal.get(saga_id)
    assert found is not None
    return found


def summary(steps: list[StepRecord]) -> list[tuple[str, str, str]]:
    return [(s.kind, s.name, s.status) for s in steps]


async def test_a_saga_runs_its_steps_in_turn_and_completes() -> None:
    calls: list[str] = []
    book, signup, results, _ = build(calls)
    async with book.start("memory://"):
        envelope = await book.publish(signup, SELO)
        record, steps = await finished(book, f"customer.onboarding:{envelope.id}")
    assert record.state == "completed"
    assert calls == ["bank.create", "mail.send", "post.send"]
    assert results["account"] == Account(number="ACC-SELO")  # typed from the method's return
    assert summary(steps) == [
        ("step", "BankService.create_account", "done"),
        ("step", "MailService.send", "done"),
        ("step", "PostService.send", "done"),
    ]


async def test_step_2_fails_so_only_step_1_is_undone() -> None:
    calls: list[str] = []
    book, signup, _, _ = build(calls, fail="mail.send")
    async with book.start("memory://"):
        envelope = await book.publish(signup, SELO)
        record, steps = await finished(book, f"customer.onboarding:{envelope.id}")
    assert record.state == "compensated"
    assert "mail.send is down" in (record.error or "")
    assert calls == ["bank.create", "mail.send", "bank.close"]  # post never ran
    assert summary(steps) == [
        ("step", "BankService.create_account", "done"),
        ("step", "MailService.send", "failed"),
        ("undo", "BankService.close_account", "done"),
    ]


async def test_step_2_times_out_on_a_virtual_clock_so_only_step_1_is_undone(
    tmp_path: Path,
) -> None:
    calls: list[str] = []
    clock = VirtualClock()
    book, signup, _, release = build(calls, hang="mail.send")
    async with book.start(f"sqlite:///{tmp_path}/eb.db", clock=clock):
        envelope = await book.publish(signup, SELO)
        await eventually(lambda: "mail.send (hangs)" in calls and clock.sleepers > 0, 30)
        await clock.advance(5)  # the step's timeout, without waiting for it
        record, steps = await finished(book, f"customer.onboarding:{envelope.id}")
        release.set()
    assert record.state == "compensated"
    assert summary(steps) == [
        ("step", "BankService.create_account", "done"),
        ("step", "MailService.send", "failed"),
        ("undo", "BankService.close_account", "done"),
    ]
    assert steps[1].error == "timed out after 5s"
    assert "post.send" not in calls


async def test_a_redelivered_start_event_starts_no_second_saga() -> None:
    calls: list[str] = []
    book, _signup, _, _ = build(calls)
    async with book.start("memory://"):
        coordinator = book._running().coordinator
        assert coordinator is not None
        definition = book.sagas[0]
        assert await coordinator.create(definition, SELO, "customer.onboarding:same") is True
        assert await coordinator.create(definition, SELO, "customer.onboarding:same") is False
        await finished(book, "customer.onboarding:same")
        assert len(await book.journal.list()) == 1
    assert calls == ["bank.create", "mail.send", "post.send"]


async def test_a_changed_step_sequence_on_resume_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/eb.db"
    calls: list[str] = []
    book, signup, _, _release = build(calls, hang="mail.send")
    async with book.start(url, drain_timeout=0.1):
        envelope = await book.publish(signup, SELO)
        await eventually(lambda: "mail.send (hangs)" in calls, 30)
    saga_id = f"customer.onboarding:{envelope.id}"
    # The coordinator stopped mid-saga (step 2 started). New code asks for other steps.
    changed = eb.EventBook("onboarding")
    changed_signup = changed.topic("customer.signup", Customer)

    @changed.service
    class PostService:
        def send(self, customer: Customer) -> None:
            calls.append("post.send (new code)")

    @changed.saga("customer.onboarding", start_on=changed_signup)
    async def onboard(saga: eb.Saga, customer: Customer) -> None:
        await saga.step(PostService.send, customer)

    async with changed.start(url):
        record, _ = await finished(changed, saga_id)
    assert record.state == "failed"
    assert "position 0 was step 'BankService.create_account'" in (record.error or "")
    assert "PostService.send" in (record.error or "")
    assert "post.send (new code)" not in calls


async def test_a_durable_sleep_waits_on_the_clock() -> None:
    book = eb.EventBook("timers")
    done: list[str] = []
    clock = VirtualClock()

    @book.saga("reminder")
    async def remind(saga: eb.Saga, payload: dict[str, Any]) -> None:
        await saga.sleep(3600)
        done.append(payload["who"])

    async with book.start("memory://", clock=clock):
        saga_id = await book.start_saga("reminder", {"who": "SELO"})
        await eventually(lambda: clock.sleepers > 0, 30)
        assert done == []
        await clock.advance(3600)
        record, steps = await finished(book, saga_id)
    assert done == ["SELO"]
    assert record.state == "completed"
    assert summary(steps) == [("sleep", "sleep", "done")]


def test_saga_functions_are_checked_when_registered() -> None:
    book = eb.EventBook("checks")
    topic = book.topic("customer.signup", Customer)
    with pytest.raises(eb.ConfigurationError, match="async def"):

        @book.saga("x")
        def not_async(saga: eb.Saga, payload: Any) -> None: ...

    with pytest.raises(eb.ConfigurationError, match="carries Customer"):

        @book.saga("y", start_on=topic)
        async def wrong_type(saga: eb.Saga, payload: Account) -> None: ...


async def test_a_deadline_compensates_a_saga_that_takes_too_long() -> None:
    book = eb.EventBook("deadlines")
    clock = VirtualClock()
    calls: list[str] = []

    @book.service
    class BankService:
        def create_account(self, customer: Customer) -> None:
            calls.append("create")

        def close_account(self, customer: Customer) -> None:
            calls.append("close")

    @book.saga("slow", deadline=60)
    async def slow(saga: eb.Saga, customer: Customer) -> None:
        await saga.step(BankService.create_account, customer, undo=BankService.close_account)
        await saga.sleep(3600)  # longer than the deadline

    async with book.start("memory://", clock=clock):
        saga_id = await book.start_saga("slow", SELO)
        await eventually(lambda: clock.sleepers >= 2, 30)  # the sleep and the deadline
        await clock.advance(60)
        record, _ = await finished(book, saga_id)
    assert record.state == "compensated"
    assert "deadline" in (record.error or "")
    assert calls == ["create", "close"]


async def test_expect_waits_for_a_matching_event_and_publish_happens_once() -> None:
    book = eb.EventBook("expecting")
    confirmations = book.topic("mail.confirmed", Customer)
    welcomes = book.topic("mail.welcome", Customer)
    seen: list[str] = []

    @eb.sub(welcomes)
    def count(customer: Customer) -> None:
        seen.append(customer.email)

    @book.saga("confirm", expects=[confirmations])
    async def confirm(saga: eb.Saga, customer: Customer) -> None:
        await saga.publish(welcomes, customer)
        got = await saga.expect(confirmations, where=lambda c: c.email == customer.email)
        assert got.name == "SELO"

    async with book.start("memory://"):
        saga_id = await book.start_saga("confirm", SELO)
        await eventually(lambda: seen == [SELO.email], 30)
        await book.publish(confirmations, SELO.model_copy(update={"email": "other@x"}))
        await book.publish(confirmations, SELO)
        record, steps = await finished(book, saga_id)
    assert record.state == "completed"
    assert summary(steps) == [
        ("publish", "publish:mail.welcome", "done"),
        ("expect", "expect:mail.confirmed", "done"),
    ]
    assert seen == [SELO.email]


async def test_a_saga_started_on_an_older_version_fails_with_the_reason(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/eb.db"
    calls: list[str] = []
    book, signup, _, _ = build(calls, hang="mail.send")
    async with book.start(url, drain_timeout=0.1):
        envelope = await book.publish(signup, SELO)
        await eventually(lambda: "mail.send (hangs)" in calls, 30)
    newer = eb.EventBook("onboarding")
    newer_signup = newer.topic("customer.signup", Customer)

    @newer.saga("customer.onboarding", start_on=newer_signup, version=2)
    async def onboard(saga: eb.Saga, customer: Customer) -> None: ...

    async with newer.start(url):
        record, _ = await finished(newer, f"customer.onboarding:{envelope.id}")
    assert record.state == "failed"
    assert "started on version 1" in (record.error or "")
    assert "versions [2]" in (record.error or "")


async def test_a_step_sent_again_while_it_still_runs_is_not_run_twice(tmp_path: Path) -> None:
    # Steps of different sagas run side by side in a service; the copy of a command
    # that a step's timeout re-sent must wait for the first run, not start a second.
    book = eb.EventBook("slowbank")
    signup = book.topic("customer.signup", Customer)
    clock = VirtualClock()
    runs: list[str] = []
    release = asyncio.Event()

    @book.service
    class BankService:
        async def create_account(self, customer: Customer) -> Account:
            runs.append(customer.name)
            await release.wait()
            return Account(number=f"ACC-{customer.name}")

    @book.saga("slow", start_on=signup)
    async def slow(saga: eb.Saga, customer: Customer) -> None:
        await saga.step(BankService.create_account, customer, timeout=5, retry=1)

    async with book.start(f"sqlite:///{tmp_path}/eb.db", clock=clock):
        envelope = await book.publish(signup, SELO)
        await eventually(lambda: runs == ["SELO"] and clock.sleepers > 0, 30)
        await clock.advance(5)  # the first try times out; the command is sent again
        await clock.advance(0.2)  # after the retry's backoff
        await eventually(lambda: clock.sleepers > 0, 30)  # the second try is waiting
        release.set()
        record, steps = await finished(book, f"slow:{envelope.id}")
    assert runs == ["SELO"], "the re-sent command ran the method again"
    assert record.state == "completed"
    assert summary(steps) == [("step", "BankService.create_account", "done")]
    assert steps[0].attempts == 2

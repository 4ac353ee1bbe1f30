"""Sagas run unchanged on every networked broker: commands and replies travel through
the broker, the journal lives in a sqlite file beside it."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import eventbook as eb
from eventbook.testing import eventually
from eventbook.testing.contract import DEADLINE, unique_book
from tests.conftest import SELO, Customer

BROKERS = {
    "nats": pytest.mark.nats,
    "redis": pytest.mark.redis,
    "rabbitmq": pytest.mark.rabbitmq,
}


@pytest.fixture(params=[pytest.param(name, marks=mark) for name, mark in BROKERS.items()])
async def broker_url(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    helpers = importlib.import_module(f"tests._{request.param}")
    url: str = helpers.local_server()
    created = helpers.Created().watch(monkeypatch)
    yield url
    await created.delete(url)


async def test_a_failing_step_undoes_the_completed_ones_in_reverse(
    broker_url: str, tmp_path: Path
) -> None:
    book = unique_book("saga")
    signup = book.topic("customer.signup", Customer)
    calls: list[str] = []

    @book.service
    class BankService:
        def create_account(self, customer: Customer) -> None:
            calls.append("bank.create")

        def close_account(self, customer: Customer) -> None:
            calls.append("bank.close")

    @book.service
    class MailService:
        async def send(self, customer: Customer) -> None:
            calls.append("mail.send")

        async def apologize(self, customer: Customer) -> None:
            calls.append("mail.apologize")

    @book.service
    class PostService:
        def send(self, customer: Customer) -> None:
            calls.append("post.send")
            raise RuntimeError("post is down")

    @book.saga("customer.onboarding", start_on=signup)
    async def onboard(saga: eb.Saga, customer: Customer) -> None:
        await saga.step(BankService.create_account, customer, undo=BankService.close_account)
        await saga.step(MailService.send, customer, undo=MailService.apologize)
        await saga.step(PostService.send, customer, retry=1)

    async with book.start(broker_url, store=f"sqlite:///{tmp_path / 'journal.db'}"):
        saga_id = await book.start_saga("customer.onboarding", SELO)

        async def ended() -> bool:
            found = await book.journal.get(saga_id)
            return found is not None and found[0].state == "compensated"

        await eventually(ended, DEADLINE)
    assert calls == [
        "bank.create",
        "mail.send",
        "post.send",
        "post.send",  # retry=1: tried twice
        "mail.apologize",
        "bank.close",
    ]

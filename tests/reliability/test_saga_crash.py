"""Sagas survive their coordinator being killed: every saga completes, no step runs twice.

Acceptance: "200 three-step sagas run by one `eventbook run` process on sqlite
(participants and coordinator together), SIGKILLed 3 times at random and restarted:
every saga completed, each step completed once in the journal, and no participant
handled a step twice except a handler that the kill itself interrupted (count
those and report them)".

A participant's effect is written before its answer is recorded under the step's
idempotency key; a kill between the two makes the re-sent command run again. Those
are the only duplicates allowed: the effect must be among the last lines the killed
process wrote (at most one per service, all three run at once).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest

from eventbook.store import store_from_url

from ._processes import EFFECTS_ENV, Consumer, Effects, load_app, wait_until

SAGAS = 200
STEPS = 3
KILLS = 3
SEED = 5
SERVICES = 3  # participants that may each be mid-step when the kill lands

APP = f"""
import os

import eventbook as eb


class Order(eb.Event):
    n: int


book = eb.EventBook("sagacrash")
ORDERS = book.topic("orders", Order)


def effect(step: str, order: Order) -> None:
    fd = os.open(os.environ[{EFFECTS_ENV!r}], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{{os.getpid()}} {{step}} {{order.n}}\\n".encode())
    finally:
        os.close(fd)


@book.service
class BankService:
    async def open_account(self, order: Order) -> dict:
        effect("bank", order)
        return {{"account": order.n}}


@book.service
class MailService:
    async def send(self, order: Order) -> None:
        effect("mail", order)


@book.service
class PostService:
    async def send(self, order: Order) -> None:
        effect("post", order)


@book.saga("onboarding", start_on=ORDERS)
async def onboard(saga: eb.Saga, order: Order) -> None:
    await saga.step(BankService.open_account, order)
    await saga.step(MailService.send, order)
    await saga.step(PostService.send, order)
"""


async def completed(url: str) -> int:
    """How many sagas the journal holds as completed, read as `eventbook sagas` would."""
    store = store_from_url(url)
    await store.open()
    try:
        return len(await store.list(["completed"], limit=10 * SAGAS))
    finally:
        await store.close()


@pytest.mark.slow
def test_sagas_survive_three_kills_of_their_coordinator(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    (tmp_path / "app.py").write_text(APP)
    effects_path = tmp_path / "effects.log"
    url = f"sqlite:///{tmp_path}/sagas.db?lease=1"
    app = load_app(tmp_path / "app.py")
    effects = Effects(effects_path)
    rng = random.Random(SEED)
    moments = sorted(rng.sample(range(60, SAGAS * STEPS - 60), KILLS))

    async def publish() -> None:
        async with app.book.start(url, services=[]):
            for n in range(SAGAS):
                await app.book.publish(app.ORDERS, app.Order(n=n))

    consumer = Consumer(tmp_path, "app:book", url, effects_path)
    killed: list[int] = []
    try:
        wait_until(consumer.started, 60, "the first coordinator to start")
        asyncio.run(publish())
        for moment in moments:
            wait_until(
                lambda m=moment: len(effects.refresh()) >= m,
                120,
                f"{moment} step effects before a kill",
                lambda: f"(have {len(effects.lines)})",
            )
            consumer.kill()
            killed.append(consumer.pid)
            consumer = Consumer(tmp_path, "app:book", url, effects_path)
        done = {(line[1], line[2]) for line in effects.lines}
        wait_until(
            lambda: len({(line[1], line[2]) for line in effects.refresh()}) == SAGAS * STEPS,
            180,
            "every step of every saga",
            lambda: f"(have {len({(line[1], line[2]) for line in effects.lines})})",
        )
        assert done  # the kills landed while steps were running
        # Every effect happened, but a saga whose coordinator was killed after its last
        # step ran is finished by the last coordinator once the dead one's lease lapses.
        wait_until(
            lambda: asyncio.run(completed(url)) == SAGAS,
            60,
            "every saga journaled completed",
            lambda: f"(have {asyncio.run(completed(url))})",
        )
        assert consumer.terminate() == 0
    finally:
        consumer.stop()

    async def journal() -> list[tuple[str, list[tuple[str, str]]]]:
        async with app.book.start(url, services=[]):
            out = []
            for record in await app.book.journal.list(limit=10 * SAGAS):
                found = await app.book.journal.get(record.id)
                assert found is not None
                out.append((found[0].state, [(s.name, s.status) for s in found[1]]))
            return out

    sagas = asyncio.run(journal())
    assert len(sagas) == SAGAS
    assert {state for state, _ in sagas} == {"completed"}
    for _, steps in sagas:
        assert steps == [
            ("BankService.open_account", "done"),
            ("MailService.send", "done"),
            ("PostService.send", "done"),
        ]

    lines = effects.refresh()
    counts = Counter((line[1], line[2]) for line in lines)
    duplicates = {key: count for key, count in counts.items() if count > 1}
    by_pid: dict[str, list[tuple[str, str]]] = {}
    for pid, step, n in lines:
        by_pid.setdefault(pid, []).append((step, n))
    for key in duplicates:
        first_pid = next(pid for pid, step, n in lines if (step, n) == key)
        assert int(first_pid) in killed, f"{key} ran twice, first in a process never killed"
        assert key in by_pid[first_pid][-SERVICES - 1 :], (
            f"{key} ran twice, though the killed process had finished it long before"
        )
    report = (
        f"sagas={SAGAS} steps={SAGAS * STEPS} kills={len(killed)} "
        f"participant_duplicates={sum(c - 1 for c in duplicates.values())} "
        f"effect_lines={len(lines)}"
    )
    print(report)
    record_property("saga_crash", report)

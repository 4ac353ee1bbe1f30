"""Several processes on one SQLite file: every service gets every event; replicas share.

Acceptance: "Three processes on one file, MailService once and BankService twice:
each service handles all events; the two BankService replicas share them".
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from ._processes import EFFECTS_ENV, Consumer, Effects, load_app, wait_until

EVENTS = 600

APP = f"""
import asyncio
import os
import time

import eventbook as eb


class Job(eb.Event):
    n: int


book = eb.EventBook("three")
JOBS = book.topic("jobs", Job)
EFFECTS = os.environ.get({EFFECTS_ENV!r}, "")


def open_effects() -> int:
    return os.open(EFFECTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def another_replica_handled(service: str) -> bool:
    mine = f"{{service}} {{os.getpid()}} "
    with open(EFFECTS) as f:
        return any(line.startswith(service + " ") and not line.startswith(mine) for line in f)


@book.service
class MailService:
    def __init__(self) -> None:
        self.fd = open_effects()

    @eb.sub(JOBS)
    async def send(self, job: Job) -> None:
        await asyncio.sleep(0)
        # One O_APPEND write per line: lines of several processes never interleave.
        os.write(self.fd, f"MailService {{os.getpid()}} {{job.n}}\\n".encode())


@book.service
class BankService:
    def __init__(self) -> None:
        self.fd = open_effects()
        self.shared = False

    @eb.sub(JOBS)
    async def book_it(self, job: Job) -> None:
        await asyncio.sleep(0)
        os.write(self.fd, f"BankService {{os.getpid()}} {{job.n}}\\n".encode())
        # After its first event, a replica waits (30 s at most) until another one has
        # handled an event: meanwhile the group's next events can only go to the
        # other replica, so that sharing does not depend on how the OS schedules them.
        deadline = time.monotonic() + 30
        while not self.shared and time.monotonic() < deadline:
            self.shared = another_replica_handled("BankService")
            await asyncio.sleep(0.005)
        self.shared = True
"""


@pytest.mark.slow
def test_each_service_handles_every_event_and_replicas_share_theirs(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    (tmp_path / "three_app.py").write_text(APP)
    app = load_app(tmp_path / "three_app.py")
    url = f"sqlite:///{tmp_path / 'three.db'}?prefetch=5"
    effects = Effects(tmp_path / "effects.txt")

    def run(service: str) -> Consumer:
        return Consumer(tmp_path, "three_app:book", url, effects.path, (service,))

    consumers: list[Consumer] = []
    try:
        consumers += [run("MailService"), run("BankService"), run("BankService")]
        for consumer in consumers:
            wait_until(consumer.started, 60, f"process {consumer.pid} to start")

        with app.book.start(url, services=[]):
            for n in range(EVENTS):
                app.book.emit(app.JOBS, app.Job(n=n))

        def done() -> bool:
            for consumer in consumers:
                consumer.alive()
            lines = effects.refresh()
            mail = sum(1 for line in lines if line[0] == "MailService")
            bank = {line[2] for line in lines if line[0] == "BankService"}
            return mail >= EVENTS and len(bank) >= EVENTS

        wait_until(done, 60, "MailService and BankService to handle every event")
        # SIGTERM drains and exits 0; once all have exited, the effects file is final.
        codes = [consumer.terminate() for consumer in consumers]
        assert codes == [0, 0, 0], [c.output() for c in consumers]
    finally:
        for consumer in consumers:
            consumer.stop()

    mail_pid, *bank_pids = (str(c.pid) for c in consumers)
    seen: dict[str, Counter[int]] = defaultdict(Counter)
    by_bank_pid: Counter[str] = Counter()
    for service, pid, n in effects.refresh():
        seen[service][int(n)] += 1
        if service == "BankService":
            by_bank_pid[pid] += 1
        else:
            assert pid == mail_pid
    print(
        f"\nevents={EVENTS} mail={sum(seen['MailService'].values())} "
        f"bank={sum(seen['BankService'].values())} "
        f"bank_per_replica={[by_bank_pid[p] for p in bank_pids]}"
    )
    for pid in bank_pids:
        record_property(f"bank_replica_{bank_pids.index(pid)}", by_bank_pid[pid])

    everything = set(range(EVENTS))
    assert set(seen["MailService"]) == everything
    assert [n for n, k in seen["MailService"].items() if k > 1] == []
    assert set(seen["BankService"]) == everything
    assert [n for n, k in seen["BankService"].items() if k > 1] == []
    assert set(by_bank_pid) == set(bank_pids)
    assert all(by_bank_pid[pid] >= 1 for pid in bank_pids), by_bank_pid

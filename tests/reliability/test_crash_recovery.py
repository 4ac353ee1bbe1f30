"""A consumer killed with SIGKILL while events flow loses none of them.

Acceptance: "A consumer process killed with SIGKILL 3 times at random while 3,000
events flow, then restarted: every event handled, 0 lost; duplicates counted and,
with the inbox, none from the window between handler and ack".

The only duplicates allowed are handlers the kill itself interrupted after their
effect and before their completion was committed: at most the last `concurrency`
(+1 for safety) effects of a killed process. An event whose completion was
recorded must never be handled again.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ._processes import EFFECTS_ENV, Consumer, Effects, load_app, wait_until

EVENTS = 3000
KILLS = 3
SEED = 20261203
CONCURRENCY = 1  # the handler's; eventbook's default
WINDOW = CONCURRENCY + 1  # effects of a killed process that may lack their committed ack

APP = f"""
import asyncio
import os

import eventbook as eb


class Work(eb.Event):
    n: int


book = eb.EventBook("crash")
WORK = book.topic("work", Work)


@book.service
class Worker:
    def __init__(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        self.fd = os.open(os.environ[{EFFECTS_ENV!r}], flags, 0o644)

    @eb.sub(WORK, concurrency={CONCURRENCY})
    async def handle(self, work: Work) -> None:
        await asyncio.sleep(0)  # a real window: the handler yields before its effect
        event = eb.current_event()
        assert event is not None
        # One write per line: lines never interleave, and SIGKILL cannot lose them.
        os.write(self.fd, f"{{os.getpid()}} end {{work.n}} {{event.id}}\\n".encode())
"""


class Publisher(threading.Thread):
    """Publishes events 0..EVENTS-1 from this process, which runs no service."""

    def __init__(self, book: Any, topic: Any, make: Callable[[int], Any], url: str) -> None:
        super().__init__(name="publisher", daemon=True)
        self.book, self.topic, self.make, self.url = book, topic, make, url
        self.published = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.book.start(self.url, services=[]):
                for n in range(EVENTS):
                    self.book.emit(self.topic, self.make(n))
                    self.published += 1
        except BaseException as exc:
            self.error = exc


@pytest.mark.slow
def test_sigkilled_consumer_loses_nothing_and_duplicates_only_what_the_kill_interrupted(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    (tmp_path / "crash_app.py").write_text(APP)
    app = load_app(tmp_path / "crash_app.py")
    url = f"sqlite:///{tmp_path / 'crash.db'}?lease=1"
    effects = Effects(tmp_path / "effects.txt")
    rng = random.Random(SEED)
    # Each consumer but the last is killed after it wrote this many effects lines.
    kill_after = [rng.randint(50, 600) for _ in range(KILLS)]

    def start() -> Consumer:
        return Consumer(tmp_path, "crash_app:book", url, effects.path)

    consumers = [start()]
    killed: set[str] = set()
    publisher = Publisher(app.book, app.WORK, lambda n: app.Work(n=n), url)
    try:
        wait_until(consumers[-1].started, 60, "the first consumer to start")
        publisher.start()
        for count in kill_after:
            current = consumers[-1]
            pid = str(current.pid)

            def wrote_enough(
                pid: str = pid, count: int = count, current: Consumer = current
            ) -> bool:
                current.alive()
                return sum(1 for line in effects.refresh() if line[0] == pid) >= count

            wait_until(wrote_enough, 60, f"consumer {pid} to handle {count} events")
            current.kill()
            killed.add(pid)
            consumers.append(start())

        def all_handled() -> bool:
            consumers[-1].alive()
            if publisher.error is not None:
                raise publisher.error
            return len({int(line[2]) for line in effects.refresh()}) >= EVENTS

        wait_until(all_handled, 60, f"every one of the {EVENTS} events to be handled")
        publisher.join(timeout=60)
        assert not publisher.is_alive()
        assert publisher.error is None, publisher.error
        assert publisher.published == EVENTS
        # The last consumer drains and exits 0 on SIGTERM; after that the file is final.
        last = consumers[-1]
        assert last.terminate() == 0, last.output()
    finally:
        for consumer in consumers:
            consumer.stop()
        publisher.join(timeout=60)

    lines = effects.refresh()
    assert all(len(line) == 4 and line[1] == "end" for line in lines), lines[:5]
    by_pid: dict[str, list[int]] = defaultdict(list)  # pid -> n, in the order written
    handled: dict[int, list[tuple[str, int]]] = defaultdict(list)  # n -> (pid, index in pid)
    ids: dict[int, set[str]] = defaultdict(set)
    for pid, _, n_text, event_id in lines:
        n = int(n_text)
        handled[n].append((pid, len(by_pid[pid])))
        by_pid[pid].append(n)
        ids[n].add(event_id)

    lost = sorted(set(range(EVENTS)) - set(handled))
    duplicates = {n: where for n, where in handled.items() if len(where) > 1}
    print(
        f"\nevents={EVENTS} kills={len(killed)} duplicates={len(duplicates)} "
        f"lost={len(lost)} effects_lines={len(lines)} kill_after={kill_after} "
        f"per_process={[len(by_pid[str(c.pid)]) for c in consumers]}"
    )
    record_property("events", EVENTS)
    record_property("kills", len(killed))
    record_property("duplicates", len(duplicates))
    record_property("lost", len(lost))

    assert len(killed) == KILLS
    assert lost == [], f"{len(lost)} events lost, first {lost[:10]}"
    assert set(handled) == set(range(EVENTS)), "an effect names an event never published"
    assert all(len(event_ids) == 1 for event_ids in ids.values()), "one event, one id"
    not_from_a_kill = {}
    for n, where in duplicates.items():
        pid, index = where[0]
        if pid not in killed or index < len(by_pid[pid]) - WINDOW:
            not_from_a_kill[n] = [
                (p, i, len(by_pid[p]), "killed" if p in killed else "alive") for p, i in where
            ]
    assert not not_from_a_kill, (
        "events handled again although their first handling was not cut short by a kill "
        f"(n: [(pid, index of the line in that pid's lines, its line count, fate)]): "
        f"{dict(list(not_from_a_kill.items())[:10])}"
    )
    for pid in killed:
        assert sum(1 for where in duplicates.values() if where[0][0] == pid) <= WINDOW

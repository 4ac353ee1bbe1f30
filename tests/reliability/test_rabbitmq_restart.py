"""RabbitMQ SIGKILLed and restarted while events flow: every confirmed event is handled.

The test starts a RabbitMQ node of its own (free ports, its data in tmp_path), so
the machine's shared server is left alone, kills it hard (SIGKILL, the whole
process group) while publishers and a consumer are busy, and starts it again on
the same data. Quorum queues append every message to their Raft log and fsync it
before the publisher confirm, so a confirmed event survives SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

import eventbook as eb
from eventbook.errors import BrokerError
from eventbook.testing import eventually
from tests.conftest import IN_CI

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

#: The server script itself: /usr/sbin/rabbitmq-server switches to the rabbitmq user,
#: who could not write to tmp_path.
SCRIPT = "/usr/lib/rabbitmq/bin/rabbitmq-server"
BOOT = 90.0  # seconds a node may take to answer (about 7 s here)
PUBLISHERS = 4


class Tick(eb.Event):
    n: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Node:
    """A RabbitMQ node of this test's own; its data stays in `folder` across restarts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        dist = free_port()
        while dist == self.port:
            dist = free_port()
        for sub in ("home", "mnesia", "log"):
            (folder / sub).mkdir()
        (folder / "enabled_plugins").write_text("[].\n")
        (folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (folder / "rabbitmq-env.conf").write_text("")
        self.env = {
            **os.environ,
            "HOME": str(folder / "home"),  # its Erlang cookie
            "RABBITMQ_NODENAME": f"eb-test-{uuid.uuid4().hex[:8]}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
            "RABBITMQ_PID_FILE": str(folder / "rabbitmq.pid"),
        }
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/?publish_timeout=90&reconnect=0.5"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with (self.folder / f"server-{self.starts}.log").open("wb") as out:
            # Its own session: the kill takes the script, the VM and its helpers at once.
            self.proc = subprocess.Popen(
                [SCRIPT], env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def answering(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.folder / f"server-{self.starts}.log").read_text(errors="replace")
            raise AssertionError(f"RabbitMQ exited with {self.proc.returncode}:\n{log[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def registered(self, queue: str) -> bool:
        """True once the node's quorum-queue registry on disk has `queue`."""
        registries = list(self.folder.glob("mnesia/*/quorum/*/names.dets"))
        assert registries, f"no quorum-queue registry under {self.folder / 'mnesia'}"
        return all(f"_{queue}".encode() in path.read_bytes() for path in registries)

    def diagnosis(self) -> str:
        """The end of the node's own log, to say why a failed run failed."""
        logs = sorted((self.folder / "log").glob("*.log"))
        servers = sorted(p.name for p in self.folder.glob("mnesia/*/quorum/*/*") if p.is_dir())
        tails = [f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in logs]
        return "\n".join([f"quorum servers on disk: {servers}", *tails])

    def kill(self) -> None:
        """SIGKILL the node's whole process group, and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def node(tmp_path: Path) -> Node:
    if not os.access(SCRIPT, os.X_OK) or shutil.which("erl") is None:
        message = f"RabbitMQ is not installed here ({SCRIPT})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return Node(tmp_path)


async def test_a_killed_and_restarted_server_loses_no_confirmed_event(node: Node) -> None:
    book = eb.EventBook(f"restart-{uuid.uuid4().hex[:8]}")
    ticks = book.topic("ticks", Tick)
    handled: list[int] = []
    confirmed: set[int] = set()
    refused: list[str] = []
    numbers = iter(range(1_000_000))
    flowing = True

    @book.service
    class Counter:
        @eb.sub(ticks)
        async def count(self, tick: Tick) -> None:
            handled.append(tick.n)

    async def publish() -> None:
        while flowing:
            n = next(numbers)
            try:
                await book.publish(ticks, Tick(n=n))
            except BrokerError as exc:  # not confirmed: not counted
                refused.append(str(exc))
            else:
                confirmed.add(n)

    try:
        node.start()
        await eventually(node.answering, BOOT, interval=0.1)
        async with book.start(node.url, drain_timeout=10):
            publishers = [asyncio.create_task(publish()) for _ in range(PUBLISHERS)]
            try:
                await eventually(lambda: len(set(handled)) >= 300, 60)
                # RabbitMQ before 3.13 (Ra before rabbitmq/ra#443) writes which quorum
                # queues a node has to disk every 500 ms: one created just before a
                # hard kill is forgotten with its messages. Kill once it is written.
                queues = [f"{book.name}.Counter.count", f"{book.name}.dead-letters"]
                await eventually(lambda: all(map(node.registered, queues)), 30)
                node.kill()  # mid-flow: publishes await their confirms, handlers run
                killed_at = len(confirmed)
                node.start()
                await eventually(node.answering, BOOT, interval=0.1)
                # Reconnected: publishing and consuming go on.
                await eventually(lambda: len(confirmed) >= killed_at + 300, 60)
            finally:
                flowing = False
                await asyncio.gather(*publishers)
            await eventually(lambda: confirmed <= set(handled), 60)
        lost = confirmed - set(handled)
        duplicates = len(handled) - len(set(handled))
        print(
            f"confirmed={len(confirmed)} at_kill={killed_at} handled={len(set(handled))} "
            f"duplicates={duplicates} refused={len(refused)} lost={len(lost)}"
        )
        assert not lost
        assert not refused, refused[:3]
    except BaseException:
        print(node.diagnosis())
        raise
    finally:
        node.kill()

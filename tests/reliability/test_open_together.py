"""Processes that open one new SQLite file at the same moment all start.

Replicas of a deployment start together (the three-process test does too): the
first to open a new file turns on WAL mode and creates the tables while the
others open it. None may fail because another one holds the file's lock for a
moment; waiting for that lock is the broker's job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ._processes import wait_until

PROCESSES = 8
ROUNDS = 6  # a new file each round

OPENER = """
import asyncio
import os
import sys
from pathlib import Path

import eventbook as eb

url, ready, go = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
book = eb.EventBook("together")


async def main() -> None:
    ready.touch()
    os.read(go, 1)  # blocks until the test closes the pipe: all processes wake at once
    async with book.start(url):
        pass


asyncio.run(main())
"""


def open_together(directory: Path) -> list[str]:
    """Start PROCESSES processes that open one new file at once; return their failures."""
    directory.mkdir()
    (directory / "opener.py").write_text(OPENER)
    url = f"sqlite:///{directory / 'new.db'}"
    go, release = os.pipe()
    procs: list[subprocess.Popen[str]] = []
    try:
        for i in range(PROCESSES):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "opener.py", url, f"ready-{i}", str(go)],
                    pass_fds=(go,),
                    cwd=directory,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        wait_until(
            lambda: all((directory / f"ready-{i}").exists() for i in range(PROCESSES)),
            60,
            "every process to be ready",
        )
        os.close(release)
        release = -1
        outputs = [proc.communicate(timeout=60)[0] for proc in procs]
    finally:
        os.close(go)
        if release != -1:
            os.close(release)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    return [
        (out.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        for proc, out in zip(procs, outputs, strict=True)
        if proc.returncode != 0
    ]


@pytest.mark.slow
def test_processes_opening_a_new_file_together_all_start(tmp_path: Path) -> None:
    for round_ in range(ROUNDS):
        failed = open_together(tmp_path / f"round-{round_}")
        assert failed == [], (
            f"round {round_}: {len(failed)} of {PROCESSES} processes could not start: {failed}"
        )

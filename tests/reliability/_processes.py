"""Helpers for the reliability tests: `eventbook run` subprocesses and their effects files.

Nothing here sleeps to synchronise: waits poll a condition until a deadline.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

#: The environment variable through which an app module learns its effects file.
EFFECTS_ENV = "EVENTBOOK_TEST_EFFECTS"

#: How often a wait re-checks its condition (a poll interval, not a synchronisation).
POLL = 0.002


def load_app(path: Path) -> ModuleType:
    """Import the app module at `path` in this process (not added to sys.modules)."""
    spec = importlib.util.spec_from_file_location(f"_reliability_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    detail: Callable[[], str] = lambda: "",
) -> None:
    """Return as soon as `condition()` is true; fail after `timeout` seconds.

    `detail()` is added to the failure message, to say how far things got.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout:g}s for {what} {detail()}")
        time.sleep(POLL)


class Consumer:
    """One `python -m eventbook run` subprocess, its output kept in a log file."""

    def __init__(
        self, cwd: Path, target: str, broker: str, effects: Path, services: tuple[str, ...] = ()
    ) -> None:
        self.cwd = cwd
        self.log = cwd / f"run-{time.monotonic_ns()}.log"
        args = [sys.executable, "-m", "eventbook", "run", target, "--broker", broker]
        for service in services:
            args += ["--service", service]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                args,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, EFFECTS_ENV: str(effects), "COLUMNS": "200"},
            )
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        """True while the process runs; a process that died on its own fails the test."""
        if self.proc.poll() is None:
            return True
        raise AssertionError(
            f"eventbook run (pid {self.pid}) exited with {self.proc.returncode}:\n{self.output()}"
        )

    def started(self) -> bool:
        return self.alive() and "started on" in self.output()

    def kill(self) -> None:
        """SIGKILL, and reap: when this returns, the process is gone."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, wait for the drain, and return the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Make sure the process is gone, whatever state it is in (for `finally`)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


class Effects:
    """An effects file that handlers append whole lines to; read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[list[str]] = []
        self._offset = 0
        self._partial = b""

    def refresh(self) -> list[list[str]]:
        """Read what was appended since the last call; return every complete line so far."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.lines
        self._offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        self.lines.extend(line.decode().split() for line in complete)
        return self.lines

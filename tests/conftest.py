"""Shared fixtures. Broker fixtures skip on a laptop without the server, but fail in CI."""

from __future__ import annotations

import os

import pytest

import eventbook as eb

IN_CI = bool(os.environ.get("CI"))


class Customer(eb.Event):
    name: str
    address: str
    email: str


SELO = Customer(name="SELO", address="Seoul, Korea", email="rochan87@gmail.com")


@pytest.fixture(autouse=True)
def _no_ambient_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their broker; a developer's EVENTBOOK_BROKER must not leak in."""
    monkeypatch.delenv("EVENTBOOK_BROKER", raising=False)


def server(name: str, port: int, host: str = "127.0.0.1") -> None:
    """Skip the test when `name` does not answer on `port` here; fail instead in CI.

    On a laptop without the server, its tests skip; in CI (`CI` set) a missing
    server is a failure, never a silent skip.
    """
    import socket

    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        message = f"{name} is not answering on {host}:{port} ({exc}); `make test` starts it"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)

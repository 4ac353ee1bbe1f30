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

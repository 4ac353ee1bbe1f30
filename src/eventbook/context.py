"""The event being handled, carried by context so that what a handler publishes joins it."""

from __future__ import annotations

from contextvars import ContextVar

from .envelope import Envelope

_current: ContextVar[Envelope | None] = ContextVar("eventbook_current_event", default=None)


def current_event() -> Envelope | None:
    """Return the envelope of the event being handled here, or None outside a handler."""
    return _current.get()

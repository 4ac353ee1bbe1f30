"""Topics: a named channel of one book, carrying payloads of one type."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import ConfigurationError
from .event import PayloadType

if TYPE_CHECKING:
    from .book import EventBook

T = TypeVar("T")

# Dot-separated words: valid as a NATS subject, a Redis key and an AMQP routing key.
_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def check_name(kind: str, name: str) -> str:
    """Return `name` if it is a valid book or topic name, else raise ConfigurationError."""
    if not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"invalid {kind} name {name!r}: use letters, digits, '_' and '-', "
            "in words separated by '.' (like 'customer.signup')"
        )
    return name


class Topic(Generic[T]):
    """A named stream of events of type `T`; made by `EventBook.topic`.

    Attributes:
        name: the topic's name, also the CloudEvents `type` of its events.
        type: the payload type.
        reply: the type a handler's answer to `EventBook.request` is read as, if any.
    """

    __slots__ = ("book", "name", "payload", "reply", "reply_payload", "type")

    def __init__(self, book: EventBook, name: str, tp: type[T], reply: Any = None) -> None:
        self.book = book
        self.name = name
        self.type = tp
        self.payload: PayloadType[T] = PayloadType(name, tp)
        self.reply = reply
        self.reply_payload: PayloadType[Any] | None = (
            PayloadType(f"{name} (reply)", reply) if reply is not None else None
        )

    def __repr__(self) -> str:
        return f"Topic({self.name!r}, {getattr(self.type, '__name__', self.type)})"

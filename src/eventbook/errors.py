"""eventbook's own exceptions: each says what went wrong and what to do about it."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


class EventbookError(Exception):
    """Base class of every error eventbook raises on purpose."""


class ConfigurationError(EventbookError):
    """The book, a service or a handler is declared in a way that cannot work."""


class HandlerSignatureError(ConfigurationError):
    """A handler's parameters do not fit the topic it subscribes to."""


class UnknownBrokerError(ConfigurationError):
    """A broker URL names a scheme eventbook does not know."""


class NotRunningError(EventbookError):
    """The book is used as if it were running, but it is not (or not here)."""


class PayloadError(EventbookError):
    """A payload does not match its topic's type.

    Attributes:
        topic: the topic's name.
        field: the dotted path of the first failing field ("" for the whole payload).
    """

    def __init__(self, topic: str, field: str, reason: str) -> None:
        self.topic = topic
        self.field = field
        self.reason = reason
        where = f"field {field!r}" if field else "payload"
        super().__init__(f"invalid payload for topic {topic!r}: {where}: {reason}")


class PayloadTooLargeError(EventbookError):
    """An encoded event is larger than the broker accepts."""


class DecodeError(EventbookError):
    """Bytes received from a broker are not a CloudEvent eventbook can read."""


class BrokerError(EventbookError):
    """The broker refused an operation or could not be reached."""


class StoreError(EventbookError):
    """A store (saga journal) refused an operation or could not be reached."""


class RequestTimeoutError(EventbookError, TimeoutError):
    """Nobody answered a request before its timeout."""


class RequestFailedError(EventbookError):
    """The handler that answers a request failed for good (it was dead-lettered)."""


def redact(url: str) -> str:
    """Return `url` with its password replaced by `***`, safe to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

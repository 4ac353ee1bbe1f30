"""What an `amqp://` URL says: the server, and eventbook's own parameters."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...errors import ConfigurationError, redact

#: eventbook's parameters; removed from the URL before it reaches the client library.
_OWN = {"prefetch", "publish_timeout", "connect_timeout", "reconnect", "delivery_limit"}
#: The client library's own parameters that are passed through untouched.
_PASSED = {"heartbeat", "name"}


@dataclass(frozen=True, slots=True)
class RabbitSettings:
    """The broker's settings; see `eventbook.brokers.rabbitmq` for what each one does."""

    #: The URL handed to the client: server, credentials, vhost, heartbeat, name.
    server: str
    prefetch: int = 20
    publish_timeout: float = 30.0
    connect_timeout: float = 5.0
    reconnect: float = 1.0
    delivery_limit: int = 100

    @classmethod
    def from_url(cls, url: str) -> RabbitSettings:
        """Parse `amqp://user:password@host:5672/vhost?parameter=value&...`.

        Raises:
            ConfigurationError: a parameter that is unknown or out of range.
        """
        parts = urlsplit(url)
        if parts.scheme != "amqp":
            raise ConfigurationError(f"expected an amqp:// URL, got {redact(url)!r}")
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        unknown = sorted({k for k, _ in pairs} - _OWN - _PASSED)
        if unknown:
            raise ConfigurationError(
                f"unknown amqp:// parameter(s) {', '.join(unknown)} in {redact(url)!r}; "
                f"known: {', '.join(sorted(_OWN | _PASSED))}"
            )
        own = {k: v for k, v in pairs if k in _OWN}
        passed = [(k, v) for k, v in pairs if k in _PASSED]
        server = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(passed), ""))
        try:
            settings = cls(
                server=server,
                prefetch=int(own.get("prefetch", 20)),
                publish_timeout=float(own.get("publish_timeout", 30.0)),
                connect_timeout=float(own.get("connect_timeout", 5.0)),
                reconnect=float(own.get("reconnect", 1.0)),
                delivery_limit=int(own.get("delivery_limit", 100)),
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad amqp:// parameter in {redact(url)!r}: {exc}") from None
        if settings.prefetch < 0 or settings.delivery_limit < 1:
            raise ConfigurationError("amqp:// needs prefetch >= 0 and delivery_limit >= 1")
        if min(settings.publish_timeout, settings.connect_timeout, settings.reconnect) <= 0:
            raise ConfigurationError(
                "amqp:// needs publish_timeout, connect_timeout and reconnect > 0 (seconds)"
            )
        return settings

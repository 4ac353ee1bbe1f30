"""What a `nats://` URL says."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit, urlunsplit

from ...errors import ConfigurationError, redact

_PARAMETERS = {
    "ack_wait",
    "prefetch",
    "max_ack_pending",
    "publish_timeout",
    "connect_timeout",
    "duplicate_window",
    "replicas",
}


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """The broker's settings; see `eventbook.brokers.nats` for what each one does."""

    #: The server URL handed to the client: scheme, credentials, host and port.
    server: str
    ack_wait: float = 30.0
    prefetch: int = 100
    max_ack_pending: int = 10_000
    publish_timeout: float = 30.0
    connect_timeout: float = 3.0
    duplicate_window: float = 120.0
    replicas: int = 1

    @classmethod
    def from_url(cls, url: str) -> NatsSettings:
        """Parse `nats://[user:password@]host[:port][?parameter=value&...]`.

        Raises:
            ConfigurationError: no host, or a parameter that is unknown or out of range.
        """
        shown = redact(url)
        parts = urlsplit(url)
        if not parts.hostname or parts.path not in ("", "/"):
            raise ConfigurationError(
                f"expected nats://[user:password@]host[:port][?parameters], got {shown!r}"
            )
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            raise ConfigurationError(f"bad port in the NATS URL {shown!r}") from None
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(params) - _PARAMETERS
        if unknown:
            raise ConfigurationError(
                f"unknown nats:// parameter(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(_PARAMETERS))}"
            )
        try:
            settings = cls(
                server=urlunsplit((parts.scheme, parts.netloc, "", "", "")),
                ack_wait=float(params.get("ack_wait", 30.0)),
                prefetch=int(params.get("prefetch", 100)),
                max_ack_pending=int(params.get("max_ack_pending", 10_000)),
                publish_timeout=float(params.get("publish_timeout", 30.0)),
                connect_timeout=float(params.get("connect_timeout", 3.0)),
                duplicate_window=float(params.get("duplicate_window", 120.0)),
                replicas=int(params.get("replicas", 1)),
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad nats:// parameter in {shown!r}: {exc}") from None
        if settings.ack_wait < 0.5:
            raise ConfigurationError("nats:// needs ack_wait >= 0.5 (seconds)")
        if not 1 <= settings.prefetch <= 256:
            raise ConfigurationError("nats:// prefetch is between 1 and 256 events")
        if settings.max_ack_pending < 1:
            raise ConfigurationError("nats:// needs max_ack_pending >= 1")
        if settings.publish_timeout <= 0 or settings.connect_timeout <= 0:
            raise ConfigurationError("nats:// needs publish_timeout > 0 and connect_timeout > 0")
        if settings.duplicate_window <= settings.publish_timeout:
            # A publish re-sent after a lost confirm must still be recognised as a duplicate.
            raise ConfigurationError(
                "nats:// needs duplicate_window > publish_timeout, so that the server drops "
                "a publish re-sent after a lost confirm"
            )
        if not 1 <= settings.replicas <= 5:
            raise ConfigurationError("nats:// replicas is between 1 and 5")
        return settings

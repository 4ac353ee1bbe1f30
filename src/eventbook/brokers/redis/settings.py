"""What a `redis://` URL says, and the names of the keys a book uses on the server."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit, urlunsplit

from ...errors import ConfigurationError, redact

_PARAMETERS = {"lease", "prefetch", "dedupe", "publish_timeout", "connect_timeout", "trim"}


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """The broker's settings; see `eventbook.brokers.redis` for what each one does."""

    #: The server's URL as redis-py reads it: eventbook's parameters taken out.
    server: str
    lease: float = 30.0
    prefetch: int = 100
    dedupe: float = 120.0
    publish_timeout: float = 30.0
    connect_timeout: float = 5.0
    trim: float = 10.0

    @classmethod
    def from_url(cls, url: str) -> RedisSettings:
        """Parse `redis://[[user]:password@]host[:port][/db][?parameters]`.

        Raises:
            ConfigurationError: no host, a bad database number, or a parameter that is
                unknown or out of range.
        """
        parts = urlsplit(url)
        shown = redact(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ConfigurationError(f"expected redis://host:6379/0, got {shown!r}")
        db = parts.path.strip("/") or "0"
        if not db.isdigit():
            raise ConfigurationError(f"the database in {shown!r} must be a number, like /0")
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = set(params) - _PARAMETERS
        if unknown:
            raise ConfigurationError(
                f"unknown redis:// parameter(s) {', '.join(sorted(unknown))} in {shown!r}; "
                f"known: {', '.join(sorted(_PARAMETERS))}"
            )
        server = urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))
        try:
            settings = cls(
                server=server,
                lease=float(params.get("lease", 30.0)),
                prefetch=int(params.get("prefetch", 100)),
                dedupe=float(params.get("dedupe", 120.0)),
                publish_timeout=float(params.get("publish_timeout", 30.0)),
                connect_timeout=float(params.get("connect_timeout", 5.0)),
                trim=float(params.get("trim", 10.0)),
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad redis:// parameter in {shown!r}: {exc}") from None
        if settings.lease <= 0 or settings.prefetch < 1 or settings.trim <= 0:
            raise ConfigurationError("redis:// needs lease > 0, trim > 0 and prefetch >= 1")
        if settings.publish_timeout <= 0 or settings.connect_timeout <= 0:
            raise ConfigurationError("redis:// needs publish_timeout > 0 and connect_timeout > 0")
        if settings.dedupe and settings.dedupe < settings.publish_timeout:
            raise ConfigurationError(
                "redis:// dedupe must be 0 (off) or at least publish_timeout: a publish is "
                "re-sent for up to publish_timeout seconds, and each re-send must be recognised"
            )
        return settings


class Keys:
    """The keys of one book on the server (the book's name is their prefix).

    Streams are `<book>.<topic>` (topics are dot-separated words); eventbook's own
    keys are `<book>:...`, which no topic's stream can be.
    """

    __slots__ = ("dead", "prefix")

    def __init__(self, book: str) -> None:
        self.prefix = book
        self.dead = f"{book}:dead"

    def stream(self, topic: str) -> str:
        return f"{self.prefix}.{topic}"

    def retries(self, topic: str, group: str) -> str:
        """The sorted set of a group's events waiting for a retry, scored by due time."""
        return f"{self.prefix}:retry:{topic}:{group}"

    def dedupe(self, event_id: str) -> str:
        return f"{self.prefix}:dedupe:{event_id}"

"""What a `sqlite://` URL says."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from ...errors import ConfigurationError

_PARAMETERS = {"durability", "lease", "retention", "prefetch", "poll"}


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    """The broker's settings; see `eventbook.brokers.sqlite` for what each one does."""

    path: str
    durability: str = "normal"
    lease: float = 30.0
    retention: float = 3600.0
    prefetch: int = 100
    poll: float = 0.005

    @classmethod
    def from_url(cls, url: str) -> SqliteSettings:
        """Parse `sqlite:///relative.db` or `sqlite:////absolute/path.db` with parameters.

        Raises:
            ConfigurationError: no path, or a parameter that is unknown or out of range.
        """
        parts = urlsplit(url)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc or not path:
            raise ConfigurationError(
                f"expected sqlite:///relative/path.db or sqlite:////absolute/path.db, got {url!r}"
            )
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(params) - _PARAMETERS
        if unknown:
            raise ConfigurationError(
                f"unknown sqlite:// parameter(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(_PARAMETERS))}"
            )
        try:
            settings = cls(
                path=path,
                durability=params.get("durability", "normal"),
                lease=float(params.get("lease", 30.0)),
                retention=float(params.get("retention", 3600.0)),
                prefetch=int(params.get("prefetch", 100)),
                poll=float(params.get("poll", 0.005)),
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad sqlite:// parameter in {url!r}: {exc}") from None
        if settings.durability not in ("normal", "full"):
            raise ConfigurationError("sqlite:// durability is 'normal' or 'full'")
        if settings.lease <= 0 or settings.prefetch < 1 or settings.poll <= 0:
            raise ConfigurationError("sqlite:// needs lease > 0, poll > 0 and prefetch >= 1")
        return settings

"""The CloudEvents 1.0 envelope every event travels in, and its JSON codec.

Structured-mode JSON only (`application/cloudevents+json`), never pickle: any
CloudEvents SDK or raw broker client can read and write eventbook's events.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import UTC, datetime
from time import time_ns as _time_ns
from typing import Any

from pydantic_core import from_json

from . import ids
from .errors import DecodeError

SPECVERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"
DATA_CONTENT_TYPE = "application/json"

# Attributes eventbook reads itself; anything else a producer sets is carried along.
_KNOWN = frozenset(
    {
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "datacontenttype",
        "data",
        "correlationid",
        "causationid",
        "replyto",
        "traceparent",
    }
)


class Envelope:
    """One event: its CloudEvents attributes and its payload (`data`).

    `correlationid` ties every event of one business transaction together (a root
    event is its own correlation); `causationid` is the id of the event whose
    handler published this one.
    """

    __slots__ = (
        "_correlationid",
        "_id",
        "_ms",
        "_seq",
        "_time",
        "causationid",
        "data",
        "extensions",
        "replyto",
        "source",
        "traceparent",
        "type",
    )

    def __init__(self, type: str, data: Any, source: str, parent: Envelope | None = None) -> None:
        """A new event; published while `parent` is handled, it joins its correlation."""
        self.type = type
        self.data = data
        self.source = source
        self._id: str | None = None
        self._time: str | None = None
        self._ms = _time_ns() // 1_000_000
        self._seq = ids.next_sequence()
        self.replyto: str | None = None
        self.extensions: dict[str, Any] | None = None
        if parent is None:
            self._correlationid: str | None = None
            self.causationid: str | None = None
            self.traceparent: str | None = None
        else:
            self._correlationid = parent.correlationid
            self.causationid = parent.id
            self.traceparent = parent.traceparent

    @classmethod
    def received(
        cls,
        type: str,
        data: Any,
        source: str,
        id: str,
        *,
        time: str | None = None,
        correlationid: str | None = None,
        causationid: str | None = None,
        replyto: str | None = None,
        traceparent: str | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> Envelope:
        """An event read from elsewhere, with the attributes its producer gave it."""
        envelope = cls.__new__(cls)
        envelope.type = type
        envelope.data = data
        envelope.source = source
        envelope._id = id
        envelope._time = time
        envelope._ms = envelope._seq = 0
        envelope._correlationid = correlationid
        envelope.causationid = causationid
        envelope.replyto = replyto
        envelope.traceparent = traceparent
        envelope.extensions = extensions
        return envelope

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = ids.render(self._ms, self._seq)
        return self._id

    @property
    def time(self) -> str | None:
        if self._time is None and self._ms:
            self._time = _rfc3339(self._ms)
        return self._time

    @property
    def correlationid(self) -> str:
        return self._correlationid or self.id

    def attributes(self) -> dict[str, Any]:
        """Return the CloudEvents attributes (everything but `data`)."""
        attrs: dict[str, Any] = {
            "specversion": SPECVERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "datacontenttype": DATA_CONTENT_TYPE,
            "correlationid": self.correlationid,
        }
        if self.time is not None:
            attrs["time"] = self.time
        if self.causationid is not None:
            attrs["causationid"] = self.causationid
        if self.replyto is not None:
            attrs["replyto"] = self.replyto
        if self.traceparent is not None:
            attrs["traceparent"] = self.traceparent
        if self.extensions:
            attrs.update(self.extensions)
        return attrs

    def __repr__(self) -> str:
        return f"Envelope(type={self.type!r}, id={self.id!r}, source={self.source!r})"


def encode(envelope: Envelope, data_json: bytes) -> bytes:
    """Return the structured-mode JSON of `envelope`, its data already encoded as JSON.

    Written by hand rather than with `json.dumps(attributes())`: it runs once per
    event published, and the attributes are a handful of short, mostly constant strings.
    """
    event_id = envelope.id
    correlation = envelope._correlationid
    # An id and time eventbook made itself need no escaping; others might.
    own = envelope._ms != 0
    parts = [
        '{"specversion":"1.0","id":',
        f'"{event_id}"' if own else _quote(event_id),
        ',"source":',
        _quote_cached(envelope.source),
        ',"type":',
        _quote_cached(envelope.type),
        ',"datacontenttype":"application/json","correlationid":',
        f'"{event_id}"' if own and correlation is None else _quote(correlation or event_id),
    ]
    if envelope.time is not None:
        parts += (',"time":', f'"{envelope.time}"' if own else _quote(envelope.time))
    for name in ("causationid", "replyto", "traceparent"):
        value = getattr(envelope, name)
        if value is not None:
            parts += (f',"{name}":', _quote(value))
    if envelope.extensions:
        for name, value in envelope.extensions.items():
            parts += (",", json.dumps(name), ":", json.dumps(value, separators=(",", ":")))
    parts.append(',"data":')
    return "".join(parts).encode() + data_json + b"}"


# Strings that need no escaping in JSON: ids, times, and eventbook's own names.
_PLAIN = re.compile(r"[A-Za-z0-9 ._:/@+=-]*")


def _quote(text: str) -> str:
    return f'"{text}"' if _PLAIN.fullmatch(text) else json.dumps(text)


@functools.lru_cache(maxsize=1024)
def _quote_cached(text: str) -> str:
    return json.dumps(text)


_last_time: tuple[int, str] = (0, "")


def _rfc3339(ms: int) -> str:
    """`ms` since the epoch as RFC 3339 UTC text; events of one millisecond share it."""
    global _last_time
    if _last_time[0] != ms:
        when = datetime.fromtimestamp(ms / 1000, UTC)
        _last_time = (ms, when.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    return _last_time[1]


def decode(body: bytes | str) -> Envelope:
    """Parse a structured-mode CloudEvent; `data` is left as plain JSON values.

    Raises:
        DecodeError: the body is not JSON, not a CloudEvents 1.0 object, or lacks
            a required attribute.
    """
    try:
        obj = from_json(body)
    except ValueError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError("not a CloudEvent: the JSON is not an object")
    if obj.get("specversion") != SPECVERSION:
        raise DecodeError(f"unsupported specversion {obj.get('specversion')!r} (expected '1.0')")
    for name in ("id", "source", "type"):
        if not isinstance(obj.get(name), str) or not obj[name]:
            raise DecodeError(f"not a CloudEvent: attribute {name!r} is missing or not a string")
    content_type = obj.get("datacontenttype", DATA_CONTENT_TYPE)
    if "data_base64" in obj or not str(content_type).endswith("json"):
        raise DecodeError(f"unsupported datacontenttype {content_type!r} (JSON only)")
    extensions = {k: v for k, v in obj.items() if k not in _KNOWN} or None
    return Envelope.received(
        obj["type"],
        obj.get("data"),
        obj["source"],
        obj["id"],
        time=obj.get("time"),
        correlationid=_text(obj, "correlationid"),
        causationid=_text(obj, "causationid"),
        replyto=_text(obj, "replyto"),
        traceparent=_text(obj, "traceparent"),
        extensions=extensions,
    )


def _text(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    return value if isinstance(value, str) else None

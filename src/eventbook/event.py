"""The `Event` base class and the adapter that validates and serialises a topic's payloads."""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import Any, Generic, TypeVar, cast

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from .errors import PayloadError

T = TypeVar("T")


class Event(BaseModel):
    """Base class for typed events: a pydantic v2 model.

    Events are facts, so they are frozen: every subscriber of an in-process broker
    receives the same instance, and none can change what the others see. Unknown
    fields are ignored, so a producer may add a field before its consumers know it.
    """

    model_config = ConfigDict(frozen=True)


class PayloadType(Generic[T]):
    """Validates, serialises and describes the payloads of one topic."""

    __slots__ = ("_adapter", "_exact", "topic", "type")

    def __init__(self, topic: str, tp: type[T]) -> None:
        self.topic = topic
        self.type = tp
        # The common case, an instance of exactly the declared model, was validated
        # when it was built; checking its class is all publishing it needs.
        self._exact: type[Any] | None = tp if isinstance(tp, type) else None
        self._adapter: TypeAdapter[T] | None = None

    @property
    def adapter(self) -> TypeAdapter[T]:
        if self._adapter is None:
            self._adapter = adapter_for(cast(Hashable, self.type))
        return self._adapter

    def validate(self, value: Any) -> T:
        """Return `value` as the topic's type.

        Raises:
            PayloadError: naming the topic and the first failing field.
        """
        if type(value) is self._exact:
            return value  # type: ignore[no-any-return]
        try:
            return self.adapter.validate_python(value)
        except ValidationError as exc:
            raise _payload_error(self.topic, exc) from None

    def dump(self, value: T) -> Any:
        """Return `value` as plain JSON-compatible Python data."""
        return self.adapter.dump_python(value, mode="json")

    def json_schema(self) -> dict[str, Any]:
        """Return the JSON Schema of the topic's payload."""
        return self.adapter.json_schema()


@functools.lru_cache(maxsize=4096)
def adapter_for(tp: Any) -> TypeAdapter[Any]:
    """One pydantic TypeAdapter per type: building one costs far more than using it."""
    return TypeAdapter(tp)


def _payload_error(topic: str, exc: ValidationError) -> PayloadError:
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first.get("loc", ()))
    return PayloadError(topic, field, first.get("msg", "invalid value"))

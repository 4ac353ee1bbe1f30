"""Broker adapters, chosen by URL scheme; each imports its driver only when used."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from ..errors import ConfigurationError, UnknownBrokerError, redact
from .base import Broker, DeadLetter, Deliver, Message

__all__ = ["Broker", "DeadLetter", "Deliver", "Message", "from_url", "schemes"]

# scheme -> (module, class, pip extra that brings its driver)
_ADAPTERS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("eventbook.brokers.memory", "MemoryBroker", None),
    "sqlite": ("eventbook.brokers.sqlite", "SqliteBroker", None),
    "nats": ("eventbook.brokers.nats", "NatsBroker", "nats"),
    "redis": ("eventbook.brokers.redis", "RedisBroker", "redis"),
    "amqp": ("eventbook.brokers.rabbitmq", "RabbitBroker", "rabbitmq"),
}


def schemes() -> list[str]:
    """Return the URL schemes eventbook has a broker for."""
    return sorted(_ADAPTERS)


def from_url(url: str, namespace: str) -> Broker:
    """Return the broker for `url`, not yet connected.

    Args:
        url: like `memory://` or `sqlite:///eventbook.db`.
        namespace: the book's name; channels are named under it.

    Raises:
        UnknownBrokerError: the scheme is not one of `schemes()`.
        ConfigurationError: the adapter's driver is not installed.
    """
    scheme = urlsplit(url).scheme
    if scheme not in _ADAPTERS:
        known = ", ".join(f"{s}://" for s in schemes())
        raise UnknownBrokerError(
            f"unknown broker URL {redact(url)!r}: supported schemes are {known}"
        )
    module_name, class_name, extra = _ADAPTERS[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"pip install 'eventbook[{extra}]'" if extra else "reinstall eventbook"
        raise ConfigurationError(
            f"the {scheme}:// broker needs a driver that is not installed ({exc.name}): {hint}"
        ) from None
    broker: Broker = getattr(module, class_name)(url, namespace)
    return broker

"""Durable saga journals, chosen by URL; each imports its driver only when used.

| URL | store |
|---|---|
| `memory://` | this process's dicts: tests and scripts |
| `sqlite:///path.db` | a SQLite file (the broker's may do), many processes on one host |
| `postgresql://user:pass@host/db` (or `postgres://`) | PostgreSQL, coordinators on many hosts |

Every store passes one contract, `eventbook.testing.store_contract.SagaStoreContract`.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from ..errors import ConfigurationError, redact
from .base import ACTIVE_STATES, LostOwnershipError, SagaRecord, SagaState, SagaStore, StepRecord

__all__ = [
    "ACTIVE_STATES",
    "LostOwnershipError",
    "SagaRecord",
    "SagaState",
    "SagaStore",
    "StepRecord",
    "schemes",
    "store_from_url",
]

# scheme -> (module, class, pip extra that brings its driver)
_STORES: dict[str, tuple[str, str, str | None]] = {
    "memory": ("eventbook.store.memory", "MemorySagaStore", None),
    "sqlite": ("eventbook.store.sqlite", "SqliteSagaStore", None),
    "postgresql": ("eventbook.store.postgres", "PostgresSagaStore", "postgres"),
    "postgres": ("eventbook.store.postgres", "PostgresSagaStore", "postgres"),
}


def schemes() -> list[str]:
    """Return the URL schemes eventbook has a saga store for."""
    return sorted(_STORES)


def store_from_url(url: str) -> SagaStore:
    """Return the saga store for `url`, not yet opened.

    Args:
        url: like `memory://`, `sqlite:///eventbook.db` or `postgresql://host/db`.

    Raises:
        ConfigurationError: the scheme is not one of `schemes()`, the URL is malformed,
            or the store's driver is not installed.
    """
    scheme = urlsplit(url).scheme
    if scheme not in _STORES:
        known = ", ".join(f"{s}://" for s in schemes())
        raise ConfigurationError(
            f"unknown saga store URL {redact(url)!r}: supported schemes are {known}"
        )
    module_name, class_name, extra = _STORES[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"pip install 'eventbook[{extra}]'" if extra else "reinstall eventbook"
        raise ConfigurationError(
            f"the {scheme}:// saga store needs a driver that is not installed ({exc.name}): {hint}"
        ) from None
    store: SagaStore = getattr(module, class_name)(url)
    return store

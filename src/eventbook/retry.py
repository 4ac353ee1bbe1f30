"""Retry policy of a subscription: how many times, and how long to wait between tries."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: `initial * factor**(n-1)` seconds before retry n, capped.

    Args:
        initial: seconds before the first retry.
        factor: growth between consecutive retries.
        maximum: no wait is longer than this.
        jitter: each wait is spread by up to this fraction, so that replicas that
            failed together do not retry in lockstep.
    """

    initial: float = 0.1
    factor: float = 2.0
    maximum: float = 60.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.initial < 0 or self.factor < 1 or self.maximum < 0 or not 0 <= self.jitter <= 1:
            raise ValueError(
                "Backoff needs initial >= 0, factor >= 1, maximum >= 0 and 0 <= jitter <= 1"
            )

    def delay(self, retry: int) -> float:
        """Return the seconds to wait before retry number `retry` (1 for the first)."""
        base = min(self.maximum, self.initial * self.factor ** max(0, retry - 1))
        if self.jitter:
            base *= 1 + self.jitter * (2 * random.random() - 1)
        return max(0.0, base)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Up to `retries` more tries after the first, spaced by `backoff`, then dead-letter."""

    retries: int = 3
    backoff: Backoff = Backoff()

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be >= 0")

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    @classmethod
    def of(cls, retries: int, backoff: Backoff | float | None) -> RetryPolicy:
        """Build a policy from `@sub`'s arguments; a number is the initial backoff."""
        if backoff is None:
            return cls(retries)
        if isinstance(backoff, Backoff):
            return cls(retries, backoff)
        return cls(retries, Backoff(initial=float(backoff)))

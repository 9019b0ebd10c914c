"""Exponential backoff with jitter, and which delay queue a retry goes through.

A retried message waits in a delay queue with a per-message TTL and is dead-lettered back
to its work queue when the TTL expires. RabbitMQ expires messages only at the head of a
queue, so a 30 s message in front of a 1 s message would hold the short one back. Each
retry number therefore has its own delay queue ("tier"); within a tier delays differ only
by the jitter, which bounds that head-of-line wait to the jitter range.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_TIERS = 10


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` counts handler attempts, the first included (1 means no retry)."""

    max_attempts: int = 5
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_delay <= 0 or self.max_delay < self.initial_delay:
            raise ValueError("need 0 < initial_delay <= max_delay")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1)")

    @property
    def tiers(self) -> int:
        """How many delay queues this policy needs (at least one, at most ``MAX_TIERS``)."""
        return max(1, min(self.max_attempts - 1, MAX_TIERS))

    def tier(self, attempt: int) -> int:
        """The delay queue (1-based) for the retry after failed attempt number ``attempt``."""
        return max(1, min(attempt, self.tiers))

    def base_delay(self, attempt: int) -> float:
        """Delay before the retry that follows failed attempt ``attempt`` (1-based), no jitter."""
        exponent = max(0, attempt - 1)
        # Cap the exponent first: multiplier ** 1000 would overflow a float.
        if self.multiplier > 1 and exponent > 64:
            return self.max_delay
        return min(self.max_delay, self.initial_delay * self.multiplier**exponent)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """``base_delay`` spread by +-jitter so retries of many messages do not align."""
        base = self.base_delay(attempt)
        if not self.jitter:
            return base
        spread = (rng or _RNG).uniform(-self.jitter, self.jitter)
        return max(0.001, base * (1 + spread))

    def exhausted(self, attempts_made: int) -> bool:
        return attempts_made >= self.max_attempts


_RNG = random.Random()

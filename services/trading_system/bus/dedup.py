"""Drop redeliveries by message id, with bounded memory.

Delivery is at-least-once, so a consumer whose effect must happen once remembers the ids
it has finished. Memory is bounded by count (oldest forgotten first) and optionally by
age. This covers redeliveries that arrive while the process lives (reconnects, retried
publishes); effects that must be exactly-once across restarts also need a durable key,
e.g. settlement's unique trade id in PostgreSQL.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class Deduplicator:
    def __init__(
        self,
        max_entries: int = 100_000,
        max_age_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._max_entries = max_entries
        self._max_age = max_age_seconds
        self._clock = clock

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, message_id: str) -> bool:
        """True if ``message_id`` was marked done (and not yet forgotten)."""
        self._expire()
        return message_id in self._seen

    def mark(self, message_id: str) -> None:
        """Record that the effect of ``message_id`` is done; call after it succeeded."""
        self._seen[message_id] = self._clock()
        self._seen.move_to_end(message_id)
        while len(self._seen) > self._max_entries:
            self._seen.popitem(last=False)

    def first_time(self, message_id: str) -> bool:
        """Check and mark at once, for effects that cannot fail halfway."""
        if self.seen(message_id):
            return False
        self.mark(message_id)
        return True

    def _expire(self) -> None:
        if self._max_age is None:
            return
        horizon = self._clock() - self._max_age
        while self._seen:
            oldest_id, at = next(iter(self._seen.items()))
            if at >= horizon:
                break
            del self._seen[oldest_id]

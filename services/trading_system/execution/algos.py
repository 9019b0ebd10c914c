"""Parent orders sliced into child orders: size chunking, TWAP and VWAP.

Schedules are pure: a parent order and a start time in, a list of (time, quantity) slices
out. Quantities are whole lots and always sum to the parent's quantity exactly; leftover
lots from integer division go to the earliest slices (largest remainder for VWAP), so the
schedule front-loads rather than leaving a residue at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class Strategy(StrEnum):
    CHUNK = "chunk"
    TWAP = "twap"
    VWAP = "vwap"


@dataclass(frozen=True, slots=True)
class Slice:
    index: int
    at: float  # seconds on the caller's clock
    qty: int


def chunk_schedule(qty: int, chunk: int, start: float, interval: float = 0.0) -> list[Slice]:
    """Slices of at most ``chunk`` lots, ``interval`` seconds apart."""
    _require_positive(qty=qty, chunk=chunk)
    sizes = [chunk] * (qty // chunk) + ([qty % chunk] if qty % chunk else [])
    return [Slice(i, start + i * interval, size) for i, size in enumerate(sizes)]


def twap_schedule(qty: int, slices: int, start: float, duration: float) -> list[Slice]:
    """Equal slices spread evenly over ``duration`` seconds (first one at ``start``)."""
    _require_positive(qty=qty, slices=slices)
    if duration < 0:
        raise ValueError("duration must be >= 0")
    return _from_weights(qty, [1.0] * slices, start, duration)


def vwap_schedule(qty: int, volume_profile: Sequence[float], start: float, duration: float) -> list[Slice]:
    """Slices proportional to the expected volume in each equal time bucket."""
    _require_positive(qty=qty)
    if not volume_profile or any(w < 0 for w in volume_profile) or sum(volume_profile) <= 0:
        raise ValueError("volume profile needs non-negative weights with a positive sum")
    return _from_weights(qty, list(volume_profile), start, duration)


def _from_weights(qty: int, weights: list[float], start: float, duration: float) -> list[Slice]:
    total = sum(weights)
    exact = [qty * w / total for w in weights]
    sizes = [int(x) for x in exact]
    # Largest remainder: hand the leftover lots to the buckets that lost the most to flooring,
    # earliest first on ties, so the sizes sum to qty exactly.
    leftovers = sorted(range(len(weights)), key=lambda i: (sizes[i] - exact[i], i))
    for i in leftovers[: qty - sum(sizes)]:
        sizes[i] += 1
    step = duration / len(weights)
    return [Slice(i, start + i * step, size) for i, size in enumerate(sizes) if size > 0]


def _require_positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")


@dataclass(slots=True)
class ParentOrder:
    """Progress of one parent order through its schedule."""

    parent_id: str
    qty: int
    schedule: list[Slice]
    released: set[int] = field(default_factory=set)
    filled_qty: int = 0
    cancelled: bool = False

    def due(self, now: float) -> list[Slice]:
        """Slices whose time has come and that were not released yet; marks them released."""
        if self.cancelled:
            return []
        ready = [s for s in self.schedule if s.at <= now and s.index not in self.released]
        self.released.update(s.index for s in ready)
        return ready

    def record_fill(self, qty: int) -> None:
        if qty <= 0 or self.filled_qty + qty > self.qty:
            raise ValueError(f"fill of {qty} exceeds parent {self.parent_id} remaining quantity")
        self.filled_qty += qty

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def released_qty(self) -> int:
        return sum(s.qty for s in self.schedule if s.index in self.released)

    @property
    def done(self) -> bool:
        return self.filled_qty == self.qty or self.cancelled

    def progress(self) -> dict[str, object]:
        return {
            "parent_id": self.parent_id,
            "qty": self.qty,
            "released_qty": self.released_qty,
            "filled_qty": self.filled_qty,
            "slices_released": len(self.released),
            "slices_total": len(self.schedule),
            "cancelled": self.cancelled,
            "done": self.done,
        }

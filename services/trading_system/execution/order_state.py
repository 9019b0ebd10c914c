"""The order state machine as execution reports it to clients.

pending -> open -> partially_filled -> filled | cancelled | expired | rejected. Fills may
arrive before the venue's "accepted" event when the order crosses on arrival, so a fill is
allowed from pending too; terminal states never change again, and a duplicate fill (same
trade id) is ignored rather than counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class OrderStatus(StrEnum):
    PENDING = "pending"
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"


TERMINAL = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.REJECTED})


class InvalidTransition(ValueError):
    """An event that cannot apply to the order in its current state."""


@dataclass(slots=True)
class Fill:
    trade_id: str
    qty: int
    price: int


@dataclass(slots=True)
class OrderState:
    """What execution knows about one order; quantities in lots, prices in ticks."""

    order_id: str
    qty: int
    status: OrderStatus = OrderStatus.PENDING
    filled_qty: int = 0
    notional: int = 0  # sum of qty * price over fills, for the average price
    fills: list[Fill] = field(default_factory=list)
    reason: str = ""

    @property
    def remaining_qty(self) -> int:
        return self.qty - self.filled_qty

    @property
    def average_price(self) -> float | None:
        return self.notional / self.filled_qty if self.filled_qty else None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def _require_live(self, event: str) -> None:
        if self.is_terminal:
            raise InvalidTransition(f"order {self.order_id} is {self.status}; cannot apply {event}")

    def accept(self) -> None:
        self._require_live("accept")
        if self.status is OrderStatus.PENDING:
            self.status = OrderStatus.OPEN

    def reject(self, reason: str) -> None:
        if self.status is not OrderStatus.PENDING:
            raise InvalidTransition(f"order {self.order_id} is {self.status}; only pending orders reject")
        self.status, self.reason = OrderStatus.REJECTED, reason

    def fill(self, trade_id: str, qty: int, price: int) -> bool:
        """Apply a fill; False when this trade id was already applied (a redelivery)."""
        if any(f.trade_id == trade_id for f in self.fills):
            return False
        self._require_live("fill")
        if qty <= 0 or qty > self.remaining_qty:
            raise InvalidTransition(
                f"fill of {qty} on order {self.order_id} with {self.remaining_qty} remaining"
            )
        self.fills.append(Fill(trade_id, qty, price))
        self.filled_qty += qty
        self.notional += qty * price
        self.status = OrderStatus.FILLED if self.remaining_qty == 0 else OrderStatus.PARTIALLY_FILLED
        return True

    def cancel(self, reason: str = "cancelled") -> None:
        self._require_live("cancel")
        self.status, self.reason = OrderStatus.CANCELLED, reason

    def expire(self) -> None:
        self._require_live("expire")
        self.status, self.reason = OrderStatus.EXPIRED, "expired"

"""The risk participant's vote, as pure code.

The basic limits (quantity, order value) need only the order; the position, exposure
and order-rate limits need what the account already has, gathered by the driver into a
``RiskContext`` (ledger balances, the store's recent transactions). A limit set to
``None`` is off, and the context is only gathered when one of those limits is on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trading_system.matching.core import Side
from trading_system.pipeline.orders import OrderRequest, RiskLimits, risk_vote


@dataclass(frozen=True, slots=True)
class RiskPolicy:
    """``max_position``: base units an account may hold after a buy fills.
    ``max_exposure``: quote units an account may have reserved for open buys, this one
    included. ``max_orders``: placements per account within ``window`` seconds."""

    limits: RiskLimits = field(default_factory=RiskLimits)
    max_position: int | None = None
    max_exposure: int | None = None
    max_orders: int | None = None
    window: float = 1.0

    @property
    def needs_context(self) -> bool:
        return any(limit is not None for limit in (self.max_position, self.max_exposure, self.max_orders))


@dataclass(frozen=True, slots=True)
class RiskContext:
    """``position``: base units held; ``exposure``: quote reserved by other open orders;
    ``recent_orders``: the account's other placements within the window."""

    position: int = 0
    exposure: int = 0
    recent_orders: int = 0


def evaluate(policy: RiskPolicy, order: OrderRequest, cost: int, context: RiskContext) -> tuple[bool, str]:
    """(yes, reason); ``cost`` is what the order reserves in quote units (buys only)."""
    yes, reason = risk_vote(order, policy.limits)
    if not yes:
        return yes, reason
    if policy.max_orders is not None and context.recent_orders >= policy.max_orders:
        return (
            False,
            f"order rate: {context.recent_orders} orders in {policy.window}s (limit {policy.max_orders})",
        )
    if order.side == Side.BUY:
        if policy.max_position is not None and context.position + order.qty > policy.max_position:
            return False, f"position {context.position} + {order.qty} above limit {policy.max_position}"
        if policy.max_exposure is not None and context.exposure + cost > policy.max_exposure:
            return False, f"exposure {context.exposure} + {cost} above limit {policy.max_exposure}"
    return True, "within limits"

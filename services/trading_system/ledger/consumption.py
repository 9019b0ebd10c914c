"""How one fill draws on its order's hold. Pure arithmetic, no database.

After a fill the hold keeps exactly the share of the original reservation that the
unfilled quantity may still need, ``ceil(reserved * unfilled / order_qty)``, and hands
the rest back to available. So a partial fill reduces the hold, a fill below the limit
price (price improvement) releases the difference at once, and the last fill releases
whatever is left.

With reservations from ``ledger.pricing`` a fill's cost never exceeds its share, so the
hold always pays. If a fill costs more anyway (a hold released by a cancel that raced
with the fill, or a caller-made reservation that was too small), the shortfall is taken
from available; settlement refuses the trade if that is not enough either.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Draw:
    from_hold: int  # paid out of the hold
    shortfall: int  # paid out of available
    released: int  # returned from the hold to available
    remaining: int  # left in the hold afterwards
    filled_qty: int  # order quantity filled so far, this fill included

    @property
    def held_delta(self) -> int:
        return -(self.from_hold + self.released)

    @property
    def available_delta(self) -> int:
        return self.released - self.shortfall


def draw(*, reserved: int, remaining: int, order_qty: int, filled_qty: int, cost: int, fill_qty: int) -> Draw:
    """Take ``cost`` for a fill of ``fill_qty`` from a hold in the given state."""
    from_hold = min(cost, remaining)
    filled = filled_qty + fill_qty
    unfilled = max(order_qty - filled, 0)
    still_needed = -(-reserved * unfilled // order_qty) if order_qty > 0 else 0
    left = remaining - from_hold
    released = max(left - still_needed, 0)
    return Draw(
        from_hold=from_hold,
        shortfall=cost - from_hold,
        released=released,
        remaining=left - released,
        filled_qty=filled,
    )

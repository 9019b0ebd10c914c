"""Plain order records and the pure rules around them: ids, reservations, risk."""

from __future__ import annotations

from dataclasses import dataclass

from trading_system.ledger import Instrument, buy_reservation, sell_reservation
from trading_system.matching.core import Side


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A limit order as a client submits it; prices and quantities in integer units."""

    order_id: str
    account: str
    symbol: str
    side: Side
    qty: int
    price: int


@dataclass(frozen=True, slots=True)
class Reservation:
    asset: str
    amount: int


def txn_id_for(order_id: str) -> str:
    """One 3PC transaction per order placement; its id is also the ledger hold id."""
    return f"txn-{order_id}"


def order_id_of(txn_id: str) -> str:
    return txn_id.removeprefix("txn-")


def reservation(order: OrderRequest, instrument: Instrument, fee_bps: int) -> Reservation:
    """What the ledger must hold for the order: quote (with fee) for a buy, base for a sell."""
    if order.side == Side.BUY:
        return Reservation(
            instrument.quote_asset, buy_reservation(instrument, order.price, order.qty, fee_bps)
        )
    return Reservation(instrument.base_asset, sell_reservation(order.qty))


@dataclass(frozen=True, slots=True)
class RiskLimits:
    max_qty: int = 1_000
    max_notional: int = 10_000_000_000


def risk_vote(order: OrderRequest, limits: RiskLimits) -> tuple[bool, str]:
    """The risk participant's vote: (yes, reason)."""
    if order.qty > limits.max_qty:
        return False, f"qty {order.qty} above limit {limits.max_qty}"
    if order.qty * order.price > limits.max_notional:
        return False, f"notional {order.qty * order.price} above limit {limits.max_notional}"
    return True, "within limits"

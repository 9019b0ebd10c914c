"""Slippage of fills against the arrival price and the limit price.

Signed so that a positive number is always a cost to the trader: paying more than the
reference on a buy, receiving less on a sell. Expressed in basis points of the reference.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SlippageReport:
    filled_qty: int
    average_price: float
    vs_arrival_bps: float
    vs_limit_bps: float | None


def slippage_bps(side: str, price: float, reference: float) -> float:
    if reference <= 0:
        raise ValueError("reference price must be positive")
    sign = 1.0 if side == "buy" else -1.0
    return sign * (price - reference) / reference * 10_000


def report(
    side: str, fills: Iterable[tuple[int, int]], arrival_price: int, limit_price: int | None = None
) -> SlippageReport | None:
    """Aggregate slippage over (qty, price) fills; None when nothing filled."""
    qty = notional = 0
    for fill_qty, fill_price in fills:
        qty += fill_qty
        notional += fill_qty * fill_price
    if qty == 0:
        return None
    average = notional / qty
    return SlippageReport(
        filled_qty=qty,
        average_price=average,
        vs_arrival_bps=slippage_bps(side, average, arrival_price),
        vs_limit_bps=slippage_bps(side, average, limit_price) if limit_price else None,
    )

"""Positions and balances after settlement."""

from __future__ import annotations

from trading_system.bus.catalog.common import Amount, Asset, Identifier, NonNegativeQuantity, Symbol
from trading_system.bus.messages import BusMessage


class PositionUpdate(BusMessage):
    message_type = "position.update"
    account: Identifier
    symbol: Symbol
    qty: Amount
    average_price: NonNegativeQuantity
    realized_pnl: Amount = Amount(0)


class BalanceUpdate(BusMessage):
    message_type = "position.balance"
    account: Identifier
    asset: Asset
    available: NonNegativeQuantity
    reserved: NonNegativeQuantity


MESSAGES: tuple[type[BusMessage], ...] = (PositionUpdate, BalanceUpdate)

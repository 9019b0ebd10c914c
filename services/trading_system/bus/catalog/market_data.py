"""Market data published by matching: best bid/offer, depth snapshots, trade prints."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from trading_system.bus.catalog.common import Identifier, Price, Quantity, Side, Symbol
from trading_system.bus.messages import BusMessage


class PriceLevel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    price: Price
    qty: Quantity


class BestBidOffer(BusMessage):
    message_type = "md.bbo"
    symbol: Symbol
    bid_price: Price | None = None
    bid_qty: Quantity | None = None
    ask_price: Price | None = None
    ask_qty: Quantity | None = None


class DepthSnapshot(BusMessage):
    message_type = "md.depth"
    symbol: Symbol
    bids: tuple[PriceLevel, ...] = Field(default=(), max_length=1000)
    asks: tuple[PriceLevel, ...] = Field(default=(), max_length=1000)


class TradePrint(BusMessage):
    message_type = "md.trade"
    trade_id: Identifier
    symbol: Symbol
    price: Price
    qty: Quantity
    aggressor_side: Side


MESSAGES: tuple[type[BusMessage], ...] = (BestBidOffer, DepthSnapshot, TradePrint)

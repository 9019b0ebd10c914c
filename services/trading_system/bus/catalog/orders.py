"""Order entry commands and the execution reports that answer them."""

from __future__ import annotations

from typing import Self

from pydantic import model_validator

from trading_system.bus.catalog.common import (
    Amount,
    Identifier,
    Liquidity,
    NonNegativeQuantity,
    OrderType,
    Price,
    Quantity,
    Reason,
    Side,
    Symbol,
    TimeInForce,
    Timestamp,
)
from trading_system.bus.messages import BusMessage


class OrderNew(BusMessage):
    message_type = "order.new"
    order_id: Identifier
    client_order_id: Identifier
    account: Identifier
    symbol: Symbol
    side: Side
    order_type: OrderType
    qty: Quantity
    price: Price | None = None
    stop_price: Price | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    expire_at: Timestamp | None = None
    post_only: bool = False
    display_qty: Quantity | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        # Cross-field rules that a single field type cannot express; violating any of them
        # is a malformed order, so it is refused before it ever reaches the wire.
        needs_price = self.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
        if needs_price and self.price is None:
            raise ValueError(f"a {self.order_type} order needs a price")
        if self.order_type is OrderType.MARKET and self.price is not None:
            raise ValueError("a market order has no price")
        needs_stop = self.order_type in (OrderType.STOP, OrderType.STOP_LIMIT)
        if needs_stop != (self.stop_price is not None):
            raise ValueError("stop_price is required for stop orders and only for them")
        if (self.time_in_force is TimeInForce.GTD) != (self.expire_at is not None):
            raise ValueError("expire_at is required for GTD orders and only for them")
        if self.post_only and self.order_type is not OrderType.LIMIT:
            raise ValueError("post_only applies to limit orders only")
        if self.display_qty is not None and self.display_qty > self.qty:
            raise ValueError("display_qty cannot exceed qty")
        return self


class OrderCancel(BusMessage):
    message_type = "order.cancel"
    order_id: Identifier
    account: Identifier
    symbol: Symbol
    reason: Reason = ""


class OrderReplace(BusMessage):
    message_type = "order.replace"
    order_id: Identifier
    new_order_id: Identifier
    account: Identifier
    symbol: Symbol
    qty: Quantity
    price: Price | None = None


class OrderAccepted(BusMessage):
    message_type = "order.accepted"
    order_id: Identifier
    account: Identifier
    symbol: Symbol
    venue_order_id: Identifier | None = None


class OrderRejected(BusMessage):
    message_type = "order.rejected"
    order_id: Identifier
    account: Identifier
    symbol: Symbol | None = None
    reason_code: Identifier
    reason: Reason = ""


class OrderFill(BusMessage):
    message_type = "order.fill"
    order_id: Identifier
    trade_id: Identifier
    account: Identifier
    symbol: Symbol
    side: Side
    qty: Quantity
    price: Price
    leaves_qty: NonNegativeQuantity
    liquidity: Liquidity
    fee: Amount = Amount(0)


class OrderCancelled(BusMessage):
    message_type = "order.cancelled"
    order_id: Identifier
    account: Identifier
    symbol: Symbol
    cancelled_qty: NonNegativeQuantity
    reason: Reason = ""


class OrderExpired(BusMessage):
    message_type = "order.expired"
    order_id: Identifier
    account: Identifier
    symbol: Symbol
    expired_qty: NonNegativeQuantity


MESSAGES: tuple[type[BusMessage], ...] = (
    OrderNew,
    OrderCancel,
    OrderReplace,
    OrderAccepted,
    OrderRejected,
    OrderFill,
    OrderCancelled,
    OrderExpired,
)

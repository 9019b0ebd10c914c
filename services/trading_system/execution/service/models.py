"""The order API's request and response bodies (pydantic v2); the OpenAPI document is
generated from these, so the schema clients read is the one the server enforces."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from trading_system.execution.algos import Strategy

ClientId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
AccountId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
SymbolName = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9._/-]{0,31}$")]
Lots = Annotated[int, Field(gt=0, le=10**12, strict=True)]
Ticks = Annotated[int, Field(gt=0, le=10**15, strict=True)]


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class TimeInForce(StrEnum):
    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubmitOrder(_Request):
    """A new order; quantities in lots, prices in ticks (integers)."""

    client_order_id: ClientId
    account: AccountId
    symbol: SymbolName
    side: Side
    order_type: OrderType = OrderType.LIMIT
    qty: Lots
    price: Ticks | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    post_only: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.order_type is OrderType.LIMIT and self.price is None:
            raise ValueError("a limit order needs a price")
        if self.order_type is OrderType.MARKET and self.price is not None:
            raise ValueError("a market order has no price")
        if self.post_only and self.order_type is not OrderType.LIMIT:
            raise ValueError("post_only applies to limit orders only")
        return self


class ReplaceOrder(_Request):
    """Cancel-and-replace: the old order is cancelled, a new one with these values placed."""

    client_order_id: ClientId
    qty: Lots
    price: Ticks | None = None


class CancelAll(_Request):
    account: AccountId | None = None
    symbol: SymbolName | None = None

    @model_validator(mode="after")
    def _scoped(self) -> Self:
        if self.account is None and self.symbol is None:
            raise ValueError("cancel-all needs an account, a symbol, or both")
        return self


class SubmitParent(_Request):
    """A parent order sliced into child orders by ``strategy``.

    chunk: ``chunk_size`` lots per child, ``interval_seconds`` apart; twap: ``slices``
    equal children over ``duration_seconds``; vwap: children proportional to
    ``volume_profile`` (one weight per equal time bucket) over ``duration_seconds``.
    No ``price`` makes the children market orders.
    """

    client_order_id: ClientId
    account: AccountId
    symbol: SymbolName
    side: Side
    qty: Lots
    price: Ticks | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    strategy: Strategy
    chunk_size: Lots | None = None
    interval_seconds: Annotated[float, Field(ge=0, le=86_400)] = 0.0
    slices: Annotated[int, Field(gt=0, le=10_000)] | None = None
    duration_seconds: Annotated[float, Field(ge=0, le=86_400)] | None = None
    volume_profile: (
        Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1, max_length=1000)] | None
    ) = None

    @model_validator(mode="after")
    def _strategy_params(self) -> Self:
        needs = {
            Strategy.CHUNK: ("chunk_size",),
            Strategy.TWAP: ("slices", "duration_seconds"),
            Strategy.VWAP: ("volume_profile", "duration_seconds"),
        }[self.strategy]
        missing = [name for name in needs if getattr(self, name) is None]
        if missing:
            raise ValueError(f"strategy {self.strategy.value} needs {', '.join(missing)}")
        if self.strategy is Strategy.VWAP and not sum(self.volume_profile or ()) > 0:
            raise ValueError("volume_profile needs a positive sum")
        if self.strategy is Strategy.TWAP and self.slices is not None and self.slices > self.qty:
            raise ValueError("more slices than lots")
        return self

    def params(self) -> dict[str, Any]:
        names = ("chunk_size", "interval_seconds", "slices", "duration_seconds", "volume_profile")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


class EpochBody(_Request):
    epoch: Annotated[int, Field(ge=1, strict=True)]


# -- responses (documentation, and checked against real answers by the tests) ----------------


class Slippage(BaseModel):
    vs_arrival_bps: float | None
    vs_limit_bps: float | None


class FillOut(BaseModel):
    trade_id: str
    qty: int
    price: int
    vs_arrival_bps: float | None
    vs_limit_bps: float | None


class OrderOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: str
    client_order_id: str
    account: str
    symbol: str
    side: Side
    order_type: OrderType
    time_in_force: TimeInForce
    post_only: bool
    qty: int
    price: int | None
    status: str = Field(description="pending, open, partially_filled, filled, cancelled, expired or rejected")
    filled_qty: int
    remaining_qty: int
    average_price: float | None
    reason: str
    parent_id: str | None
    replaces: str | None
    cancel_requested: bool
    created_at: float
    arrival_price: float | None = Field(description="BBO mid when the order was submitted")
    slippage: Slippage
    fills: list[FillOut]


class OrderList(BaseModel):
    orders: list[OrderOut]


class ReplaceOut(BaseModel):
    order: OrderOut
    replaced: str


class CancelAllOut(BaseModel):
    cancel_requested: list[str]


class ScheduledSlice(BaseModel):
    index: int
    at: float
    qty: int


class ParentOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parent_id: str
    client_order_id: str
    account: str
    symbol: str
    side: Side
    qty: int
    price: int | None
    time_in_force: TimeInForce
    strategy: Strategy
    params: dict[str, Any]
    created_at: float
    arrival_price: float | None
    released_qty: int
    filled_qty: int
    average_price: float | None
    slices_released: int
    slices_total: int
    schedule: list[ScheduledSlice]
    cancelled: bool
    done: bool
    slippage: Slippage
    children: list[str]


class ParentList(BaseModel):
    parents: list[ParentOut]


class BalanceOut(BaseModel):
    asset: str
    available: int
    held: int
    total: int


class BalancesOut(BaseModel):
    account: str
    balances: list[BalanceOut]


class PositionOut(BaseModel):
    symbol: str
    net_qty: int
    bought_qty: int
    sold_qty: int
    bought_notional: int
    sold_notional: int


class PositionsOut(BaseModel):
    account: str
    positions: list[PositionOut]


class RoleOut(BaseModel):
    role: str
    epoch: int


class ReadyOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    ready: bool
    role: str
    epoch: int
    lag: int


class HealthOut(BaseModel):
    alive: bool
    loop_lag_seconds: float


class ErrorOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    error: str = Field(description="why the request was refused")

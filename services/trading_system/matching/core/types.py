"""Commands, events and enums of the matching core.

Everything here is plain data. Prices and quantities are integers in the symbol's
smallest units (the service converts decimals at the edge), so arithmetic is exact.

Events leave the engine as plain tuples because building a tuple is several times
cheaper than building an object and the hot path emits millions of them. Each event
kind has a NamedTuple below with the identical field layout, so a consumer can turn
any event into a named record with :func:`decode_event`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, NamedTuple, TypeAlias

CommandId: TypeAlias = int | str
Event: TypeAlias = tuple[Any, ...]


class Side(IntEnum):
    # +1/-1 rather than 0/1: the engine keys price levels by side * price, which makes
    # "best" the largest key on both sides without branching.
    BUY = 1
    SELL = -1


class OrderType(IntEnum):
    LIMIT = 1
    MARKET = 2
    STOP = 3
    STOP_LIMIT = 4


class TimeInForce(IntEnum):
    GTC = 1
    GTD = 2
    IOC = 3
    FOK = 4


# Order types priced by a limit, types that wait for a trigger, TIFs whose remainder rests.
PRICED_TYPES = frozenset((OrderType.LIMIT, OrderType.STOP_LIMIT))
STOP_TYPES = frozenset((OrderType.STOP, OrderType.STOP_LIMIT))
RESTING_TIFS = frozenset((TimeInForce.GTC, TimeInForce.GTD))


class StpMode(IntEnum):
    """What happens when an order would trade with a resting order of the same account."""

    CANCEL_RESTING = 1
    CANCEL_AGGRESSOR = 2
    CANCEL_BOTH = 3
    ALLOW = 4


class EventKind(IntEnum):
    ACCEPTED = 1
    REJECTED = 2
    TRADE = 3
    CANCELLED = 4
    EXPIRED = 5
    TRIGGERED = 6
    REPLACED = 7
    BBO = 8
    SYMBOL_ADDED = 9


class RejectReason(IntEnum):
    MALFORMED = 1
    UNKNOWN_SYMBOL = 2
    DUPLICATE_ORDER_ID = 3
    UNKNOWN_ORDER = 4
    INVALID_SIDE = 5
    INVALID_ORDER_TYPE = 6
    INVALID_TIF = 7
    INVALID_PRICE = 8
    PRICE_OFF_TICK = 9
    PRICE_OUT_OF_BAND = 10
    QTY_OFF_LOT = 11
    QTY_BELOW_MIN = 12
    QTY_ABOVE_MAX = 13
    INVALID_EXPIRY = 14
    INVALID_STOP_PRICE = 15
    INVALID_DISPLAY_QTY = 16
    INVALID_FLAGS = 17
    POST_ONLY_WOULD_CROSS = 18
    NOT_REPLACEABLE = 19
    SYMBOL_EXISTS = 20
    INVALID_SPEC = 21


class CancelReason(IntEnum):
    USER = 1
    MASS_CANCEL = 2
    # Unfilled rest of an IOC or market order (including "no liquidity at all").
    UNFILLED = 3
    FOK_UNFILLABLE = 4
    SELF_TRADE = 5
    REPLACED_BELOW_FILLED = 6


class OrderStatus(IntEnum):
    PENDING = 1
    OPEN = 2
    PARTIALLY_FILLED = 3
    FILLED = 4
    CANCELLED = 5
    EXPIRED = 6
    REJECTED = 7


# --------------------------------------------------------------------------- symbols


class SymbolSpec(NamedTuple):
    """Per-symbol trading rules; all values in the symbol's integer units.

    ``band_bps`` is the allowed distance of a limit price from the reference price in
    basis points (0 disables the band). The reference is the last trade price, or
    ``reference_price`` before the first trade (0 = no band until then).
    """

    symbol: str
    tick_size: int = 1
    lot_size: int = 1
    min_qty: int = 1
    max_qty: int = 1_000_000_000_000
    band_bps: int = 0
    reference_price: int = 0
    stp_mode: StpMode = StpMode.CANCEL_RESTING


# -------------------------------------------------------------------------- commands


class NewOrder(NamedTuple):
    """Submit an order.

    ``qty`` is the full order quantity; ``display_qty`` > 0 makes it an iceberg.
    ``price`` is the limit price (0 for MARKET and STOP); ``stop_price`` is the trigger
    for STOP and STOP_LIMIT. ``expire_ts`` is only allowed (and required) with GTD.
    """

    cmd_id: CommandId
    ts: int
    symbol: str
    order_id: str
    account: str
    side: Side
    qty: int
    price: int = 0
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.GTC
    expire_ts: int = 0
    stop_price: int = 0
    display_qty: int = 0
    post_only: bool = False


class Cancel(NamedTuple):
    cmd_id: CommandId
    ts: int
    symbol: str
    order_id: str
    account: str


class Replace(NamedTuple):
    """Change price and/or total quantity (FIX semantics: ``qty`` includes what filled)."""

    cmd_id: CommandId
    ts: int
    symbol: str
    order_id: str
    account: str
    price: int
    qty: int


class MassCancel(NamedTuple):
    """Cancel every open order of ``account`` and/or on ``symbol`` (at least one given)."""

    cmd_id: CommandId
    ts: int
    symbol: str | None = None
    account: str | None = None


class AdvanceTime(NamedTuple):
    """Move the logical clock forward so GTD orders expire without other traffic."""

    cmd_id: CommandId
    ts: int


class AddSymbol(NamedTuple):
    cmd_id: CommandId
    ts: int
    spec: SymbolSpec


Command: TypeAlias = NewOrder | Cancel | Replace | MassCancel | AdvanceTime | AddSymbol

# What the engine's entry points and validators take. Commands come from outside (bus,
# journal) and the engine checks every field itself, rejecting what is malformed with a
# reason. Typed Any at that boundary because a mypyc-compiled build inserts a runtime
# type check wherever a typed parameter or local is bound, and would raise TypeError
# there instead of emitting the same MALFORMED reject as the interpreted build.
Untrusted: TypeAlias = Any


# ---------------------------------------------------------------------------- events
# Field order of each record is the tuple layout the engine emits. ``seq`` is the
# per-engine event sequence number; a trade's id is its event ``seq``.


class AcceptedEvent(NamedTuple):
    seq: int
    kind: EventKind
    symbol: str
    order_id: str
    account: str
    side: Side
    price: int
    qty: int
    order_type: OrderType


class RejectedEvent(NamedTuple):
    seq: int
    kind: EventKind
    cmd_id: CommandId
    symbol: Any
    order_id: Any
    reason: RejectReason


class TradeEvent(NamedTuple):
    seq: int
    kind: EventKind
    symbol: str
    price: int
    qty: int
    aggressor_side: Side
    taker_order_id: str
    taker_account: str
    taker_leaves: int
    maker_order_id: str
    maker_account: str
    maker_leaves: int

    @property
    def trade_id(self) -> int:
        return self.seq

    @property
    def buyer(self) -> tuple[str, str]:
        """(order id, account) of the buying side."""
        if self.aggressor_side == Side.BUY:
            return self.taker_order_id, self.taker_account
        return self.maker_order_id, self.maker_account

    @property
    def seller(self) -> tuple[str, str]:
        if self.aggressor_side == Side.BUY:
            return self.maker_order_id, self.maker_account
        return self.taker_order_id, self.taker_account


class CancelledEvent(NamedTuple):
    seq: int
    kind: EventKind
    symbol: str
    order_id: str
    account: str
    leaves: int
    reason: CancelReason


class ExpiredEvent(NamedTuple):
    seq: int
    kind: EventKind
    symbol: str
    order_id: str
    account: str
    leaves: int


class TriggeredEvent(NamedTuple):
    seq: int
    kind: EventKind
    symbol: str
    order_id: str
    account: str
    last_price: int


class ReplacedEvent(NamedTuple):
    seq: int
    kind: EventKind
    symbol: str
    order_id: str
    account: str
    price: int
    leaves: int
    priority_kept: bool


class BboEvent(NamedTuple):
    """Top of book; an empty side has price None and quantity 0."""

    seq: int
    kind: EventKind
    symbol: str
    bid_price: int | None
    bid_qty: int
    ask_price: int | None
    ask_qty: int


class SymbolAddedEvent(NamedTuple):
    seq: int
    kind: EventKind
    symbol: str


EventRecord: TypeAlias = (
    AcceptedEvent
    | RejectedEvent
    | TradeEvent
    | CancelledEvent
    | ExpiredEvent
    | TriggeredEvent
    | ReplacedEvent
    | BboEvent
    | SymbolAddedEvent
)

EVENT_RECORDS: dict[EventKind, type[EventRecord]] = {
    EventKind.ACCEPTED: AcceptedEvent,
    EventKind.REJECTED: RejectedEvent,
    EventKind.TRADE: TradeEvent,
    EventKind.CANCELLED: CancelledEvent,
    EventKind.EXPIRED: ExpiredEvent,
    EventKind.TRIGGERED: TriggeredEvent,
    EventKind.REPLACED: ReplacedEvent,
    EventKind.BBO: BboEvent,
    EventKind.SYMBOL_ADDED: SymbolAddedEvent,
}


def decode_event(event: Event) -> EventRecord:
    """Named view of an engine event tuple."""
    return EVENT_RECORDS[event[1]]._make(event)


def event_to_dict(event: Event) -> dict[str, Any]:
    """JSON-ready mapping of an event (enums become their integer values)."""
    record = decode_event(event)
    return {name: _plain(value) for name, value in zip(record._fields, record, strict=True)}


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, IntEnum) else value


class OrderUpdate(NamedTuple):
    """One order's state after an event, for consumers that track order status."""

    order_id: str
    account: str
    status: OrderStatus
    leaves: int


def order_updates(event: Event) -> list[OrderUpdate]:
    """State transitions an event implies (a trade moves both of its orders)."""
    kind = event[1]
    if kind == EventKind.TRADE:
        t = TradeEvent._make(event)
        return [
            OrderUpdate(t.taker_order_id, t.taker_account, _fill_status(t.taker_leaves), t.taker_leaves),
            OrderUpdate(t.maker_order_id, t.maker_account, _fill_status(t.maker_leaves), t.maker_leaves),
        ]
    if kind == EventKind.ACCEPTED:
        a = AcceptedEvent._make(event)
        return [OrderUpdate(a.order_id, a.account, OrderStatus.OPEN, a.qty)]
    if kind == EventKind.CANCELLED:
        c = CancelledEvent._make(event)
        return [OrderUpdate(c.order_id, c.account, OrderStatus.CANCELLED, 0)]
    if kind == EventKind.EXPIRED:
        e = ExpiredEvent._make(event)
        return [OrderUpdate(e.order_id, e.account, OrderStatus.EXPIRED, 0)]
    return []


def _fill_status(leaves: int) -> OrderStatus:
    return OrderStatus.FILLED if leaves == 0 else OrderStatus.PARTIALLY_FILLED


class BookTop(NamedTuple):
    symbol: str
    bid_price: int | None
    bid_qty: int
    ask_price: int | None
    ask_qty: int


class DepthLevel(NamedTuple):
    price: int
    qty: int
    orders: int


class DepthSnapshot(NamedTuple):
    """Top-N visible levels per side, best first, as of event ``seq`` (last emitted)."""

    symbol: str
    seq: int
    bids: tuple[DepthLevel, ...]
    asks: tuple[DepthLevel, ...]

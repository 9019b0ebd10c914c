"""What the execution service knows about its clients' orders, fed by matching events.

Pure: matching event tuples and transaction outcomes in, the ids of the orders that
changed out (the service persists exactly those). Orders of other clients that show up
in the same events (the other side of a trade, another service's orders) are ignored:
execution reports only the orders it placed.

Event tuples are the engine's (see ``matching.core.types``):
ACCEPTED ``(seq, kind, symbol, order_id, account, side, price, qty, type)``,
REJECTED ``(seq, kind, cmd_id, symbol, order_id, reason)``,
TRADE ``(seq, kind, symbol, price, qty, side, taker_id, taker_acct, taker_leaves, maker_id, ...)``,
CANCELLED ``(seq, kind, symbol, order_id, account, leaves, reason)``,
EXPIRED ``(seq, kind, symbol, order_id, account, leaves)``,
BBO ``(seq, kind, symbol, bid_price, bid_qty, ask_price, ask_qty)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trading_system.execution.order_state import InvalidTransition, OrderState, OrderStatus
from trading_system.execution.slippage import slippage_bps
from trading_system.matching.core import CancelReason, EventKind, RejectReason

LIVE = frozenset({OrderStatus.PENDING, OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED})


@dataclass(slots=True)
class OrderRecord:
    """One client order: what was asked, what happened, and the prices to judge it by."""

    order_id: str
    client_order_id: str
    account: str
    symbol: str
    side: str
    order_type: str
    time_in_force: str
    qty: int
    price: int | None
    created_at: float
    post_only: bool = False
    arrival_price: float | None = None
    parent_id: str | None = None
    replaces: str | None = None
    cancel_requested: bool = False
    state: OrderState = field(init=False)

    def __post_init__(self) -> None:
        self.state = OrderState(self.order_id, self.qty)

    @property
    def status(self) -> OrderStatus:
        return self.state.status

    @property
    def live(self) -> bool:
        return self.state.status in LIVE

    def fill_slippage(self, price: float) -> tuple[float | None, float | None]:
        """(vs arrival, vs limit) in basis points; positive is a cost to the client."""
        arrival = slippage_bps(self.side, price, self.arrival_price) if self.arrival_price else None
        limit = slippage_bps(self.side, price, self.price) if self.price else None
        return arrival, limit

    def to_json(self) -> dict[str, Any]:
        s = self.state
        avg = s.average_price
        vs_arrival, vs_limit = self.fill_slippage(avg) if avg is not None else (None, None)
        fills = []
        for f in s.fills:
            fa, fl = self.fill_slippage(f.price)
            fills.append(
                {
                    "trade_id": f.trade_id,
                    "qty": f.qty,
                    "price": f.price,
                    "vs_arrival_bps": fa,
                    "vs_limit_bps": fl,
                }
            )
        return {
            "order_id": self.order_id,
            "client_order_id": self.client_order_id,
            "account": self.account,
            "symbol": self.symbol,
            "side": self.side,
            "order_type": self.order_type,
            "time_in_force": self.time_in_force,
            "post_only": self.post_only,
            "qty": self.qty,
            "price": self.price,
            "status": s.status.value,
            "filled_qty": s.filled_qty,
            "remaining_qty": s.remaining_qty,
            "average_price": avg,
            "reason": s.reason,
            "parent_id": self.parent_id,
            "replaces": self.replaces,
            "cancel_requested": self.cancel_requested,
            "created_at": self.created_at,
            "arrival_price": self.arrival_price,
            "slippage": {"vs_arrival_bps": vs_arrival, "vs_limit_bps": vs_limit},
            "fills": fills,
        }


@dataclass(frozen=True, slots=True)
class FillReport:
    """A fill applied to one of our orders, for metrics."""

    order_id: str
    qty: int
    price: int
    vs_arrival_bps: float | None
    vs_limit_bps: float | None


@dataclass(slots=True)
class Applied:
    changed: set[str] = field(default_factory=set)
    fills: list[FillReport] = field(default_factory=list)


def _reason_name(enum: type[RejectReason] | type[CancelReason], value: Any) -> str:
    try:
        return enum(int(value)).name.lower()
    except (ValueError, TypeError):
        return str(value)


@dataclass(slots=True)
class ExecutionBook:
    orders: dict[str, OrderRecord] = field(default_factory=dict)
    by_client: dict[tuple[str, str], str] = field(default_factory=dict)
    mids: dict[str, float] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    # -- orders ---------------------------------------------------------------------------

    def has_client_id(self, account: str, client_order_id: str) -> bool:
        return (account, client_order_id) in self.by_client

    def add(self, record: OrderRecord) -> None:
        self.orders[record.order_id] = record
        self.by_client[(record.account, record.client_order_id)] = record.order_id

    def remove(self, order_id: str) -> None:
        record = self.orders.pop(order_id, None)
        if record is not None:
            self.by_client.pop((record.account, record.client_order_id), None)

    def replace_all(self, records: Iterable[OrderRecord]) -> None:
        self.orders.clear()
        self.by_client.clear()
        for record in records:
            self.add(record)

    def get(self, order_id: str) -> OrderRecord | None:
        return self.orders.get(order_id)

    def select(
        self,
        account: str | None = None,
        symbol: str | None = None,
        status: str | None = None,
        live_only: bool = False,
    ) -> list[OrderRecord]:
        return [
            r
            for r in self.orders.values()
            if (account is None or r.account == account)
            and (symbol is None or r.symbol == symbol)
            and (status is None or r.status.value == status)
            and (not live_only or r.live)
        ]

    def mid(self, symbol: str) -> float | None:
        return self.mids.get(symbol)

    # -- events ---------------------------------------------------------------------------

    def apply_events(self, venue: str, events: Sequence[Sequence[Any]]) -> Applied:
        applied = Applied()
        for event in events:
            try:
                self._apply(venue, event, applied)
            except InvalidTransition:
                # A late or repeated event for an order already terminal: report, don't fail.
                self.counts["anomalies"] += 1
        return applied

    def _apply(self, venue: str, event: Sequence[Any], applied: Applied) -> None:
        kind = event[1]
        if kind == EventKind.BBO:
            bid, ask = event[3], event[5]
            if bid is not None and ask is not None:
                self.mids[event[2]] = (bid + ask) / 2
            elif bid is not None or ask is not None:
                self.mids[event[2]] = float(bid if bid is not None else ask)
            return
        if kind == EventKind.TRADE:
            self._trade(venue, event, applied)
            return
        order_id = event[4] if kind == EventKind.REJECTED else event[3]
        record = self.orders.get(order_id)
        if record is None:
            return
        state = record.state
        if kind == EventKind.ACCEPTED:
            if state.status is OrderStatus.PENDING:
                state.accept()
                applied.changed.add(order_id)
        elif kind == EventKind.REJECTED:
            if state.status is OrderStatus.PENDING:
                state.reject(f"venue rejected: {_reason_name(RejectReason, event[5])}")
                applied.changed.add(order_id)
        elif kind == EventKind.CANCELLED:
            if not state.is_terminal:
                state.cancel(_reason_name(CancelReason, event[6]))
                applied.changed.add(order_id)
        elif kind == EventKind.EXPIRED and not state.is_terminal:
            state.expire()
            applied.changed.add(order_id)

    def _trade(self, venue: str, event: Sequence[Any], applied: Applied) -> None:
        seq, _, symbol, price, qty = event[:5]
        trade_id = f"{venue}:{symbol}:{seq}"
        for order_id in (event[6], event[9]):
            record = self.orders.get(order_id)
            if record is None:
                continue
            if record.state.fill(trade_id, int(qty), int(price)):
                applied.changed.add(order_id)
                vs_arrival, vs_limit = record.fill_slippage(int(price))
                applied.fills.append(FillReport(order_id, int(qty), int(price), vs_arrival, vs_limit))

    def outcome(self, order_id: str, committed: bool, reason: str) -> bool:
        """A transaction's end; an aborted placement still pending shows rejected."""
        record = self.orders.get(order_id)
        if record is None or committed or record.state.status is not OrderStatus.PENDING:
            return False
        record.state.reject(reason or "aborted")
        return True

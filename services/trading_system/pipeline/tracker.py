"""The execution tracker: order states from the venue's events, latency, BBO.

:class:`OrderBook` keeps :class:`~trading_system.execution.order_state.OrderState` per
order and is pure; :class:`ExecutionTracker` feeds it from the bus and stamps times.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trading_system.bus import Envelope, MessageBus
from trading_system.execution.order_state import InvalidTransition, OrderState, OrderStatus
from trading_system.matching.core import EventKind
from trading_system.pipeline.messages import DEFAULT_NAMES, Names
from trading_system.pipeline.venue import NEW_PREFIX, trade_id


@dataclass(frozen=True, slots=True)
class Bbo:
    bid_price: int | None
    bid_qty: int
    ask_price: int | None
    ask_qty: int


@dataclass(slots=True)
class OrderBook:
    """Every order execution has heard of, and what the venue said about it."""

    orders: dict[str, OrderState] = field(default_factory=dict)
    bbo: dict[str, Bbo] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    trade_ids: set[str] = field(default_factory=set)
    duplicate_trades: int = 0
    anomalies: int = 0
    accepted: list[str] = field(default_factory=list)

    def submitted(self, order_id: str, qty: int) -> None:
        self.orders[order_id] = OrderState(order_id, qty)
        self.counts["submitted"] += 1

    def apply(self, venue: str, event: Sequence[Any]) -> None:
        kind = event[1]
        try:
            if kind == EventKind.ACCEPTED:
                self._state(event[3], event[7]).accept()
                self.accepted.append(event[3])
                self.counts["accepted"] += 1
            elif kind == EventKind.REJECTED:
                if str(event[2]).startswith(NEW_PREFIX) and event[4]:
                    self._state(event[4], 0).reject(f"reason {event[5]}")
                    self.counts["rejected"] += 1
                else:
                    self.counts["cancel_rejected"] += 1
            elif kind == EventKind.TRADE:
                self._trade(venue, event)
            elif kind == EventKind.CANCELLED:
                self._state(event[3], 0).cancel(f"reason {event[6]}")
                self.counts["cancelled"] += 1
            elif kind == EventKind.EXPIRED:
                self._state(event[3], 0).expire()
                self.counts["expired"] += 1
            elif kind == EventKind.BBO:
                self.bbo[event[2]] = Bbo(event[3], event[4], event[5], event[6])
        except InvalidTransition:
            self.anomalies += 1

    def _trade(self, venue: str, event: Sequence[Any]) -> None:
        seq, _, symbol, price, qty = event[:5]
        tid = trade_id(venue, symbol, seq)
        if tid in self.trade_ids:
            self.duplicate_trades += 1
            return
        self.trade_ids.add(tid)
        self.counts["trades"] += 1
        for order_id in (event[6], event[9]):
            if self._state(order_id, qty).fill(tid, qty, price):
                self.counts["fills"] += 1

    def _state(self, order_id: str, qty: int) -> OrderState:
        state = self.orders.get(order_id)
        if state is None:
            state = self.orders[order_id] = OrderState(order_id, qty)
        return state

    def aborted(self, order_id: str, reason: str) -> None:
        """The 3PC transaction aborted: the client sees the order rejected."""
        state = self.orders.get(order_id)
        if state is not None and state.status is OrderStatus.PENDING:
            state.reject(reason)
            self.counts["aborted"] += 1

    def by_status(self) -> Counter[str]:
        return Counter(state.status.value for state in self.orders.values())

    def live(self, order_id: str) -> bool:
        state = self.orders.get(order_id)
        return state is not None and state.status in (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED)


def percentile(samples: Sequence[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class ExecutionTracker:
    def __init__(
        self, bus: MessageBus, clock: Callable[[], float] = time.perf_counter, names: Names = DEFAULT_NAMES
    ) -> None:
        self.bus = bus
        self.names = names
        self.clock = clock
        self.book = OrderBook()
        self.latencies: list[float] = []
        self.batches = 0
        self._sent_at: dict[str, float] = {}

    async def start(self) -> None:
        await self.bus.subscribe(self.names.execution, self.handle)

    def submitted(self, order_id: str, qty: int) -> None:
        self._sent_at[order_id] = self.clock()
        self.book.submitted(order_id, qty)

    async def handle(self, envelope: Envelope[Any]) -> None:
        message = envelope.payload
        now = self.clock()
        for event in message.events:
            if event[1] == EventKind.ACCEPTED:
                sent = self._sent_at.pop(event[3], None)
                if sent is not None:
                    self.latencies.append(now - sent)
            self.book.apply(message.venue, event)
        self.batches += 1

    def latency_ms(self, q: float) -> float | None:
        value = percentile(self.latencies[-20_000:], q)
        return None if value is None else value * 1000.0

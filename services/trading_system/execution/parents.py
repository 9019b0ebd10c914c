"""Parent orders: a client's large order sliced by a strategy into child orders.

Pure: the schedule is fixed when the parent is created (``algos``), the service's clock
says which slices are due, and progress is derived from the children's own states, so
there is one source of truth for fills. Child ids are ``<parent_id>.<slice index>``: a
slice released twice (a promoted standby resuming a parent) names the same order, which
the store and the matching engine both refuse to create twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trading_system.execution.algos import (
    ParentOrder,
    Slice,
    Strategy,
    chunk_schedule,
    twap_schedule,
    vwap_schedule,
)
from trading_system.execution.book import OrderRecord
from trading_system.execution.slippage import report


def build_schedule(strategy: Strategy, qty: int, params: Mapping[str, Any], start: float) -> list[Slice]:
    if strategy is Strategy.CHUNK:
        return chunk_schedule(
            qty, int(params["chunk_size"]), start, float(params.get("interval_seconds", 0.0))
        )
    if strategy is Strategy.TWAP:
        return twap_schedule(qty, int(params["slices"]), start, float(params["duration_seconds"]))
    return vwap_schedule(qty, list(params["volume_profile"]), start, float(params["duration_seconds"]))


def child_id(parent_id: str, index: int) -> str:
    return f"{parent_id}.{index}"


@dataclass(slots=True)
class ParentRecord:
    parent_id: str
    client_order_id: str
    account: str
    symbol: str
    side: str
    time_in_force: str
    qty: int
    price: int | None
    strategy: Strategy
    params: dict[str, Any]
    created_at: float
    progress: ParentOrder
    arrival_price: float | None = None

    @property
    def order_type(self) -> str:
        return "limit" if self.price is not None else "market"

    def child(self, piece: Slice, now: float, arrival: float | None) -> OrderRecord:
        return OrderRecord(
            order_id=child_id(self.parent_id, piece.index),
            # '#' is not allowed in a client's own ids, so a child's can never collide with one.
            client_order_id=f"{self.client_order_id}#{piece.index}",
            account=self.account,
            symbol=self.symbol,
            side=self.side,
            order_type=self.order_type,
            time_in_force=self.time_in_force,
            qty=piece.qty,
            price=self.price,
            created_at=now,
            arrival_price=arrival,
            parent_id=self.parent_id,
        )

    def done(self, children: Iterable[OrderRecord]) -> bool:
        if self.progress.cancelled:
            return True
        released_all = len(self.progress.released) == len(self.progress.schedule)
        return released_all and all(not c.live for c in children)

    def to_json(self, children: list[OrderRecord]) -> dict[str, Any]:
        fills = [(f.qty, f.price) for c in children for f in c.state.fills]
        # Arrival is the parent's, not each child's: the cost of slicing is part of the result.
        summary = (
            report(self.side, fills, round(self.arrival_price), self.price) if self.arrival_price else None
        )
        filled = sum(q for q, _ in fills)
        average = sum(q * p for q, p in fills) / filled if filled else None
        p = self.progress
        return {
            "parent_id": self.parent_id,
            "client_order_id": self.client_order_id,
            "account": self.account,
            "symbol": self.symbol,
            "side": self.side,
            "qty": self.qty,
            "price": self.price,
            "time_in_force": self.time_in_force,
            "strategy": self.strategy.value,
            "params": self.params,
            "created_at": self.created_at,
            "arrival_price": self.arrival_price,
            "released_qty": p.released_qty,
            "filled_qty": filled,
            "average_price": average,
            "slices_released": len(p.released),
            "slices_total": len(p.schedule),
            "schedule": [{"index": s.index, "at": s.at, "qty": s.qty} for s in p.schedule],
            "cancelled": p.cancelled,
            "done": self.done(children),
            "slippage": {
                "vs_arrival_bps": summary.vs_arrival_bps if summary else None,
                "vs_limit_bps": summary.vs_limit_bps if summary else None,
            },
            "children": [c.order_id for c in children],
        }

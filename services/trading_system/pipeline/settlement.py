"""The settlement consumer: trades settle exactly once, leftover holds go back.

:func:`plan_events` is pure: it turns one ``matching.events`` message into ordered work,
trade settlements grouped into batches, with a release (of the order's remaining hold)
wherever an order was cancelled or expired. Order matters: a fill printed before a
cancel must draw on the hold before the rest is released.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from trading_system.bus import Envelope, MessageBus, TransientError
from trading_system.bus.consumer import Subscription
from trading_system.ledger import (
    BatchResult,
    FenceToken,
    Instrument,
    ReleaseResult,
    TradeSettlement,
    release,
    settle_trades,
    trade_settlement,
)
from trading_system.matching.core import EventKind, RejectReason, Side
from trading_system.pipeline.ledger_gate import LedgerGate
from trading_system.pipeline.messages import DEFAULT_NAMES, Names
from trading_system.pipeline.orders import txn_id_for
from trading_system.pipeline.venue import ABORT_CANCEL_PREFIX, CANCEL_PREFIX, trade_id


@dataclass(frozen=True, slots=True)
class Release:
    hold_id: str
    reason: str


Work = list[TradeSettlement] | Release


def plan_events(
    venue: str, events: Sequence[Sequence[Any]], instruments: dict[str, Instrument], fee_bps: int
) -> list[Work]:
    work: list[Work] = []
    batch: list[TradeSettlement] = []
    for event in events:
        kind = event[1]
        if kind == EventKind.TRADE:
            seq, _, symbol, price, qty, aggressor = event[:6]
            taker, taker_account, maker, maker_account = event[6], event[7], event[9], event[10]
            taker_side, maker_side = (taker_account, taker), (maker_account, maker)
            buyer, seller = (taker_side, maker_side) if aggressor == Side.BUY else (maker_side, taker_side)
            batch.append(
                trade_settlement(
                    instruments[symbol],
                    trade_id=trade_id(venue, symbol, seq),
                    price=price,
                    qty=qty,
                    buyer=buyer,
                    seller=seller,
                    buyer_fee_bps=fee_bps,
                    seller_fee_bps=fee_bps,
                )
            )
        elif kind in (EventKind.CANCELLED, EventKind.EXPIRED) or _aborted_order_gone(event):
            if batch:
                work.append(batch)
                batch = []
            if kind == EventKind.REJECTED:
                work.append(Release(txn_id_for(event[4]), "abort"))
            else:
                work.append(
                    Release(txn_id_for(event[3]), "cancel" if kind == EventKind.CANCELLED else "expired")
                )
    if batch:
        work.append(batch)
    return work


def _release_for(event: Sequence[Any]) -> Release:
    kind = event[1]
    if kind == EventKind.REJECTED:
        return Release(txn_id_for(event[4]), "abort")
    return Release(txn_id_for(event[3]), "cancel" if kind == EventKind.CANCELLED else "expired")


def _aborted_order_gone(event: Sequence[Any]) -> bool:
    """An abort's cancel the venue refused because it no longer knows the order (filled,
    cancelled, or never taken): the order's hold has nothing left to wait for."""
    return (
        event[1] == EventKind.REJECTED
        and str(event[2]).startswith(CANCEL_PREFIX + ABORT_CANCEL_PREFIX)
        and event[5] == RejectReason.UNKNOWN_ORDER
    )


@dataclass(slots=True)
class SettlementStats:
    settled: int = 0
    duplicates: int = 0
    failed: int = 0
    releases: int = 0
    batches: int = 0
    settled_ids: set[str] = field(default_factory=set)
    settled_twice: int = 0


class SettlementConsumer:
    def __init__(
        self,
        bus: MessageBus,
        ledger: LedgerGate,
        fence: FenceToken,
        instruments: dict[str, Instrument],
        fee_bps: int,
        names: Names = DEFAULT_NAMES,
    ) -> None:
        self.bus = bus
        self.names = names
        self.ledger = ledger
        self.fence = fence
        self.instruments = instruments
        self.fee_bps = fee_bps
        self.stats = SettlementStats()

    async def start(self) -> Subscription:
        # Several messages in flight so their ledger work shares group commits. Order is
        # kept where it matters: each handler queues all its ledger work before its first
        # await, handlers start in delivery order, and the gate runs work in queue order.
        return await self.bus.subscribe(self.names.settlement, self.handle, concurrency=16, prefetch=64)

    async def handle(self, envelope: Envelope[Any]) -> None:
        message = envelope.payload
        pending: list[asyncio.Future[Any]] = []
        for item in plan_events(message.venue, message.events, self.instruments, self.fee_bps):
            if isinstance(item, Release):
                pending.append(self.ledger.submit(partial(_release, fence=self.fence, work=item)))
            else:
                pending.append(self.ledger.submit(partial(settle_trades, fence=self.fence, trades=item)))
        failed: list[str] = []
        for outcome in await asyncio.gather(*pending):
            if isinstance(outcome, BatchResult):
                self._count(outcome)
                failed += [f"{trade.trade_id}: {exc}" for trade, exc in outcome.failed]
            else:
                self.stats.releases += 1
        self.stats.batches += 1
        if failed:
            # A trade happened at the venue; it must settle. Not acked: the message comes
            # back with backoff (what did settle is a duplicate then) and, if it keeps
            # failing, it is parked for an operator with the reasons, never dropped.
            raise TransientError(f"{len(failed)} trade(s) could not settle: {'; '.join(failed[:3])}")

    def _count(self, result: BatchResult) -> None:
        self.stats.duplicates += len(result.duplicates)
        self.stats.failed += len(result.failed)
        for settled in result.settled:
            if settled.trade_id in self.stats.settled_ids:
                self.stats.settled_twice += 1
            self.stats.settled_ids.add(settled.trade_id)
        self.stats.settled += len(result.settled)


async def _release(conn: AsyncConnection, *, fence: FenceToken, work: Release) -> ReleaseResult:
    return await release(conn, fence, work.hold_id, reason=work.reason)

"""The coordinator driver: runs one three-phase-commit transaction per order placement.

The state machine is ``coordinator.protocol`` (pure). This driver stores each step,
executes its effects (ledger reserve/bind/release, the risk vote, sending the order or
its cancel over the bus), feeds their outcomes back, listens to the venue's events for
accept/reject/cancel, and fires phase timeouts. Transactions are kept in memory here:
the embedded demo is one process; the service persists them in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from trading_system.bus import Envelope, MessageBus
from trading_system.bus.catalog import OrderCancel, OrderNew
from trading_system.bus.catalog.common import OrderType as WireOrderType
from trading_system.bus.catalog.common import Side as WireSide
from trading_system.coordinator import protocol as p
from trading_system.ledger import (
    FenceToken,
    HoldState,
    HoldStateError,
    Instrument,
    LedgerError,
    bind_hold,
    get_hold,
    release,
    reserve,
)
from trading_system.matching.core import EventKind, Side
from trading_system.pipeline.ledger_gate import LedgerGate
from trading_system.pipeline.messages import DEFAULT_NAMES, Names
from trading_system.pipeline.orders import (
    OrderRequest,
    RiskLimits,
    order_id_of,
    reservation,
    risk_vote,
    txn_id_for,
)
from trading_system.pipeline.venue import NEW_PREFIX

log = logging.getLogger(__name__)

RISK = "risk"
PARTICIPANTS = (p.LEDGER, RISK)


@dataclass(slots=True)
class CoordinatorStats:
    invalid_events: int = 0
    effect_errors: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


class CoordinatorDriver:
    def __init__(
        self,
        bus: MessageBus,
        ledger: LedgerGate,
        fence: FenceToken,
        instruments: dict[str, Instrument],
        *,
        fee_bps: int = 10,
        limits: RiskLimits | None = None,
        timeouts: p.PhaseTimeouts | None = None,
        owner: str = "coordinator-0",
        clock: Callable[[], float] = time.monotonic,
        names: Names = DEFAULT_NAMES,
        on_aborted: Callable[[OrderRequest, str], None] | None = None,
    ) -> None:
        self.bus = bus
        self.names = names
        self.on_aborted = on_aborted
        self.ledger = ledger
        self.fence = fence
        self.instruments = instruments
        self.fee_bps = fee_bps
        self.limits = limits or RiskLimits()
        self.timeouts = timeouts or p.PhaseTimeouts()
        self.owner = owner
        self.clock = clock
        self.transactions: dict[str, p.Transaction] = {}
        self.orders: dict[str, OrderRequest] = {}
        self.stats = CoordinatorStats()
        self._locks: dict[str, asyncio.Lock] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.bus.subscribe(self.names.coordinator, self.handle_events)
        self._sweeper = asyncio.create_task(self._sweep_timeouts(), name="coordinator-timeouts")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- placing ------------------------------------------------------------------------

    async def place(self, order: OrderRequest) -> p.Transaction:
        """Run the transaction up to the venue: returns once the order is sent or aborted."""
        txn_id = txn_id_for(order.order_id)
        now = self.clock()
        self.orders[txn_id] = order
        self.transactions[txn_id] = p.Transaction.new(txn_id, PARTICIPANTS, self.owner, now)
        await self.drive(txn_id, p.Begin(now))
        return self.transactions[txn_id]

    async def cancel(self, order: OrderRequest) -> None:
        """A client cancel goes straight to the venue; the venue's event closes the order."""
        await self.bus.publish(
            OrderCancel(order_id=order.order_id, account=order.account, symbol=order.symbol, reason="user"),
            exchange=self.names.exchange,
        )

    # -- the step loop --------------------------------------------------------------------

    async def drive(self, txn_id: str, event: p.Event) -> None:
        """Apply ``event`` and every outcome of the effects it causes, one at a time."""
        lock = self._locks.setdefault(txn_id, asyncio.Lock())
        async with lock:
            pending: list[p.Event] = [event]
            while pending:
                current = pending.pop(0)
                txn = self.transactions.get(txn_id)
                if txn is None:
                    self.stats.invalid_events += 1
                    return
                try:
                    step = p.apply(txn, current, self.timeouts)
                except p.InvalidTransition as exc:
                    self.stats.invalid_events += 1
                    log.debug("dropped: %s", exc)
                    continue
                self.transactions[txn_id] = step.transaction  # "persist" before acting
                if step.transaction.is_terminal and not txn.is_terminal:
                    self.stats.outcomes[step.transaction.phase.value] += 1
                    self._locks.pop(txn_id, None)
                    if step.transaction.phase is p.Phase.ABORTED and self.on_aborted is not None:
                        self.on_aborted(self.orders[txn_id], step.transaction.outcome_reason or "aborted")
                for effect in step.effects:
                    outcome = await self._execute(effect)
                    if outcome is not None:
                        pending.append(outcome)

    async def _execute(self, effect: p.Effect) -> p.Event | None:
        order = self.orders[effect.txn_id]
        try:
            match effect:
                case p.ReserveFunds():
                    return await self._reserve(effect.txn_id, order)
                case p.RequestVote():
                    yes, reason = risk_vote(order, self.limits)
                    value = p.VoteValue.YES if yes else p.VoteValue.NO
                    return p.VoteCast(effect.participant, value, reason, self.clock())
                case p.SendOrder():
                    exchange = self.names.exchange
                    await self.bus.publish(_order_new(order), exchange=exchange, transaction_id=effect.txn_id)
                    return None
                case p.BindHold():
                    return await self._bind(effect.txn_id, order)
                case p.ReleaseHold():
                    txn_id = effect.txn_id
                    await self.ledger.run(lambda c: release(c, self.fence, txn_id, reason="abort"))
                    return p.HoldReleased(self.clock())
                case p.CancelVenueOrder():
                    await self.cancel(order)
                    return None
                case p.RecordAudit():
                    log.warning("audit %s", effect)
                    return None
        except Exception:
            # Left to the phase timeout, which re-drives (or aborts) from the stored phase.
            self.stats.effect_errors += 1
            log.exception("effect %s failed", effect)
        return None

    async def _reserve(self, txn_id: str, order: OrderRequest) -> p.Event:
        need = reservation(order, self.instruments[order.symbol], self.fee_bps)
        try:
            await self.ledger.run(
                lambda c: reserve(
                    c,
                    self.fence,
                    hold_id=txn_id,
                    account_id=order.account,
                    asset=need.asset,
                    amount=need.amount,
                    order_qty=order.qty,
                    order_id=order.order_id,
                )
            )
        except LedgerError as exc:
            return p.VoteCast(p.LEDGER, p.VoteValue.NO, f"{type(exc).__name__}: {exc}", self.clock())
        return p.VoteCast(p.LEDGER, p.VoteValue.YES, f"held {need.amount} {need.asset}", self.clock())

    async def _bind(self, txn_id: str, order: OrderRequest) -> p.Event:
        try:
            await self.ledger.run(lambda c: bind_hold(c, self.fence, txn_id, order.order_id))
        except HoldStateError:
            # The order already ended at the venue (cancelled) and settlement released
            # the rest of its hold before this bind ran: nothing is left to bind.
            hold = await self.ledger.run(lambda c: get_hold(c, txn_id))
            if hold is None or hold.order_id != order.order_id or hold.state is not HoldState.RELEASED:
                raise
        return p.HoldBound(self.clock())

    # -- venue events ---------------------------------------------------------------------

    async def handle_events(self, envelope: Envelope[Any]) -> None:
        now = self.clock()
        for event in envelope.payload.events:
            kind = event[1]
            if kind == EventKind.ACCEPTED:
                await self._maybe_drive(txn_id_for(event[3]), p.VenueAccepted(now))
            elif kind == EventKind.REJECTED and str(event[2]).startswith(NEW_PREFIX) and event[4]:
                await self._maybe_drive(txn_id_for(event[4]), p.VenueRejected(f"reason {event[5]}", now))
            elif kind == EventKind.CANCELLED:
                txn_id = txn_id_for(event[3])
                txn = self.transactions.get(txn_id)
                if txn is not None and txn.phase is p.Phase.ABORTING:
                    self._spawn(txn_id, p.VenueOrderCancelled(now))

    async def _maybe_drive(self, txn_id: str, event: p.Event) -> None:
        if txn_id in self.transactions:
            self._spawn(txn_id, event)

    def _spawn(self, txn_id: str, event: p.Event) -> None:
        # Transactions advance concurrently (their ledger writes share group commits);
        # one transaction's events still apply in arrival order: asyncio.Lock is FIFO and
        # each task reaches it in creation order.
        task = asyncio.create_task(self.drive(txn_id, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- timeouts -------------------------------------------------------------------------

    async def fire_due_timeouts(self) -> int:
        now = self.clock()
        due = [
            (txn.txn_id, txn.phase)
            for txn in list(self.transactions.values())
            if not txn.is_terminal
            and (deadline := txn.deadline(self.timeouts)) is not None
            and deadline <= now
        ]
        for txn_id, phase in due:
            await self.drive(txn_id, p.Timeout(phase, now))
        return len(due)

    async def _sweep_timeouts(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            await self.fire_due_timeouts()

    # -- views ----------------------------------------------------------------------------

    def phases(self) -> Counter[str]:
        return Counter(txn.phase.value for txn in self.transactions.values())

    def open_transactions(self) -> list[p.Transaction]:
        return [txn for txn in self.transactions.values() if not txn.is_terminal]

    def order_of(self, txn_id: str) -> str:
        return order_id_of(txn_id)


def _order_new(order: OrderRequest) -> OrderNew:
    return OrderNew(
        order_id=order.order_id,
        client_order_id=order.order_id,
        account=order.account,
        symbol=order.symbol,
        side=WireSide.BUY if order.side == Side.BUY else WireSide.SELL,
        order_type=WireOrderType.LIMIT,
        qty=Decimal(order.qty),
        price=Decimal(order.price),
    )

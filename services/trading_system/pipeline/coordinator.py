"""The coordinator driver: runs one three-phase-commit transaction per order placement.

The state machine is ``coordinator.protocol`` (pure). This driver stores each step in a
``TransactionStore``, executes its effects (ledger reserve/bind/release, the risk vote,
sending the order or its cancel over the bus), feeds their outcomes back, listens to the
venue's events for accept/reject/cancel, and fires phase timeouts. The embedded demo
uses the in-memory store; the coordinator service (``coordinator.service``) gives the
same driver a ``SqlStore``, so N replicas share the transactions through PostgreSQL.

Every step runs under the transaction's lease (see ``coordinator.store``): claimed
before the event is applied, released once its effects ran. A replica that finds a
lease its owner let expire takes the transaction over (``LeaseAcquired``) and re-drives
the persisted phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from trading_system.bus import Envelope, MessageBus
from trading_system.bus.catalog import OrderCancel, OrderNew
from trading_system.bus.catalog.common import OrderType as WireOrderType
from trading_system.bus.catalog.common import Side as WireSide
from trading_system.bus.envelope import new_message_id
from trading_system.coordinator import protocol as p
from trading_system.coordinator.risk import RiskContext, RiskPolicy, evaluate
from trading_system.coordinator.store import (
    AuditEntry,
    Claim,
    LeaseBusyError,
    LeaseLostError,
    MemoryStore,
    TransactionStore,
)
from trading_system.ledger import (
    FenceToken,
    HoldState,
    HoldStateError,
    Instrument,
    LedgerError,
    bind_hold,
    get_balance,
    get_hold,
    release,
    reserve,
)
from trading_system.matching.core import EventKind, RejectReason, Side
from trading_system.pipeline.messages import DEFAULT_NAMES, Names
from trading_system.pipeline.orders import (
    OrderRequest,
    RiskLimits,
    order_id_of,
    reservation,
    txn_id_for,
)
from trading_system.pipeline.venue import ABORT_CANCEL_PREFIX, CANCEL_PREFIX, NEW_PREFIX
from trading_system.storage import FencedError
from trading_system.storage.transactions import Database

log = logging.getLogger(__name__)

RISK = "risk"
PARTICIPANTS = (p.LEDGER, RISK)
T = TypeVar("T")


@dataclass(slots=True)
class CoordinatorStats:
    invalid_events: int = 0
    effect_errors: int = 0
    takeovers: int = 0
    lease_lost: int = 0
    duplicates: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class DriverHooks:
    """What a deployment adds around the steps: metrics, announcing outcomes, test hooks."""

    on_saved: Callable[[p.Transaction, p.Transaction], None] | None = None
    on_takeover: Callable[[p.Transaction, str | None], None] | None = None
    on_finished: Callable[[p.Transaction, OrderRequest], Awaitable[None]] | None = None


class LedgerRunner(Protocol):
    """Runs a ledger operation in a committed transaction: ``LedgerGate`` (group commit,
    the demo's single SQLite writer) or ``DirectLedger`` (one transaction each)."""

    @property
    def db(self) -> AsyncEngine: ...

    async def run(self, operation: Callable[[Database], Awaitable[T]]) -> T: ...


class DirectLedger:
    """Each operation in its own transaction, concurrently: on PostgreSQL this beats one
    group-commit writer, whose batches run their operations one after the other.

    The operation gets the engine, not a connection in a transaction: every ledger
    operation opens its own transaction from an engine, and the hot ones (reserve, bind,
    release) are then one autocommitted statement on PostgreSQL, without the BEGIN and
    COMMIT round trips (see ``ledger.procedures``).
    """

    def __init__(self, db: AsyncEngine, *, concurrency: int | None = None) -> None:
        self._db = db
        # At most this many at once: more than the pool holds makes the pool open and close
        # overflow connections all the time (a connect, asyncpg's type introspection and
        # the statements prepared again, each time), which profiles showed as a sixth of
        # a busy replica's CPU.
        self._slots = asyncio.Semaphore(concurrency) if concurrency else None

    @property
    def db(self) -> AsyncEngine:
        return self._db

    async def run(self, operation: Callable[[Database], Awaitable[T]]) -> T:
        if self._slots is None:
            return await operation(self._db)
        async with self._slots:
            return await operation(self._db)


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """``ttl``: how long a claimed lease lasts without a save or renewal (the takeover
    bound); ``claim_wait``: how long an event waits for another replica's live lease."""

    ttl: float = 5.0
    claim_wait: float = 10.0


class CoordinatorDriver:
    def __init__(
        self,
        bus: MessageBus,
        ledger: LedgerRunner,
        fence: FenceToken,
        instruments: dict[str, Instrument],
        *,
        fee_bps: int = 10,
        limits: RiskLimits | None = None,
        risk: RiskPolicy | None = None,
        timeouts: p.PhaseTimeouts | None = None,
        owner: str = "coordinator-0",
        clock: Callable[[], float] = time.monotonic,
        names: Names = DEFAULT_NAMES,
        on_aborted: Callable[[OrderRequest, str], None] | None = None,
        store: TransactionStore | None = None,
        lease: LeaseSettings = LeaseSettings(),
        hooks: DriverHooks | None = None,
        keep_transactions: bool = True,
        fence_source: Callable[[], Awaitable[FenceToken]] | None = None,
        sweep_interval: float = 0.25,
    ) -> None:
        self.bus = bus
        self.names = names
        self.on_aborted = on_aborted
        self.ledger = ledger
        self.fence = fence
        self.fence_source = fence_source
        self.instruments = instruments
        self.fee_bps = fee_bps
        self.risk = risk or RiskPolicy(limits or RiskLimits())
        self.timeouts = timeouts or p.PhaseTimeouts()
        self.store: TransactionStore = store or MemoryStore()
        self.lease = lease
        self.hooks = hooks or DriverHooks()
        self.owner = owner
        self.clock = clock
        self.sweep_interval = sweep_interval
        # A view of what this process stepped: the demo's summary reads it; a service
        # replica keeps none (the store is the truth, and it would grow forever).
        self.keep_transactions = keep_transactions
        self.transactions: dict[str, p.Transaction] = {}
        self.stats = CoordinatorStats()
        self._locks: dict[str, asyncio.Lock] = {}
        self.in_flight: set[str] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._placing: asyncio.Semaphore | None = None
        self._driving: asyncio.Semaphore | None = None

    async def start(self, *, await_events: bool = False, concurrency: int = 32) -> None:
        """``await_events``: handle venue events before acknowledging them (a service
        replica must, or a crash loses them); the demo lets them run concurrently.
        ``concurrency``: venue messages handled at once when awaited."""
        handler = self.handle_events_now if await_events else self.handle_events
        await self.bus.subscribe(
            self.names.coordinator, handler, concurrency=concurrency if await_events else 1
        )
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="coordinator-timeouts")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- placing ------------------------------------------------------------------------

    async def place(
        self, order: OrderRequest, *, created: asyncio.Future[Any] | None = None
    ) -> p.Transaction | None:
        """Run the transaction up to the venue: returns once the order is sent or aborted.

        A second placement of the same order id starts nothing (None): the transaction
        id is derived from the order id, and the store keeps one row per id. ``created``
        is resolved once the creation is committed (True) or found a duplicate (False).
        """
        txn_id = txn_id_for(order.order_id)
        now = self.clock()
        txn = p.Transaction.new(txn_id, PARTICIPANTS, self.owner, now)
        lock = self._locks.setdefault(txn_id, asyncio.Lock())
        async with lock:
            new = await self.store.create(
                txn, order, self.owner, now, self.lease.ttl, txn.deadline(self.timeouts)
            )
            _resolve(created, new)
            if not new:
                self.stats.duplicates += 1
                return None
            return await self._run(Claim(txn, order, taken_over=False, previous_owner=None), p.Begin(now))

    async def place_detached(self, order: OrderRequest, *, limit: int = 256) -> bool:
        """Create the transaction, then run it in the background; True if it was created.

        Returns once the creation is committed: from then on the transaction cannot be
        lost (if this replica dies, the sweep of another takes it over in ``INIT`` and
        sends ``Begin``), so the request may be acknowledged. Why: the bus hands the items
        of a batched request message to the handler one after the other, and running
        each placement to the venue before taking the next made a batch as slow as all
        its placements in a row. ``limit`` bounds the placements running at once (the
        request's wait for a slot is the back pressure).
        """
        if self._placing is None:
            self._placing = asyncio.Semaphore(limit)
        created = await self._detach(
            self._placing, lambda signal: self.place(order, created=signal), f"placement of {order.order_id}"
        )
        return bool(created)

    async def cancel(self, order: OrderRequest, *, compensation: bool = False) -> None:
        """A client cancel goes straight to the venue; the venue's event closes the order.

        An abort's cancel carries a message id starting with ``ABORT_CANCEL_PREFIX`` (it
        becomes the venue's command id): when the venue no longer knows the order,
        settlement reads that as "the order is gone" and releases the rest of its hold,
        in venue order, after any fill that came first.
        """
        reason = "abort" if compensation else "user"
        message_id = f"{ABORT_CANCEL_PREFIX}{new_message_id()}" if compensation else new_message_id()
        await self.bus.publish(
            OrderCancel(order_id=order.order_id, account=order.account, symbol=order.symbol, reason=reason),
            exchange=self.names.exchange,
            message_id=message_id,
        )

    # -- the step loop --------------------------------------------------------------------

    async def drive(
        self,
        txn_id: str,
        event: p.Event | None,
        *,
        wait: bool = True,
        durable: asyncio.Future[Any] | None = None,
    ) -> p.Transaction | None:
        """Apply ``event`` (None: only take over or time out what is due) under the lease.

        Returns the transaction after the step, or None if it is unknown or another
        replica kept its lease for longer than ``claim_wait``.
        """
        lock = self._locks.setdefault(txn_id, asyncio.Lock())
        async with lock:
            claim = await self._claim(txn_id, self.lease.claim_wait if wait else 0.0)
            if claim is None:
                if txn_id not in self.transactions:
                    self._locks.pop(txn_id, None)
                return None
            if event is None:
                event = self._sweep_event(claim)
            return await self._run(claim, event, durable)

    def _sweep_event(self, claim: Claim) -> p.Event | None:
        """What a sweep applies: the due timeout, or ``Begin`` for a creation whose replica died."""
        txn, now = claim.transaction, self.clock()
        if claim.taken_over:
            return p.Begin(now) if txn.phase is p.Phase.INIT else None  # resume() re-drives the rest
        deadline = txn.deadline(self.timeouts)
        return p.Timeout(txn.phase, now) if deadline is not None and deadline <= now else None

    async def _claim(self, txn_id: str, wait: float) -> Claim | None:
        give_up = self.clock() + wait
        delay = 0.005
        while True:
            try:
                return await self.store.claim(txn_id, self.owner, self.clock(), self.lease.ttl)
            except LeaseBusyError:
                # Another replica is mid-step (usually for milliseconds); if it died, its
                # lease expires within the ttl and the next attempt takes over.
                if self.clock() + delay > give_up:
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)

    async def _run(
        self, claim: Claim, event: p.Event | None, durable: asyncio.Future[Any] | None = None
    ) -> p.Transaction:
        # Only leases of steps in progress are renewed (placements included): a step that
        # died on a database error lets its lease expire, and a sweep takes it over.
        self.in_flight.add(claim.transaction.txn_id)
        try:
            return await self._step(claim, event, durable)
        finally:
            self.in_flight.discard(claim.transaction.txn_id)

    async def _step(
        self, claim: Claim, event: p.Event | None, durable: asyncio.Future[Any] | None = None
    ) -> p.Transaction:
        """Apply the events and run their effects; ``durable`` is resolved once the first
        step is saved (the event is then part of the stored transaction)."""
        txn, order = claim.transaction, claim.order
        pending: list[p.Event] = []
        if claim.taken_over:
            self.stats.takeovers += 1
            if self.hooks.on_takeover is not None:
                self.hooks.on_takeover(txn, claim.previous_owner)
            pending.append(p.LeaseAcquired(self.owner, self.clock()))
        elif txn.owner != self.owner:
            txn = replace(txn, owner=self.owner)  # a clean hand-over: the last owner released it
        if event is not None:
            pending.append(event)
        released, saved = False, txn
        try:
            while pending:
                step = self._apply(txn, pending.pop(0))
                if step is None:
                    continue
                txn = step.transaction
                if not step.effects and pending:
                    continue  # nothing acts on this state yet: one save covers it and the next
                released = not step.effects and not pending
                saved = txn = await self._save(saved, txn, order, released)
                _resolve(durable)
                for effect in step.effects:
                    outcome = await self._execute(effect, order)
                    if outcome is not None:
                        pending.append(outcome)
            if txn is not saved:  # the events after the last save were refused
                released = True
                saved = txn = await self._save(saved, txn, order, released)
                _resolve(durable)
        except LeaseLostError:
            self.stats.lease_lost += 1
            released = True  # not ours any more: nothing to release
            log.warning("lost the lease of %s; its new owner carries on", txn.txn_id)
        finally:
            if not released:
                with contextlib.suppress(Exception):
                    await self.store.release(txn.txn_id, self.owner)
        return txn

    def _apply(self, txn: p.Transaction, event: p.Event) -> p.Step | None:
        try:
            return p.apply(txn, event, self.timeouts)
        except p.InvalidTransition as exc:
            self.stats.invalid_events += 1
            log.debug("dropped: %s", exc)
            return None

    async def _save(
        self, before: p.Transaction, after: p.Transaction, order: OrderRequest, release_lease: bool
    ) -> p.Transaction:
        """Persist before acting: the decision is durable before any effect of it runs."""
        deadline = after.deadline(self.timeouts)
        await self.store.save(
            before, after, self.owner, self.clock(), self.lease.ttl, release_lease, deadline
        )
        if self.keep_transactions:
            self.transactions[after.txn_id] = after
        if self.hooks.on_saved is not None:
            self.hooks.on_saved(before, after)
        if after.is_terminal and not before.is_terminal:
            await self._finished(after, order)
        return after

    async def _finished(self, txn: p.Transaction, order: OrderRequest) -> None:
        self.stats.outcomes[txn.phase.value] += 1
        self._locks.pop(txn.txn_id, None)
        if txn.phase is p.Phase.ABORTED and self.on_aborted is not None:
            self.on_aborted(order, txn.outcome_reason or "aborted")
        if self.hooks.on_finished is not None:
            try:
                await self.hooks.on_finished(txn, order)
            except Exception:
                # The outcome stays unpublished in the store; the outbox sweep retries it.
                log.exception("announcing the outcome of %s failed", txn.txn_id)

    # -- effects --------------------------------------------------------------------------

    async def _execute(self, effect: p.Effect, order: OrderRequest) -> p.Event | None:
        try:
            match effect:
                case p.ReserveFunds():
                    return await self._reserve(effect.txn_id, order)
                case p.RequestVote():
                    yes, reason = await self._risk_vote(effect.txn_id, order)
                    value = p.VoteValue.YES if yes else p.VoteValue.NO
                    return p.VoteCast(effect.participant, value, reason, self.clock())
                case p.SendOrder():
                    exchange = self.names.exchange
                    await self.bus.publish(order_new(order), exchange=exchange, transaction_id=effect.txn_id)
                    return None
                case p.BindHold():
                    return await self._bind(effect.txn_id, order)
                case p.ReleaseHold():
                    txn_id = effect.txn_id
                    await self._ledger(lambda c, fence: release(c, fence, txn_id, reason="abort"))
                    return p.HoldReleased(self.clock())
                case p.CancelVenueOrder():
                    await self.cancel(order, compensation=True)
                    return None
                case p.RecordAudit():
                    entry = AuditEntry(
                        effect.txn_id, self.clock(), effect.action, effect.actor, effect.reason
                    )
                    await self.store.record_audit(entry)
                    return None
        except Exception:
            # Left to the phase timeout, which re-drives (or aborts) from the stored phase.
            self.stats.effect_errors += 1
            log.exception("effect %s failed", effect)
        return None

    async def _ledger(self, operation: Callable[[Database, FenceToken], Awaitable[T]]) -> T:
        """Run a ledger write; after a failover of the fence's pair, retry once at the new epoch."""
        try:
            return await self.ledger.run(lambda c: operation(c, self.fence))
        except FencedError:
            if self.fence_source is None:
                raise
            self.fence = await self.fence_source()
            return await self.ledger.run(lambda c: operation(c, self.fence))

    async def _reserve(self, txn_id: str, order: OrderRequest) -> p.Event:
        need = reservation(order, self.instruments[order.symbol], self.fee_bps)
        try:
            await self._ledger(
                lambda c, fence: reserve(
                    c,
                    fence,
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

    async def _risk_vote(self, txn_id: str, order: OrderRequest) -> tuple[bool, str]:
        instrument = self.instruments[order.symbol]
        need = reservation(order, instrument, self.fee_bps)
        cost = need.amount if order.side == Side.BUY else 0
        context = RiskContext()
        if self.risk.needs_context:
            context = await self._risk_context(txn_id, order, instrument)
        return evaluate(self.risk, order, cost, context)

    async def _risk_context(self, txn_id: str, order: OrderRequest, instrument: Instrument) -> RiskContext:
        db = self.ledger.db
        position = (await get_balance(db, order.account, instrument.base_asset)).total
        held = (await get_balance(db, order.account, instrument.quote_asset)).held
        own = await get_hold(db, txn_id)
        if own is not None and own.state is HoldState.RESERVED and own.asset == instrument.quote_asset:
            held -= own.remaining  # the ledger voted first: its hold for this order is in ``held``
        since = self.clock() - self.risk.window
        recent = await self.store.recent_orders(order.account, since, txn_id)
        return RiskContext(position=position, exposure=max(held, 0), recent_orders=recent)

    async def _bind(self, txn_id: str, order: OrderRequest) -> p.Event:
        try:
            await self._ledger(lambda c, fence: bind_hold(c, fence, txn_id, order.order_id))
        except HoldStateError:
            # The order already ended at the venue (cancelled) and settlement released
            # the rest of its hold before this bind ran: nothing is left to bind.
            hold = await self.ledger.run(lambda c: get_hold(c, txn_id))
            if hold is None or hold.order_id != order.order_id or hold.state is not HoldState.RELEASED:
                raise
        return p.HoldBound(self.clock())

    # -- venue events ---------------------------------------------------------------------

    async def handle_events(self, envelope: Envelope[Any]) -> None:
        """The demo's handler: each transaction's events run as their own task."""
        for txn_id, event in venue_events(envelope.payload.events, self.clock()):
            self._spawn(txn_id, event)

    async def handle_events_now(self, envelope: Envelope[Any]) -> None:
        """The service's handler: the events are stored before the message is acknowledged.

        Each event's step goes on in the background once the event is saved (see
        ``drive_detached``): the bus hands a batched message's items over one after the
        other, and waiting for every bind and outcome in a row made the venue's answers
        to a whole runner batch wait for each other.
        """
        await asyncio.gather(
            *(
                self.drive_detached(txn_id, event)
                for txn_id, event in venue_events(envelope.payload.events, self.clock())
            )
        )

    async def drive_detached(self, txn_id: str, event: p.Event, *, limit: int = 256) -> None:
        """``drive``, returning once the event is durable: its first step is saved, or it
        changed nothing (refused, unknown transaction, or a lease kept by another replica
        for longer than ``claim_wait``, as ``drive`` answers None).

        What remains runs in the background under the lease. If this replica dies before
        it ends, the saved phase is what another replica resumes from (``resume``): the
        effects of a saved phase are re-driven, never lost. An error before the event was
        saved is raised here, so the message is retried as before.
        """
        if self._driving is None:
            self._driving = asyncio.Semaphore(limit)
        await self._detach(
            self._driving, lambda signal: self.drive(txn_id, event, durable=signal), f"step of {txn_id}"
        )

    async def _detach(
        self,
        slots: asyncio.Semaphore,
        work: Callable[[asyncio.Future[Any]], Awaitable[object]],
        what: str,
    ) -> Any:
        """Run ``work`` in the background, in one of ``slots`` (waiting for a slot is the
        caller's back pressure); return what it signals once its first write is durable.

        An error before that signal is raised here, so the message is retried as before;
        an error after it is only logged: the lease runs out and a sweep re-drives the
        saved phase. Work that ends without signalling changed nothing (None).
        """
        await slots.acquire()
        signal: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._detached(slots, work, signal, what), name=f"coordinator: {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(signal)

    async def _detached(
        self,
        slots: asyncio.Semaphore,
        work: Callable[[asyncio.Future[Any]], Awaitable[object]],
        signal: asyncio.Future[Any],
        what: str,
    ) -> None:
        try:
            await work(signal)
        except BaseException as exc:
            if not signal.done():
                # A cancellation is this task's, not the caller's: the caller gets an error.
                signal.set_exception(exc if isinstance(exc, Exception) else RuntimeError(f"{what} stopped"))
            elif isinstance(exc, Exception):
                log.exception("%s failed after it was made durable", what)
            if not isinstance(exc, Exception):
                raise
        else:
            _resolve(signal)
        finally:
            slots.release()

    def _spawn(self, txn_id: str, event: p.Event) -> None:
        # Transactions advance concurrently (their ledger writes share group commits);
        # one transaction's events still apply in arrival order: asyncio.Lock is FIFO and
        # each task reaches it in creation order.
        task = asyncio.create_task(self._drive_known(txn_id, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drive_known(self, txn_id: str, event: p.Event) -> None:
        await self.drive(txn_id, event)

    # -- timeouts and takeovers -----------------------------------------------------------

    async def fire_due_timeouts(self) -> int:
        """Drive every transaction with a due timeout or an expired lease; returns how many."""
        due = await self.store.needing_attention(self.clock(), limit=200)
        for txn_id in due:
            await self.drive(txn_id, None, wait=False)
        return len(due)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.fire_due_timeouts()
            except Exception:
                log.exception("timeout sweep failed; retrying")

    # -- views ----------------------------------------------------------------------------

    def phases(self) -> Counter[str]:
        return Counter(txn.phase.value for txn in self.transactions.values())

    def open_transactions(self) -> list[p.Transaction]:
        return [txn for txn in self.transactions.values() if not txn.is_terminal]

    def order_of(self, txn_id: str) -> str:
        return order_id_of(txn_id)


def _resolve(signal: asyncio.Future[Any] | None, value: object = None) -> None:
    if signal is not None and not signal.done():
        signal.set_result(value)


def venue_events(events: tuple[tuple[Any, ...], ...], now: float) -> list[tuple[str, p.Event]]:
    """The protocol events in one ``matching.events`` message, with their transactions.

    A rejected cancel of an order the venue does not know means the order is not on the
    book: for an aborting transaction that is as good as cancelled. A rejected duplicate
    of an order means the order reached the book earlier (a re-driven ``SendOrder``):
    its own accept is on the way, so the reject says nothing about the transaction.
    """
    found: list[tuple[str, p.Event]] = []
    for event in events:
        kind = event[1]
        if kind == EventKind.ACCEPTED:
            found.append((txn_id_for(event[3]), p.VenueAccepted(now)))
        elif kind == EventKind.CANCELLED:
            found.append((txn_id_for(event[3]), p.VenueOrderCancelled(now)))
        elif kind == EventKind.REJECTED and event[4]:
            command, reason = str(event[2]), event[5]
            if command.startswith(NEW_PREFIX) and reason != RejectReason.DUPLICATE_ORDER_ID:
                found.append((txn_id_for(event[4]), p.VenueRejected(f"reason {reason}", now)))
            elif command.startswith(CANCEL_PREFIX) and reason == RejectReason.UNKNOWN_ORDER:
                found.append((txn_id_for(event[4]), p.VenueOrderCancelled(now)))
    return found


def order_new(order: OrderRequest) -> OrderNew:
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

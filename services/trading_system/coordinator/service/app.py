"""The coordinator service: one of N active replicas sharing transactions in PostgreSQL.

Every replica consumes the shared ``coordinator.requests`` queue (placement and cancel
requests from execution) and the ``coordinator.events`` queue (the venue's answers), and
runs the ``CoordinatorDriver`` over a ``SqlStore``: whichever replica gets a message
claims the transaction's lease, steps it and releases it. Background loops renew the
leases this replica holds, sweep for due timeouts and expired leases (the takeover of a
dead replica's work), announce outcomes that a crash left unannounced, and refresh the
gauges. See ``docs/coordinator.md``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from trading_system.bus import Envelope, MessageBus
from trading_system.bus.catalog import OrderCancel, OrderNew, TxnOutcome
from trading_system.bus.catalog.common import OrderType as WireOrderType
from trading_system.bus.catalog.common import Side as WireSide
from trading_system.bus.catalog.transaction import TxnResult
from trading_system.common.auth import TokenSet
from trading_system.common.http import Readiness, ServiceHttp
from trading_system.common.lifecycle import run_until_signalled
from trading_system.coordinator.group_commit import GroupCommitter
from trading_system.coordinator.protocol import Phase, PhaseTimeouts, Transaction
from trading_system.coordinator.risk import RiskPolicy
from trading_system.coordinator.service.metrics import CoordinatorMetrics
from trading_system.coordinator.sql_store import SqlStore, migrate_coordinator
from trading_system.coordinator.store import IN_DOUBT_PHASES
from trading_system.ledger import FenceToken, Instrument, migrate_ledger
from trading_system.matching.core import Side
from trading_system.pipeline.coordinator import CoordinatorDriver, DirectLedger, DriverHooks, LeaseSettings
from trading_system.pipeline.messages import OUTCOME_KEY, Names, registry, topology
from trading_system.pipeline.orders import OrderRequest
from trading_system.pipeline.publish_batcher import PublishBatcher
from trading_system.storage import create_engine, current_token
from trading_system.storage.fencing import FencedError

log = logging.getLogger(__name__)

CRASH_ENV = "TRADING_SYSTEM_COORDINATOR_CRASH_AT"
"""Test hook: ``os._exit(137)`` right after persisting a transaction's entry into that phase."""


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    db_url: str
    bus_urls: tuple[str, ...] = ()
    bus_mode: str | None = None
    replica: str = "coordinator-0"
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    namespace: str = ""
    fence_pair: str = "execution"
    fee_bps: int = 10
    instruments: dict[str, Instrument] = field(default_factory=dict)
    risk: RiskPolicy = field(default_factory=RiskPolicy)
    timeouts: PhaseTimeouts = field(default_factory=PhaseTimeouts)
    lease: LeaseSettings = field(default_factory=LeaseSettings)
    sweep_interval: float = 0.25
    commit_writers: int = 2
    # Messages of each queue handled at once. A step mostly waits (for its group commit,
    # the ledger, the broker's confirm), so this, divided by a step's latency, caps a
    # replica's rate; with group commit, more steps at once means fuller batches, not
    # more commits.
    concurrency: int = 64
    pool_size: int = 32
    renew_interval: float = 1.0
    outbox_interval: float = 1.0
    gauge_interval: float = 2.0
    crash_at: Phase | None = None

    @property
    def names(self) -> Names:
        return Names.namespaced(self.namespace)


def order_request(message: OrderNew) -> OrderRequest:
    """The integer order the coordinator reserves for; only limit orders are placed."""
    if message.order_type is not WireOrderType.LIMIT or message.price is None:
        raise ValueError(f"only limit orders are supported, got {message.order_type}")
    qty, price = int(message.qty), int(message.price)
    if qty != message.qty or price != message.price:
        raise ValueError("qty and price must be whole numbers of the symbol's units")
    side = Side.BUY if message.side is WireSide.BUY else Side.SELL
    return OrderRequest(message.order_id, message.account, message.symbol, side, qty, price)


def crash_hook(phase: Phase | None) -> Callable[[Transaction, Transaction], None]:
    def check(before: Transaction, after: Transaction) -> None:
        if phase is not None and after.phase is phase and before.phase is not phase:
            log.warning("%s=%s: exiting after persisting %s", CRASH_ENV, phase, after.txn_id)
            os._exit(137)

    return check


class CoordinatorService:
    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        bus: MessageBus | None = None,
        registry_: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.names = config.names
        self.clock = clock
        self.registry = registry_ or CollectorRegistry()
        self.metrics = CoordinatorMetrics.create(self.registry)
        # Ledger writes run one transaction each and many steps run at once: a pool that
        # overflows hands out connections it then closes, and each new one costs a
        # connect plus asyncpg's type introspection (seen as most of PostgreSQL's CPU).
        self.db = create_engine(config.db_url, pool_size=config.pool_size)
        # Group commit: concurrent steps of many transactions share one fsync; 0 writers
        # means one database transaction per step (the old behaviour, for comparison).
        committer = (
            GroupCommitter(self.db, writers=config.commit_writers) if config.commit_writers > 0 else None
        )
        self.store = SqlStore(self.db, committer)
        # Room left in the pool for the group commit's writers and the background loops.
        self.ledger = DirectLedger(self.db, concurrency=max(1, config.pool_size - config.commit_writers - 6))
        self.bus = bus or MessageBus.from_env(
            mode=config.bus_mode,
            urls=config.bus_urls or None,
            service=f"coordinator-{config.replica}",
            registry=registry(),
            metrics_registry=self.registry,
        )
        # Outcomes of concurrent transactions share AMQP messages (execution consumes them).
        self.outcomes = PublishBatcher(
            self.bus,
            exchange=self.names.exchange,
            routing_key=OUTCOME_KEY,
            max_batch=32,
            writers=2,
            name="coordinator-outcomes",
        )
        crash = crash_hook(config.crash_at)

        def saved(before: Transaction, after: Transaction) -> None:
            self.metrics.saved(before, after)
            crash(before, after)

        hooks = DriverHooks(on_saved=saved, on_takeover=self._taken_over, on_finished=self.announce)
        self.driver = CoordinatorDriver(
            self.bus,
            self.ledger,
            FenceToken(config.fence_pair, 0),
            config.instruments,
            fee_bps=config.fee_bps,
            risk=config.risk,
            timeouts=config.timeouts,
            owner=config.replica,
            clock=clock,
            names=self.names,
            store=self.store,
            lease=config.lease,
            hooks=hooks,
            keep_transactions=False,
            fence_source=self._fence,
            sweep_interval=config.sweep_interval,
        )
        self.http = ServiceHttp(self.readiness, TokenSet.from_env(), self.registry)
        self.http_port: int | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await migrate_ledger(self.db)
        await migrate_coordinator(self.db)
        # Health first: a replica waiting for the first election is alive, just not ready.
        self.http_port = await self.http.start(self.config.http_host, self.config.http_port)
        self.driver.fence = await self._first_fence()
        await self.bus.start()
        await self.bus.declare(topology(self.names))
        await self.bus.subscribe(
            self.names.requests, self.handle_request, concurrency=self.config.concurrency
        )
        await self.driver.start(await_events=True, concurrency=self.config.concurrency)
        self._loop_every(self.config.renew_interval, self._renew)
        self._loop_every(self.config.outbox_interval, self.publish_pending_outcomes)
        self._loop_every(self.config.gauge_interval, self.refresh_gauges)
        self._started = True
        log.info("coordinator %s serving on port %s", self.config.replica, self.http_port)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.driver.stop()
        await self.outcomes.close()
        await self.bus.close()
        await self.store.close()
        await self.http.stop()
        await self.db.dispose()

    async def run(self) -> None:
        await run_until_signalled(self, self._stop)

    def _loop_every(self, interval: float, job: Callable[[], Awaitable[Any]]) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await job()
                except Exception:
                    log.exception("%s failed; retrying", getattr(job, "__name__", job))

        self._tasks.append(asyncio.create_task(loop()))

    async def _fence(self) -> FenceToken:
        return await current_token(self.db, self.config.fence_pair)

    async def _first_fence(self) -> FenceToken:
        """The fence pair's token, waiting for its first election instead of exiting.

        Replicas usually start before the execution pair has an active (a new
        TradingSystem, a local launch): exiting would only put them in a restart backoff.
        """
        while True:
            try:
                return await self._fence()
            except FencedError:
                log.info(
                    "coordinator %s: waiting for %r to elect an active",
                    self.config.replica,
                    self.config.fence_pair,
                )
                await asyncio.sleep(1.0)

    async def _renew(self) -> None:
        in_flight = set(self.driver.in_flight)
        await self.store.renew(self.config.replica, in_flight, self.clock(), self.config.lease.ttl)

    def _taken_over(self, txn: Transaction, previous: str | None) -> None:
        self.metrics.recoveries.inc()
        log.warning("took over %s in %s from %s", txn.txn_id, txn.phase, previous)

    # -- requests from execution ----------------------------------------------------------

    async def handle_request(self, envelope: Envelope[Any]) -> None:
        message = envelope.payload
        if isinstance(message, OrderCancel):
            await self.bus.publish(message, exchange=self.names.exchange, caused_by=envelope)
            self.metrics.requests.labels("cancel", "forwarded").inc()
            return
        if not isinstance(message, OrderNew):
            self.metrics.requests.labels(type(message).__name__, "ignored").inc()
            return
        await self.place(message)

    async def place(self, message: OrderNew) -> None:
        try:
            order = order_request(message)
            if order.symbol not in self.config.instruments:
                raise ValueError(f"unknown symbol {order.symbol}")
        except ValueError as exc:
            self.metrics.requests.labels("place", "refused").inc()
            outcome = TxnOutcome(
                transaction_id=f"txn-{message.order_id}",
                order_id=message.order_id,
                result=TxnResult.ABORTED,
                reason=str(exc),
            )
            await self.bus.publish(outcome, exchange=self.names.exchange, routing_key=OUTCOME_KEY)
            return
        if await self.driver.place_detached(order, limit=4 * self.config.concurrency):
            self.metrics.requests.labels("place", "started").inc()
            return
        # A redelivered or repeated request: one transaction per order id. If it has
        # ended, say so again (the first announcement may be what got lost).
        self.metrics.requests.labels("place", "duplicate").inc()
        record = await self.store.get(f"txn-{order.order_id}")
        if record is not None and record.transaction.is_terminal:
            await self.announce(record.transaction, record.order)

    # -- outcomes -------------------------------------------------------------------------

    async def announce(self, txn: Transaction, order: OrderRequest) -> None:
        result = TxnResult.COMMITTED if txn.phase is Phase.COMMITTED else TxnResult.ABORTED
        outcome = TxnOutcome(
            transaction_id=txn.txn_id, order_id=order.order_id, result=result, reason=txn.outcome_reason or ""
        )
        await self.outcomes.publish(outcome, transaction_id=txn.txn_id)
        await self.store.mark_published(txn.txn_id)

    async def publish_pending_outcomes(self) -> int:
        """The outbox: outcomes whose announcement a crash interrupted (older than 2 s)."""
        records = await self.store.unpublished(self.clock() - 2.0, limit=200)
        for record in records:
            await self.announce(record.transaction, record.order)
        return len(records)

    async def refresh_gauges(self) -> None:
        counts = await self.store.phase_counts()
        for phase in Phase:
            self.metrics.by_phase.labels(phase.value).set(counts.get(phase.value, 0))
        self.metrics.in_doubt.set(sum(counts.get(phase.value, 0) for phase in IN_DOUBT_PHASES))

    # -- HTTP -----------------------------------------------------------------------------

    async def readiness(self) -> Readiness:
        health = self.bus.health()
        try:
            await self.store.phase_counts()
            db_ok, db_error = True, None
        except Exception as exc:
            db_ok, db_error = False, repr(exc)
        details: dict[str, object] = {
            "replica": self.config.replica,
            "broker": {
                "status": health.status,
                "connected": health.connected,
                "reasons": list(health.reasons),
            },
            "db": {"ok": db_ok, **({"error": db_error} if db_error else {})},
            "takeovers": self.driver.stats.takeovers,
        }
        return Readiness(self._started and health.ready and db_ok, details)

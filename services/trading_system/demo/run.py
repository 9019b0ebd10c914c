"""The run loop: set up ledger and bus, start the pipeline, drive traders, report.

``run_demo(DemoConfig(...))`` is the whole demo as one coroutine returning a
:class:`DemoResult`; the command line (``trading-system demo``) only adds printing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from trading_system.bus import MessageBus
from trading_system.coordinator.protocol import Phase
from trading_system.demo.summary import Check, Snapshot, render, render_checks
from trading_system.demo.traders import CancelOrder, Place, ReplaceOrder, TraderSim
from trading_system.ledger import (
    AccountKind,
    FenceToken,
    HoldState,
    Instrument,
    ReconciliationReport,
    create_asset,
    deposit,
    get_hold,
    migrate_ledger,
    open_account,
    raise_epoch,
    reconcile,
)
from trading_system.ledger.schema import settled_trades
from trading_system.matching.core import SymbolSpec
from trading_system.pipeline.coordinator import CoordinatorDriver
from trading_system.pipeline.ledger_gate import LedgerGate
from trading_system.pipeline.messages import Names, make_bus, topology
from trading_system.pipeline.orders import OrderRequest
from trading_system.pipeline.settlement import SettlementConsumer
from trading_system.pipeline.tracker import ExecutionTracker
from trading_system.pipeline.venue import VenueAdapter
from trading_system.storage import create_engine
from trading_system.storage.transactions import transaction

PAIR = "execution"
QUOTE = "USD"
SPECS = [
    SymbolSpec("BTC-USD", tick_size=5, lot_size=1, band_bps=1_000, reference_price=30_000),
    SymbolSpec("ETH-USD", tick_size=1, lot_size=1, band_bps=1_000, reference_price=2_000),
    SymbolSpec("SOL-USD", tick_size=1, lot_size=1, band_bps=1_000, reference_price=150),
]
INSTRUMENTS = {s.symbol: Instrument(s.symbol, s.symbol.split("-")[0], QUOTE) for s in SPECS}
CASH = 50_000_000
BASE = 100_000
POOR = 5_000  # enough for a few small SOL buys, not for much else


@dataclass(frozen=True, slots=True)
class DemoConfig:
    duration: float = 20.0
    traders: int = 8
    rate: float = 300.0  # actions per second the traders aim at (0 = as fast as possible)
    seed: int = 7
    fee_bps: int = 10
    in_flight: int = 32
    bus_url: str | None = None
    db_url: str | None = None
    refresh: float = 1.0
    drain_timeout: float = 10.0
    unfunded_accounts: tuple[str, ...] = ()  # opened with no money (tests use them)
    poor_traders: int = 1  # trade too, with almost no money: their orders show 3PC aborts
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


@dataclass(slots=True)
class DemoResult:
    checks: list[Check]
    snapshot: Snapshot
    reconciliation: ReconciliationReport
    elapsed: float
    orders: int
    trades: int
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


@dataclass
class Pipeline:
    bus: MessageBus
    db: AsyncEngine
    gate: LedgerGate
    venue: VenueAdapter
    coordinator: CoordinatorDriver
    settlement: SettlementConsumer
    tracker: ExecutionTracker
    names: Names = field(default_factory=Names)
    bus_url: str | None = None
    started: float = field(default_factory=time.perf_counter)

    def snapshot(self) -> Snapshot:
        book = self.tracker.book
        return Snapshot(
            elapsed=time.perf_counter() - self.started,
            counts=dict(book.counts),
            statuses=dict(book.by_status()),
            phases=dict(self.coordinator.phases()),
            settled=self.settlement.stats.settled,
            releases=self.settlement.stats.releases,
            p50_ms=self.tracker.latency_ms(0.50),
            p99_ms=self.tracker.latency_ms(0.99),
            bbo=dict(book.bbo),
        )

    async def submit(self, order: OrderRequest) -> None:
        self.tracker.submitted(order.order_id, order.qty)
        await self.coordinator.place(order)

    def idle(self) -> bool:
        published = self.venue.batches_published
        return (
            not self.coordinator.open_transactions()
            and self.settlement.stats.batches == published
            and self.tracker.batches == published
        )


def trader_accounts(config: DemoConfig) -> list[str]:
    return [f"trader-{i}" for i in range(config.traders)]


def poor_accounts(config: DemoConfig) -> list[str]:
    return [f"poor-{i}" for i in range(config.poor_traders)]


async def setup_ledger(
    db: AsyncEngine, fence: FenceToken, accounts: list[str], unfunded: tuple[str, ...], poor: list[str]
) -> None:
    await migrate_ledger(db)
    await raise_epoch(db, fence.pair_name, fence.epoch, "demo")
    for asset in (QUOTE, *(i.base_asset for i in INSTRUMENTS.values())):
        await create_asset(db, fence, asset, decimals=2 if asset == QUOTE else 0)
    for account in (*accounts, *unfunded, *poor):
        await open_account(db, fence, account, AccountKind.USER)
    for account in poor:
        await deposit(
            db, fence, deposit_id=f"d-{account}-{QUOTE}", account_id=account, asset=QUOTE, amount=POOR
        )
    for account in accounts:
        await deposit(
            db, fence, deposit_id=f"d-{account}-{QUOTE}", account_id=account, asset=QUOTE, amount=CASH
        )
        for inst in INSTRUMENTS.values():
            await deposit(
                db,
                fence,
                deposit_id=f"d-{account}-{inst.base_asset}",
                account_id=account,
                asset=inst.base_asset,
                amount=BASE,
            )


async def start_pipeline(config: DemoConfig, db_url: str) -> Pipeline:
    bus = make_bus(config.bus_url)
    await bus.start()
    # On a real broker the run gets its own exchange and queues, so a shared cluster's
    # services never see the demo's orders (and the demo never eats theirs).
    names = Names.namespaced(f"demo-{config.run_id}" if config.bus_url else "")
    await bus.declare(topology(names))
    db = create_engine(db_url)
    fence = FenceToken(PAIR, 1)
    await setup_ledger(db, fence, trader_accounts(config), config.unfunded_accounts, poor_accounts(config))
    gate = LedgerGate(db)
    gate.start()
    venue = VenueAdapter(bus, SPECS, venue=f"venue-{config.run_id}", names=names)
    tracker = ExecutionTracker(bus, names=names)
    coordinator = CoordinatorDriver(
        bus,
        gate,
        fence,
        INSTRUMENTS,
        fee_bps=config.fee_bps,
        names=names,
        on_aborted=lambda order, reason: tracker.book.aborted(order.order_id, reason),
    )
    settlement = SettlementConsumer(bus, gate, fence, INSTRUMENTS, config.fee_bps, names=names)
    for part in (venue, coordinator, settlement, tracker):
        await part.start()
    return Pipeline(bus, db, gate, venue, coordinator, settlement, tracker, names, config.bus_url)


async def drive_traders(pipeline: Pipeline, config: DemoConfig, stop: asyncio.Event) -> None:
    sim = TraderSim(
        trader_accounts(config) + poor_accounts(config), SPECS, seed=config.seed, prefix=f"{config.run_id}-"
    )
    window = asyncio.Semaphore(config.in_flight)
    tasks: set[asyncio.Task[None]] = set()

    async def act(action: Place | CancelOrder | ReplaceOrder) -> None:
        try:
            match action:
                case Place(order):
                    await pipeline.submit(order)
                case CancelOrder(order):
                    await pipeline.coordinator.cancel(order)
                case ReplaceOrder(old, new):
                    await pipeline.coordinator.cancel(old)
                    await pipeline.submit(new)
        finally:
            window.release()

    interval = 1.0 / config.rate if config.rate > 0 else 0.0
    next_at = time.perf_counter()
    while not stop.is_set():
        await window.acquire()
        task = asyncio.create_task(act(sim.next_action()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if interval:
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                next_at = time.perf_counter()  # behind by more than a second: do not burst
        else:
            await asyncio.sleep(0)
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def drain(pipeline: Pipeline, within: float) -> bool:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        if pipeline.idle():
            await asyncio.sleep(0.05)
            if pipeline.idle():
                return True
        await asyncio.sleep(0.05)
    return pipeline.idle()


async def settled_trade_count(db: AsyncEngine, venue: str) -> int:
    """Trades of this run in the ledger (a database may hold earlier runs too)."""
    query = (
        select(func.count()).select_from(settled_trades).where(settled_trades.c.trade_id.like(f"{venue}:%"))
    )
    async with transaction(db) as conn:
        return int((await conn.execute(query)).scalar_one())


async def check_invariants(pipeline: Pipeline, drained: bool) -> tuple[list[Check], ReconciliationReport]:
    book = pipeline.tracker.book
    coord = pipeline.coordinator
    engine = pipeline.venue.engine
    checks: list[Check] = [
        Check("pipeline drained", drained, "every queue consumed, every transaction closed")
    ]

    unreported = []
    for order_id in book.accepted:
        state = book.orders.get(order_id)
        resting = engine.open_order(order_id) is not None
        if state is None or state.status.value == "pending" or resting != book.live(order_id):
            unreported.append(order_id)
    checks.append(
        Check(
            "1 acknowledged orders not lost",
            not unreported and book.anomalies == 0,
            f"{len(book.accepted)} accepted, each resting, filled or in a reported terminal state "
            f"({len(unreported)} not, {book.anomalies} impossible transitions)",
        )
    )

    stats = pipeline.settlement.stats
    in_db = await settled_trade_count(pipeline.db, pipeline.venue.venue)
    produced = len(book.trade_ids)
    once = (
        book.duplicate_trades == 0
        and stats.settled_twice == 0
        and stats.failed == 0
        and stats.settled == produced == in_db
    )
    checks.append(
        Check(
            "2 each trade produced once, settled exactly once",
            once,
            f"{produced} trades, {stats.settled} settled ({in_db} in the ledger), "
            f"{book.duplicate_trades} duplicates, {stats.failed} failed",
        )
    )

    report = await reconcile(pipeline.db)
    breaks = report.breaks_by_check()
    for name, label in (
        ("conservation", "3 per-asset ledger total unchanged"),
        ("negative_balance", "3 no negative balance"),
        ("held_vs_holds", "3 reservations match holds"),
        ("hold_bounds", "3 holds within bounds"),
        ("entries_vs_balances", "3 balances equal their journal"),
        ("trades_vs_entries", "3 settled trades match entries"),
    ):
        checks.append(Check(label, breaks.get(name, 0) == 0, f"{breaks.get(name, 0)} breaks"))

    phases = coord.phases()
    open_txns = len(coord.open_transactions())
    committed, aborted = phases.get(Phase.COMMITTED.value, 0), phases.get(Phase.ABORTED.value, 0)
    checks.append(
        Check(
            "5 every 3PC transaction ended",
            open_txns == 0,
            f"{committed} committed, {aborted} aborted, {open_txns} still open",
        )
    )
    # Aborted transactions must leave no hold behind, in the ledger itself.
    aborted_ids = [t.txn_id for t in coord.transactions.values() if t.phase is Phase.ABORTED]
    leaked = 0
    for txn_id in aborted_ids:
        hold = await get_hold(pipeline.db, txn_id)
        if hold is not None and (hold.state is not HoldState.RELEASED or hold.remaining != 0):
            leaked += 1
    checks.append(
        Check(
            "aborted transactions hold nothing",
            leaked == 0,
            f"{len(aborted_ids)} aborted, {leaked} with a ledger hold left",
        )
    )
    return checks, report


def default_db_url(workdir: str) -> str:
    return f"sqlite+aiosqlite:///{os.path.join(workdir, 'demo.db')}"


async def run_demo(
    config: DemoConfig,
    *,
    out: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    before_stop: Callable[[Pipeline], object] | None = None,
) -> DemoResult:
    """Run the pipeline for ``config.duration`` seconds (or until ``stop`` is set)."""
    stop = stop or asyncio.Event()
    with tempfile.TemporaryDirectory(prefix="ts-demo-") as workdir:
        pipeline = await start_pipeline(config, config.db_url or default_db_url(workdir))
        try:
            return await _run(pipeline, config, stop, out, before_stop)
        finally:
            await close_pipeline(pipeline)


async def close_pipeline(pipeline: Pipeline) -> None:
    await pipeline.coordinator.stop()
    await pipeline.bus.close()
    await pipeline.gate.stop()
    await pipeline.db.dispose()
    if pipeline.bus_url:
        await delete_broker_namespace(pipeline.bus_url, pipeline.names)


async def delete_broker_namespace(url: str, names: Names) -> None:
    """Remove the run's own queues and exchange from a real broker (the facade has no delete)."""
    import aio_pika

    plan = topology(names).plan()
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for queue in plan.queues:
            await channel.queue_delete(queue.name)
        for exchange in plan.exchanges:
            await channel.exchange_delete(exchange.name)
    except Exception as exc:  # best effort: the run's result stands either way
        print(f"warning: could not delete the demo's broker queues: {exc!r}", file=sys.stderr)
    finally:
        await connection.close()


async def _run(
    pipeline: Pipeline,
    config: DemoConfig,
    stop: asyncio.Event,
    out: Callable[[str], None] | None,
    before_stop: Callable[[Pipeline], object] | None,
) -> DemoResult:
    pipeline.started = time.perf_counter()
    traders = asyncio.create_task(drive_traders(pipeline, config, stop))
    deadline = pipeline.started + config.duration
    while not stop.is_set() and time.perf_counter() < deadline:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                stop.wait(), timeout=min(config.refresh, max(0.0, deadline - time.perf_counter()))
            )
        if out is not None:
            out(render(pipeline.snapshot()))
    stop.set()
    await traders
    elapsed = time.perf_counter() - pipeline.started
    if before_stop is not None:
        result = before_stop(pipeline)
        if asyncio.iscoroutine(result):
            await result
    drained = await drain(pipeline, config.drain_timeout)
    snapshot = pipeline.snapshot()
    checks, report = await check_invariants(pipeline, drained)
    counts = pipeline.tracker.book.counts
    return DemoResult(checks, snapshot, report, elapsed, counts.get("submitted", 0), counts.get("trades", 0))


def main(config: DemoConfig) -> int:
    """The command line: live summary, Ctrl-C stops early, exit 0 iff every invariant holds."""
    live = sys.stdout.isatty()

    def out(text: str) -> None:
        if live:
            sys.stdout.write("\x1b[H\x1b[J")
        print(text + ("" if live else "\n"), flush=True)

    async def run() -> DemoResult:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        return await run_demo(config, out=out, stop=stop)

    try:
        result = asyncio.run(run())
    except Exception as exc:  # broker or database unreachable, refused, broken mid-run
        print(f"trading-system demo: could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(render(result.snapshot))
    print(
        f"\nmeasured: {result.orders / result.elapsed:.0f} orders/s, "
        f"{result.trades / result.elapsed:.0f} trades/s over {result.elapsed:.1f} s"
    )
    print(render_checks(result.checks))
    return 0 if result.ok else 1

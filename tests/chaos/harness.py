"""The chaos suite's harness: the local pipeline under load, one fault, then the invariants.

``PipelineUnderTest`` runs ``trading_system.local.LocalPipeline`` (every service a real
process on its own loopback address, the supervisors in the test's event loop) against
the session's RabbitMQ cluster and a fresh PostgreSQL database. ``run_scenario`` drives
orders through the execution API, injects the fault after a warm-up, keeps the load on
through recovery, drains, and returns the numbers DESIGN.md section 7 is checked with.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from tests.unit.bus.support import eventually
from trading_system.demo.run import SPECS, delete_broker_namespace
from trading_system.ha import FailoverPolicy
from trading_system.ledger import reconcile
from trading_system.ledger.schema import settled_trades
from trading_system.local.launcher import ENGINE_ID, LocalConfig, LocalPipeline
from trading_system.local.loadgen import LoadGenerator, LoadReport, seed_ledger
from trading_system.local.members import Placement
from trading_system.matching.core import EventKind, MatchingEngine, SymbolSpec
from trading_system.matching.service import Journal
from trading_system.pipeline.messages import Names
from trading_system.pipeline.venue import trade_id
from trading_system.storage import create_engine

ACCOUNTS = [f"chaos-{i}" for i in range(8)]
FINAL = {"open", "partially_filled", "filled", "cancelled", "rejected", "expired"}
RESULTS = Path(__file__).resolve().parent / "results"

Fault = Callable[["PipelineUnderTest"], Awaitable[None]]


@dataclass
class ScenarioResult:
    name: str
    acknowledged: int = 0
    lost: int = 0
    duplicate_trades: int = 0
    unsettled_trades: int = 0
    settlement_breaks: int = 0
    stuck_pending: int = 0
    failover_seconds: float | None = None
    baseline_rate: float = 0.0
    dip_rate: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        failover = "-" if self.failover_seconds is None else f"{self.failover_seconds:.1f} s"
        return (
            f"| {self.name} | {self.acknowledged} | {self.lost} | {self.duplicate_trades} | "
            f"{self.settlement_breaks} | {failover} | "
            f"{self.baseline_rate:.0f} -> {self.dip_rate:.0f} orders/s |"
        )


def symbol_entries(specs: Sequence[SymbolSpec] = SPECS) -> list[dict[str, Any]]:
    """The demo's symbols (what the load generator trades) as TradingSystem spec entries."""
    out = []
    for s in specs:
        out.append(
            {
                "name": s.symbol,
                "tickSize": str(s.tick_size),
                "lotSize": str(s.lot_size),
                "priceBandPercent": s.band_bps // 100,
            }
        )
    return out


class PipelineUnderTest:
    def __init__(
        self, directory: Path, db_url: str, bus_urls: list[str], placement: Placement | None = None
    ) -> None:
        self.db_url = db_url
        self.config = LocalConfig(
            directory=directory,
            db_url=db_url,
            bus_urls=tuple(bus_urls),
            coordinators=3,
            namespace=f"chaos{uuid.uuid4().hex[:6]}",
            policy=FailoverPolicy(failure_threshold=2, cooldown_seconds=0, promote_timeout_seconds=30),
            probe_period=0.5,
            probe_timeout=0.5,
            placement=placement,
        )
        self.pipeline = LocalPipeline(self.config)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.pipeline.run(self.stop))
        await eventually(self.pipeline.healthy, within=120, interval=0.2, what="a healthy pipeline")
        await seed_ledger(self.db_url, ACCOUNTS)

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
        self.pipeline.stop_members()
        # The cluster outlives the test: leave it as small as it was (a node restart
        # recovers every quorum queue, and thousands of them make it slow).
        await delete_broker_namespace(self.config.bus_urls[0], Names.namespaced(self.config.namespace))

    def restart_supervision(self) -> None:
        """A new launcher on the same directory: it adopts the running members."""
        self.pipeline = LocalPipeline(self.config)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.pipeline.run(self.stop))


async def run_scenario(
    put: PipelineUnderTest,
    name: str,
    fault: Fault | None,
    *,
    rate: float = 40.0,
    warmup: float = 6.0,
    after: float = 14.0,
) -> tuple[ScenarioResult, LoadReport]:
    api_token = put.pipeline.tokens["api"]
    inject = None if fault is None else functools.partial(fault, put)
    report, fault_at = await drive_load(
        put.pipeline.execution_url, api_token, name, inject, rate=rate, warmup=warmup, after=after
    )
    result = await check_invariants(put, name, report, fault_at)
    return result, report


async def drive_load(
    url: Callable[[], str | None],
    api_token: str,
    name: str,
    fault: Callable[[], Awaitable[None]] | None,
    *,
    rate: float = 40.0,
    warmup: float = 6.0,
    after: float = 14.0,
) -> tuple[LoadReport, float]:
    """Orders at ``rate`` to whatever ``url`` names; ``fault`` after ``warmup``, the load kept on
    for ``after`` more seconds, then drained. Returns the report and the fault's monotonic time.

    Any pipeline can be driven: ``url`` is asked again before every attempt, so it may follow
    a failover (``routes.json`` locally, the active pod's address on Kubernetes).
    """
    prefix = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    load = LoadGenerator(url, api_token, ACCOUNTS, rate=rate, prefix=prefix)
    stop_load = asyncio.Event()
    driver = asyncio.create_task(load.run(stop_load))
    await asyncio.sleep(warmup)  # steady load before the fault (a duration, not a condition)
    fault_at = time.monotonic()
    if fault is not None:
        await fault()
    await asyncio.sleep(after)
    stop_load.set()
    return await driver, fault_at


async def check_invariants(
    put: PipelineUnderTest, name: str, report: LoadReport, fault_at: float
) -> ScenarioResult:
    result = await check_pipeline(put.db_url, name, report, fault_at)
    result.failover_seconds = _failover_seconds(put, fault_at)
    return result


async def check_pipeline(
    db_url: str,
    name: str,
    report: LoadReport,
    fault_at: float,
    *,
    engine_id: str = ENGINE_ID,
    specs: Sequence[SymbolSpec] = SPECS,
) -> ScenarioResult:
    """DESIGN.md section 7 from the database and the load generator's records, for any
    pipeline: ``engine_id`` and ``specs`` are what its matching engine runs with (the
    local launcher's by default), so the journal is replayed exactly as it was matched."""
    result = ScenarioResult(name, acknowledged=len(report.acknowledged))
    refused = [a for a in report.acks if not a.acknowledged]
    result.notes += sorted({str(a.error)[:120] for a in refused})[:5]
    result.p50_ms, result.p99_ms = report.latency_ms(0.5), report.latency_ms(0.99)
    result.baseline_rate, result.dip_rate = _rates(report, fault_at)
    db = create_engine(db_url)
    try:
        acked = {a.order_id for a in report.acknowledged}
        # 1. Every acknowledged order exists and leaves "pending" (its transaction ended).
        try:
            await eventually(
                lambda: _all_decided(db, acked), within=90, interval=0.5, what="every order decided"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {await _undecided(db, acked)}") from None
        statuses = await _order_statuses(db)
        result.lost = len(acked - set(statuses))
        result.stuck_pending = sum(1 for o in acked if statuses.get(o or "") == "pending")
        # 2. Every trade the journal implies is settled exactly once, and nothing else is.
        trades = await _journal_trades(db, engine_id, specs)
        try:
            await eventually(
                lambda: _settled_cover(db, trades), within=60, interval=0.5, what="trades settled"
            )
        except AssertionError as exc:
            missing = sorted(trades - await _settled(db))
            raise AssertionError(
                f"{exc}: {len(missing)} of {len(trades)} unsettled, e.g. {missing[:5]}"
            ) from None
        settled = await _settled(db)
        result.unsettled_trades = len(trades - settled)
        result.duplicate_trades = len(settled - trades)  # the replay itself asserts no repeats
        # 3. The ledger reconciles: conservation, no negative balance, holds within balances.
        report_ = await reconcile(db)
        result.settlement_breaks = len(report_.breaks)
        if report_.breaks:
            result.notes += [str(b) for b in report_.breaks[:5]]
    finally:
        await db.dispose()
    return result


def _rates(report: LoadReport, fault_at: float) -> tuple[float, float]:
    """Acknowledged orders/s before the fault, and in the worst 2-second window after it."""
    per_window = Counter(int((a.acked_at or 0) // 2) for a in report.acknowledged)
    before = [
        n / 2 for w, n in per_window.items() if w * 2 + 2 <= fault_at and w * 2 >= report.started_at + 2
    ]
    end = report.ended_at
    after = [per_window.get(w, 0) / 2 for w in range(int(fault_at // 2), int(end // 2))]
    return (sum(before) / len(before) if before else 0.0), (min(after) if after else 0.0)


def _failover_seconds(put: PipelineUnderTest, fault_at: float) -> float | None:
    wall_fault = time.time() - (time.monotonic() - fault_at)
    spans = [
        r.ended_at - r.started_at
        for p in put.pipeline.pairs
        for r in p.state.history
        if r.started_at >= wall_fault - 5 and r.kind.value != "election"
    ]
    return max(spans) if spans else None


async def _order_statuses(db: Any) -> dict[str, str]:
    async with db.connect() as conn:
        rows = await conn.execute(text("SELECT order_id, status FROM execution_orders"))
        return {r.order_id: r.status for r in rows}


async def _all_decided(db: Any, acked: set[str | None]) -> bool:
    statuses = await _order_statuses(db)
    return all(statuses.get(o or "") in FINAL for o in acked)


async def _undecided(db: Any, acked: set[str | None]) -> list[tuple[Any, ...]]:
    """Execution status and coordinator row of the first orders still undecided."""
    statuses = await _order_statuses(db)
    stuck = sorted(o or "" for o in acked if statuses.get(o or "") not in FINAL)[:10]
    now = time.time()
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT order_id, phase, lease_owner, lease_expires_at, deadline "
                "FROM coordinator_transactions"
            )
        )
        txns = {
            r.order_id: (r.phase, r.lease_owner, r.lease_expires_at - now, (r.deadline or now) - now)
            for r in rows
        }
    return [(o, statuses.get(o), txns.get(o)) for o in stuck]


async def _journal_trades(
    db: Any, engine_id: str = ENGINE_ID, specs: Sequence[SymbolSpec] = SPECS
) -> set[str]:
    """Trade ids of every trade the matching journal implies (replayed from scratch)."""
    engine = MatchingEngine(list(specs))
    trades: set[str] = set()
    self_dupes = 0
    async for page in Journal(db, engine_id).iterate():
        for entry in page:
            for event in engine.process(entry.command):
                if event[1] == EventKind.TRADE:
                    tid = trade_id(engine_id, event[2], event[0])
                    self_dupes += tid in trades
                    trades.add(tid)
    assert self_dupes == 0
    return trades


async def _settled(db: Any) -> set[str]:
    async with db.connect() as conn:
        return set((await conn.execute(select(settled_trades.c.trade_id))).scalars())


async def _settled_cover(db: Any, trades: set[str]) -> bool:
    return trades <= await _settled(db)


async def journal_epochs(db_url: str, engine_id: str = ENGINE_ID) -> list[tuple[int, int]]:
    """(seq, epoch) of every journal entry, in journal order: the epochs must never go back."""
    db = create_engine(db_url)
    try:
        async with db.connect() as conn:
            rows = await conn.execute(
                text("SELECT seq, epoch FROM matching_journal WHERE engine_id = :e ORDER BY seq"),
                {"e": engine_id},
            )
            return [(int(r.seq), int(r.epoch)) for r in rows]
    finally:
        await db.dispose()


async def first_seq_from(db: Any, engine_id: str, epoch: int) -> int | None:
    """The journal's first entry at ``epoch`` or later: the new active matching again."""
    async with db.connect() as conn:
        row = await conn.execute(
            text("SELECT min(seq) FROM matching_journal WHERE engine_id = :e AND epoch >= :epoch"),
            {"e": engine_id, "epoch": epoch},
        )
        value = row.scalar()
    return None if value is None else int(value)


def assert_invariants(result: ScenarioResult) -> None:
    """Record the scenario's row, then DESIGN.md section 7: nothing lost, stuck, doubled,
    unsettled or broken."""
    write_result(result)
    print(result.row())
    assert result.acknowledged > 0
    assert result.lost == 0, result
    assert result.stuck_pending == 0, result
    assert result.duplicate_trades == 0, result
    assert result.unsettled_trades == 0, result
    assert result.settlement_breaks == 0, result


def write_result(result: ScenarioResult) -> None:
    """One JSON line per scenario run, collected into docs/chaos.md by hand."""
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "latest.jsonl").open("a") as f:
        f.write(json.dumps(result.__dict__, default=str) + "\n")

"""Ledger throughput on PostgreSQL with full durability: reserves/s and settlements/s.

Run:  .venv/bin/python -m benchmarks.ledger_settlement --dsn postgresql+asyncpg://postgres@127.0.0.1:35432/postgres

The DSN names a server and a database to connect to; the benchmark creates its own
scratch database next to it (``ledger_bench_<random>``) and drops it afterwards, so it
never touches existing data. It prints ``synchronous_commit`` and ``fsync`` so the
numbers say what durability they were measured with.

For each number of concurrent workers (``--workers 1 8``) and each batch size (1 and
``--batch 10 100``) it runs a round, each phase timed on its own:

* ``reserve``: every order's hold (two per trade), one reserve per transaction
  (reported for the batch-1 round);
* ``settle``: the trades, ``batch`` per transaction (a group commit), exactly once;
* ``redeliver``: every trade again, all reported as duplicates.

Each worker trades between its own pair of accounts, so workers contend only where
production does: on the fence row (a shared lock) and on the fee account's balance row
(an exclusive one, which serialises concurrent single-trade settlements). The last
column is this process's CPU time per operation: on a small machine the client's
CPU, not the database, is often what limits the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks.scratch_db import admin_execute as _admin_execute
from trading_system.ledger import (
    FenceToken,
    Instrument,
    TradeSettlement,
    buy_reservation,
    create_asset,
    deposit,
    migrate_ledger,
    open_account,
    raise_epoch,
    reconcile,
    reserve,
    settle_trade,
    settle_trades,
    trade_settlement,
)
from trading_system.storage import create_engine

PAIR = "execution"
INSTRUMENT = Instrument("BTC-USD", "BTC", "USD")
PRICE = 50_000
QTY = 3
FEE_BPS = 10
REDELIVERY_BATCH = 100


@dataclass(frozen=True)
class Order:
    hold_id: str
    account: str
    asset: str
    amount: int
    order_id: str


@dataclass(frozen=True)
class Phase:
    name: str
    workers: int
    operations: int
    seconds: float
    cpu_seconds: float  # this process only; PostgreSQL's CPU is not in it

    @property
    def rate(self) -> float:
        return self.operations / self.seconds

    def row(self) -> str:
        cpu_us = self.cpu_seconds / self.operations * 1e6
        cells = (
            self.name,
            self.workers,
            self.operations,
            f"{self.seconds:.2f}",
            f"{self.rate:,.0f}",
            f"{cpu_us:,.0f}",
        )
        return "| " + " | ".join(map(str, cells)) + " |"


async def _settings(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        return {
            name: str((await conn.execute(text(f"SHOW {name}"))).scalar_one())
            for name in ("server_version", "synchronous_commit", "fsync", "wal_sync_method")
        }


def _workload(
    workers: int, per_worker: int, tag: str
) -> tuple[list[list[Order]], list[list[TradeSettlement]]]:
    """Per worker: the orders to reserve and the trades that fill them (one trade per order pair)."""
    orders: list[list[Order]] = []
    trades: list[list[TradeSettlement]] = []
    buy_amount = buy_reservation(INSTRUMENT, PRICE, QTY, FEE_BPS)
    for w in range(workers):
        mine_o: list[Order] = []
        mine_t: list[TradeSettlement] = []
        for i in range(per_worker):
            b, s = f"{tag}-b{w}-{i}", f"{tag}-s{w}-{i}"
            mine_o.append(Order(b, f"buyer{w}", "USD", buy_amount, b))
            mine_o.append(Order(s, f"seller{w}", "BTC", QTY, s))
            mine_t.append(
                trade_settlement(
                    INSTRUMENT,
                    trade_id=f"{tag}-t{w}-{i}",
                    price=PRICE,
                    qty=QTY,
                    buyer=(f"buyer{w}", b),
                    seller=(f"seller{w}", s),
                    buyer_fee_bps=FEE_BPS,
                    seller_fee_bps=FEE_BPS,
                )
            )
        orders.append(mine_o)
        trades.append(mine_t)
    return orders, trades


async def _timed(name: str, operations: int, jobs: Sequence[Coroutine[Any, Any, None]]) -> Phase:
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*jobs)
    return Phase(name, len(jobs), operations, time.perf_counter() - wall, time.process_time() - cpu)


async def _setup(engine: AsyncEngine, fence: FenceToken, workers: int) -> None:
    await migrate_ledger(engine)
    await raise_epoch(engine, PAIR, fence.epoch, "benchmark")
    await create_asset(engine, fence, "USD", 2)
    await create_asset(engine, fence, "BTC", 8)
    for w in range(workers):
        await open_account(engine, fence, f"buyer{w}")
        await open_account(engine, fence, f"seller{w}")
        # Enough for every phase's orders (each phase uses fresh holds).
        await deposit(engine, fence, deposit_id=f"usd{w}", account_id=f"buyer{w}", asset="USD", amount=10**15)
        await deposit(
            engine, fence, deposit_id=f"btc{w}", account_id=f"seller{w}", asset="BTC", amount=10**12
        )


async def _reserve_worker(engine: AsyncEngine, fence: FenceToken, mine: list[Order]) -> None:
    for o in mine:
        await reserve(
            engine,
            fence,
            hold_id=o.hold_id,
            account_id=o.account,
            asset=o.asset,
            amount=o.amount,
            order_qty=QTY,
            order_id=o.order_id,
        )


async def _settle_worker(
    engine: AsyncEngine, fence: FenceToken, mine: list[TradeSettlement], batch: int
) -> None:
    if batch == 1:
        for t in mine:
            await settle_trade(engine, fence, t)
        return
    for i in range(0, len(mine), batch):
        result = await settle_trades(engine, fence, mine[i : i + batch])
        if result.failed:
            raise RuntimeError(f"settlement failed: {result.failed[0][1]}")


async def _round(
    engine: AsyncEngine, fence: FenceToken, workers: int, trades: int, batch: int, redeliver: bool
) -> list[Phase]:
    """Reserve the orders of ``trades`` trades, then settle them ``batch`` per transaction."""
    per_worker = max(trades // workers, 1)
    orders, work = _workload(workers, per_worker, f"w{workers}x{batch}")
    phases = [
        await _timed("reserve", 2 * per_worker * workers, [_reserve_worker(engine, fence, m) for m in orders])
    ]
    label = "settle, 1 trade/txn" if batch == 1 else f"settle, batch {batch}/txn"
    phases.append(
        await _timed(label, per_worker * workers, [_settle_worker(engine, fence, m, batch) for m in work])
    )
    if redeliver:
        phases.append(
            await _timed(
                f"redeliver (all duplicates), batch {REDELIVERY_BATCH}/txn",
                per_worker * workers,
                [_settle_worker(engine, fence, m, REDELIVERY_BATCH) for m in work],
            )
        )
    return phases


async def run(
    dsn: str, worker_counts: list[int], trades: int, batches: list[int], pre_ping: bool
) -> list[Phase]:
    fence = FenceToken(PAIR, 1)
    engine = create_engine(dsn, pool_size=max(worker_counts), pre_ping=pre_ping)
    phases: list[Phase] = []
    try:
        print(f"server: {await _settings(engine)}; client CPUs: {os.cpu_count()}; pool pre-ping: {pre_ping}")
        await _setup(engine, fence, max(worker_counts))
        for workers in worker_counts:
            for batch in [1, *batches]:
                # Batched rounds get more trades so each lasts long enough to measure.
                count = trades if batch == 1 else trades * 4
                last = batch == max([1, *batches])
                for phase in await _round(engine, fence, workers, count, batch, redeliver=last):
                    if phase.name != "reserve" or batch == 1:
                        phases.append(phase)
                        print(phase.row(), flush=True)
        report = await reconcile(engine)
        print(f"reconciliation: ok={report.ok} counts={report.counts}")
        if not report.ok:
            raise SystemExit(f"ledger broken after the benchmark: {report.breaks[:5]}")
    finally:
        await engine.dispose()
    return phases


async def main_async(args: argparse.Namespace) -> None:
    url = make_url(args.dsn)
    scratch = f"ledger_bench_{uuid.uuid4().hex[:8]}"
    admin = url.render_as_string(hide_password=False)
    await _admin_execute(admin, f'CREATE DATABASE "{scratch}"')
    try:
        dsn = url.set(database=scratch).render_as_string(hide_password=False)
        phases = await run(dsn, args.workers, args.trades, args.batch, args.pre_ping)
    finally:
        await _admin_execute(admin, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
    print("\n| phase | workers | operations | seconds | per second | client CPU µs/op |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(p.row() for p in phases))


def main() -> None:
    parser = argparse.ArgumentParser(description="Ledger reserves/s and settlements/s on PostgreSQL.")
    parser.add_argument("--dsn", required=True, help="PostgreSQL URL of a database on the server to use")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8], help="concurrent writers to try")
    parser.add_argument("--trades", type=int, default=2_000, help="trades in each one-per-transaction round")
    parser.add_argument("--batch", type=int, nargs="*", default=[10, 100], help="batch sizes to try")
    parser.add_argument("--no-pre-ping", dest="pre_ping", action="store_false", help="skip the pool's ping")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

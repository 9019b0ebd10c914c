"""A one-process coordinator world on SQLite and the in-memory bus, for driver and CLI tests."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from trading_system.bus import MessageBus
from trading_system.coordinator import protocol as p
from trading_system.coordinator.sql_store import SqlStore, audit, migrate_coordinator, txn_events, txns
from trading_system.ledger import (
    AccountKind,
    FenceToken,
    Instrument,
    create_asset,
    deposit,
    migrate_ledger,
    open_account,
)
from trading_system.matching.core import Side, SymbolSpec
from trading_system.pipeline.coordinator import CoordinatorDriver, LeaseSettings
from trading_system.pipeline.ledger_gate import LedgerGate
from trading_system.pipeline.messages import make_bus, topology
from trading_system.pipeline.orders import OrderRequest
from trading_system.storage import create_engine, raise_epoch

SYMBOL = "BTC-USD"
SPECS = [SymbolSpec(SYMBOL, tick_size=5, lot_size=1)]
INSTRUMENTS = {SYMBOL: Instrument(SYMBOL, "BTC", "USD")}
FENCE = FenceToken("execution", 1)
TIMEOUTS = p.PhaseTimeouts(init=60, can_commit=60, pre_commit=60, do_commit=60, aborting=60)


def order(order_id: str, qty: int = 2, price: int = 30_000, account: str = "alice") -> OrderRequest:
    return OrderRequest(order_id, account, SYMBOL, Side.BUY, qty, price)


async def setup_db(url: str) -> AsyncEngine:
    db = create_engine(url)
    await migrate_ledger(db)
    await migrate_coordinator(db)
    await raise_epoch(db, FENCE.pair_name, FENCE.epoch, "test")
    await create_asset(db, FENCE, "USD", decimals=2)
    await create_asset(db, FENCE, "BTC", decimals=0)
    await open_account(db, FENCE, "alice", AccountKind.USER)
    await deposit(db, FENCE, deposit_id="d-1", account_id="alice", asset="USD", amount=10_000_000)
    return db


@dataclass
class World:
    db: AsyncEngine
    bus: MessageBus
    gate: LedgerGate
    store: SqlStore

    @classmethod
    async def start(cls, url: str) -> World:
        db = await setup_db(url)
        bus = make_bus(None, service="unit")
        await bus.start()
        await bus.declare(topology())
        gate = LedgerGate(db)
        gate.start()
        return cls(db, bus, gate, SqlStore(db))

    def driver(self, owner: str, **extra: Any) -> CoordinatorDriver:
        values: dict[str, Any] = {
            "owner": owner,
            "clock": time.time,
            "store": self.store,
            "timeouts": TIMEOUTS,
            "lease": LeaseSettings(ttl=1.0, claim_wait=0.3),
            "keep_transactions": False,
        }
        values.update(extra)
        return CoordinatorDriver(self.bus, self.gate, FENCE, INSTRUMENTS, **values)

    async def close(self) -> None:
        await self.gate.stop()
        await self.bus.close()
        await self.db.dispose()


async def snapshot(db: AsyncEngine) -> list[list[tuple[Any, ...]]]:
    """Every coordinator row, to show that a refused command changed nothing."""
    async with db.connect() as conn:
        return [
            [tuple(row) for row in await conn.execute(select(table))] for table in (txns, txn_events, audit)
        ]

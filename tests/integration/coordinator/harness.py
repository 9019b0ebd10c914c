"""A coordinator test bench on the real broker and database.

The test process plays the venue (the pipeline's in-process ``VenueAdapter`` on the bus)
and execution (publishes placement requests, collects ``txn.outcome``); the coordinator
replicas run in-process (``CoordinatorService``) or as subprocesses that can be killed.
Every test gets its own queue namespace and its own database.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from trading_system.bus import Envelope, MessageBus
from trading_system.bus.catalog import OrderNew, TxnOutcome
from trading_system.bus.catalog.common import OrderType, Side
from trading_system.bus.config import BusMode, BusSettings
from trading_system.coordinator.protocol import PhaseTimeouts
from trading_system.coordinator.risk import RiskPolicy
from trading_system.coordinator.service.app import CoordinatorConfig, CoordinatorService
from trading_system.coordinator.sql_store import SqlStore, migrate_coordinator
from trading_system.coordinator.store import TxnRecord
from trading_system.ledger import (
    AccountKind,
    FenceToken,
    Instrument,
    create_asset,
    deposit,
    migrate_ledger,
    open_account,
)
from trading_system.matching.core import SymbolSpec
from trading_system.pipeline.coordinator import LeaseSettings
from trading_system.pipeline.messages import PLACE_KEY, Names, registry, topology
from trading_system.pipeline.orders import RiskLimits
from trading_system.pipeline.venue import VenueAdapter
from trading_system.storage import create_engine, raise_epoch

ROOT = Path(__file__).resolve().parents[3]
SYMBOL = "BTC-USD"
SPECS = [SymbolSpec(SYMBOL, tick_size=5, lot_size=1)]
INSTRUMENTS = {SYMBOL: Instrument(SYMBOL, "BTC", "USD")}
FENCE = FenceToken("execution", 1)
RICH, POOR = "alice", "bob"
CASH = 100_000_000
TIMEOUTS = PhaseTimeouts(init=3.0, can_commit=8.0, pre_commit=8.0, do_commit=1.0, aborting=1.0)
LEASE_TTL = 1.0
SWEEP = 0.1
RECOVERY_BOUND = 8.0
"""Seconds from a replica's death to the transaction's end: lease ttl + sweep + the steps."""


async def eventually(check: Callable[[], Awaitable[Any]], within: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


async def setup_ledger(dsn: str) -> None:
    db = create_engine(dsn)
    try:
        await migrate_ledger(db)
        await migrate_coordinator(db)
        await raise_epoch(db, FENCE.pair_name, FENCE.epoch, "test")
        await create_asset(db, FENCE, "USD", decimals=2)
        await create_asset(db, FENCE, "BTC", decimals=0)
        for account in (RICH, POOR):
            await open_account(db, FENCE, account, AccountKind.USER)
        await deposit(db, FENCE, deposit_id="d-usd", account_id=RICH, asset="USD", amount=CASH)
        await deposit(db, FENCE, deposit_id="d-btc", account_id=RICH, asset="BTC", amount=1_000)
    finally:
        await db.dispose()


@dataclass
class Bench:
    """The venue and execution's side of the wire, in the test process."""

    bus: MessageBus
    names: Names
    venue: VenueAdapter
    outcomes: list[TxnOutcome] = field(default_factory=list)

    @classmethod
    async def start(cls, urls: list[str], namespace: str, *, with_venue: bool = True) -> Bench:
        bus = MessageBus(
            BusSettings(mode=BusMode.RABBITMQ, urls=tuple(urls), service="bench", depth_poll_interval=0),
            registry=registry(),
            metrics_registry=CollectorRegistry(),
        )
        await bus.start()
        names = Names.namespaced(namespace)
        await bus.declare(topology(names))
        venue = VenueAdapter(bus, SPECS, venue="venue-test", names=names)
        if with_venue:
            await venue.start()
        bench = cls(bus, names, venue)
        await bus.subscribe(names.outcomes, bench._outcome)
        return bench

    async def _outcome(self, envelope: Envelope[Any]) -> None:
        if isinstance(envelope.payload, TxnOutcome):
            self.outcomes.append(envelope.payload)

    async def place(self, order_id: str, *, account: str = RICH, qty: int = 2, price: int = 30_000) -> None:
        order = OrderNew(
            order_id=order_id,
            client_order_id=order_id,
            account=account,
            symbol=SYMBOL,
            side=Side.BUY,
            order_type=OrderType.LIMIT,
            qty=Decimal(qty),
            price=Decimal(price),
        )
        await self.bus.publish(order, exchange=self.names.exchange, routing_key=PLACE_KEY)

    def outcome_of(self, order_id: str) -> TxnOutcome | None:
        return next((o for o in self.outcomes if o.order_id == order_id), None)

    async def close(self) -> None:
        await self.bus.close()


def config(dsn: str, urls: list[str], namespace: str, replica: str, **extra: Any) -> CoordinatorConfig:
    values: dict[str, Any] = {
        "db_url": dsn,
        "bus_urls": tuple(urls),
        "bus_mode": "rabbitmq",
        "replica": replica,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "namespace": namespace,
        "instruments": INSTRUMENTS,
        "risk": RiskPolicy(RiskLimits(max_qty=100)),
        "timeouts": TIMEOUTS,
        "lease": LeaseSettings(ttl=LEASE_TTL, claim_wait=5.0),
        "sweep_interval": SWEEP,
        "renew_interval": LEASE_TTL / 3,
        "outbox_interval": 0.5,
    }
    values.update(extra)
    return CoordinatorConfig(**values)


async def start_replica(
    dsn: str, urls: list[str], namespace: str, replica: str, **extra: Any
) -> CoordinatorService:
    service = CoordinatorService(config(dsn, urls, namespace, replica, **extra))
    await service.start()
    return service


def spawn_replica(
    dsn: str, urls: list[str], namespace: str, replica: str, log: Path, crash_at: str | None = None
) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "trading_system.coordinator.service",
        "coordinator",
        "serve",
        "--db-url",
        dsn,
        "--bus-url",
        ",".join(urls),
        "--bus-mode",
        "rabbitmq",
        "--namespace",
        namespace,
        "--replica",
        replica,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--instrument",
        "BTC-USD:BTC:USD",
        "--max-qty",
        "100",
        "--lease-ttl",
        str(LEASE_TTL),
        "--sweep-interval",
        str(SWEEP),
        "--timeout-init",
        str(TIMEOUTS.init),
        "--timeout-can-commit",
        str(TIMEOUTS.can_commit),
        "--timeout-pre-commit",
        str(TIMEOUTS.pre_commit),
        "--timeout-do-commit",
        str(TIMEOUTS.do_commit),
        "--timeout-aborting",
        str(TIMEOUTS.aborting),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "services")}
    env.pop("TRADING_SYSTEM_COORDINATOR_CRASH_AT", None)
    if crash_at is not None:
        env["TRADING_SYSTEM_COORDINATOR_CRASH_AT"] = crash_at
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def new_namespace() -> str:
    return f"tc{uuid.uuid4().hex[:10]}"


async def record(dsn: str, txn_id: str) -> TxnRecord | None:
    db = create_engine(dsn)
    try:
        return await SqlStore(db).get(txn_id)
    finally:
        await db.dispose()

"""Coordinator transactions/s and latency, placement request on the bus to DoCommit.

Run:  .venv/bin/python -m benchmarks.coordinator_throughput [--urls URL,URL,URL]
          [--dsn postgresql+asyncpg://postgres@127.0.0.1:35432/postgres] [--replicas 2] [--orders 1000]

URLs and the DSN default to the test environment's state file (``TS_TESTENV_STATE``);
nothing is started but the coordinator replicas (subprocesses, the deployed command) and,
in this process, the venue (the pipeline's ``VenueAdapter``) and the requester. A scratch
database is created and dropped.

Each order is one buy on its own account's balance row (``--accounts`` accounts), resting
on the book, so every transaction commits: reserve + risk vote, PreCommit, venue accept,
bind. Latency is from the placement request's publish to the ``txn.outcome`` (sent right
after the DoCommit's bind is stored). Two runs: saturated (closed loop: ``--window``
transactions open at once, a new request for each outcome) for throughput, then paced
at ``--paced-rate`` requests/s for latency below saturation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import make_url

from benchmarks.scratch_db import admin_execute as _admin
from trading_system.bus import Envelope, MessageBus
from trading_system.bus.catalog import OrderNew, TxnOutcome
from trading_system.bus.catalog.common import OrderType, Side
from trading_system.bus.catalog.transaction import TxnResult
from trading_system.bus.config import BusMode, BusSettings
from trading_system.coordinator.sql_store import migrate_coordinator
from trading_system.ledger import AccountKind, FenceToken, create_asset, deposit, migrate_ledger, open_account
from trading_system.matching.core import SymbolSpec
from trading_system.pipeline.messages import EVENTS_KEY, PLACE_KEY, MatchingEvents, Names, registry, topology
from trading_system.pipeline.venue import VenueAdapter, to_engine_command
from trading_system.storage import create_engine, raise_epoch

ROOT = Path(__file__).resolve().parents[1]
FENCE = FenceToken("execution", 1)


async def _setup_ledger(dsn: str, accounts: int) -> None:
    db = create_engine(dsn)
    try:
        await migrate_ledger(db)
        await migrate_coordinator(db)
        await raise_epoch(db, FENCE.pair_name, FENCE.epoch, "bench")
        await create_asset(db, FENCE, "USD", decimals=2)
        await create_asset(db, FENCE, "BTC", decimals=0)
        for i in range(accounts):
            await open_account(db, FENCE, f"acct-{i}", AccountKind.USER)
            await deposit(db, FENCE, deposit_id=f"d-{i}", account_id=f"acct-{i}", asset="USD", amount=10**12)
    finally:
        await db.dispose()


def _spawn(dsn: str, urls: list[str], namespace: str, replica: str, log: Path) -> subprocess.Popen[bytes]:
    args = [
        sys.executable, "-m", "trading_system.coordinator.service", "coordinator", "serve",
        "--db-url", dsn, "--bus-url", ",".join(urls), "--bus-mode", "rabbitmq", "--namespace", namespace,
        "--replica", replica, "--host", "127.0.0.1", "--port", "0", "--instrument", "BTC-USD:BTC:USD",
        "--max-notional", str(10**15),
    ]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


class PipelinedVenue(VenueAdapter):
    """The pipeline's venue, but its event publishes are pipelined rather than awaited one by
    one: awaited, the venue's publisher confirms (one round trip per order) would cap
    the run, as a deployed matching engine with batched publishes does not."""

    def __init__(self, bus: MessageBus, names: Names) -> None:
        super().__init__(bus, [SymbolSpec("BTC-USD")], names=names)
        self.pending: set[asyncio.Task[Any]] = set()

    async def handle(self, envelope: Envelope[Any]) -> None:
        self._ts += 1
        events = self.engine.process(to_engine_command(envelope.payload, envelope.message_id, self._ts))
        if events:
            message = MatchingEvents(venue=self.venue, events=tuple(tuple(e) for e in events))
            publish = self.bus.publish(message, exchange=self.names.exchange, routing_key=EVENTS_KEY)
            task = asyncio.create_task(publish)
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)


class Requester:
    def __init__(self, bus: MessageBus, names: Names, accounts: int) -> None:
        self.bus, self.names, self.accounts = bus, names, accounts
        self.sent: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.results: dict[str, TxnResult] = {}
        self.all_done = asyncio.Event()
        self.expected = 0
        self.waiting: dict[str, asyncio.Future[None]] = {}

    async def on_outcome(self, envelope: Envelope[Any]) -> None:
        outcome = envelope.payload
        if isinstance(outcome, TxnOutcome) and outcome.order_id not in self.done:
            self.done[outcome.order_id] = time.perf_counter()
            self.results[outcome.order_id] = outcome.result
            waiter = self.waiting.pop(outcome.order_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if len(self.done) >= self.expected:
                self.all_done.set()

    async def place(self, order_id: str, n: int) -> None:
        order = OrderNew(
            order_id=order_id,
            client_order_id=order_id,
            account=f"acct-{n % self.accounts}",
            symbol="BTC-USD",
            side=Side.BUY,
            order_type=OrderType.LIMIT,
            qty=Decimal(1),
            price=Decimal(30_000),
        )
        self.sent[order_id] = time.perf_counter()
        await self.bus.publish(order, exchange=self.names.exchange, routing_key=PLACE_KEY)

    async def run(
        self, prefix: str, orders: int, window: int, rate: float | None, limit: float
    ) -> dict[str, Any]:
        self.sent.clear()
        self.done.clear()
        self.results.clear()
        self.all_done.clear()
        self.expected = orders
        gate = asyncio.Semaphore(window)

        async def one(n: int) -> None:
            # Closed loop: at most ``window`` transactions open at once, so the run
            # measures the coordinator's rate, not how long a flooded queue takes to drain.
            async with gate:
                order_id = f"{prefix}-{n}"
                self.waiting[order_id] = asyncio.get_running_loop().create_future()
                await self.place(order_id, n)
                await self.waiting[order_id]

        start = time.perf_counter()
        tasks = []
        for n in range(orders):
            if rate:
                await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
        await asyncio.wait_for(self.all_done.wait(), limit)
        latencies = sorted(self.done[o] - self.sent[o] for o in self.done)
        elapsed = max(self.done.values()) - min(self.sent.values())
        committed = sum(1 for r in self.results.values() if r is TxnResult.COMMITTED)
        return {
            "run": prefix,
            "orders": orders,
            "committed": committed,
            "seconds": round(elapsed, 3),
            "txn_per_s": round(orders / elapsed, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
            "max_ms": round(1000 * latencies[-1], 1),
        }


def _cpu_seconds(procs: list[subprocess.Popen[bytes]]) -> float:
    """User + system CPU the replicas used so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for proc in procs:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


async def _wait_serving(logs: list[Path], procs: list[subprocess.Popen[bytes]], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not all("serving on port" in log.read_text(errors="replace") for log in logs if log.exists()):
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError(f"a replica exited; see {logs}")
        if time.monotonic() > deadline:
            raise TimeoutError("replicas did not start")
        await asyncio.sleep(0.1)


async def main_async(args: argparse.Namespace) -> None:
    url = make_url(args.dsn)
    admin = url.render_as_string(hide_password=False)
    scratch = f"coord_bench_{uuid.uuid4().hex[:8]}"
    await _admin(admin, f'CREATE DATABASE "{scratch}"')
    dsn = url.set(database=scratch).render_as_string(hide_password=False)
    namespace = f"cb{uuid.uuid4().hex[:8]}"
    names = Names.namespaced(namespace)
    procs: list[subprocess.Popen[bytes]] = []
    bus = MessageBus(
        BusSettings(mode=BusMode.RABBITMQ, urls=tuple(args.urls), service="bench", depth_poll_interval=0),
        registry=registry(),
        metrics_registry=CollectorRegistry(),
    )
    try:
        await _setup_ledger(dsn, args.accounts)
        await bus.start()
        await bus.declare(topology(names))
        await PipelinedVenue(bus, names).start()
        requester = Requester(bus, names, args.accounts)
        await bus.subscribe(names.outcomes, requester.on_outcome, concurrency=16)
        logdir = Path(tempfile.mkdtemp(prefix="coord-bench-"))
        logs = [logdir / f"r{i}.log" for i in range(args.replicas)]
        procs = [_spawn(dsn, list(args.urls), namespace, f"r{i}", logs[i]) for i in range(args.replicas)]
        await _wait_serving(logs, procs, 60)
        await requester.run("warm", 50, args.window, None, 60)
        results = []
        for name, orders, rate, limit in (
            ("sat", args.orders, None, 300),
            ("paced", args.paced_orders, args.paced_rate, 120),
        ):
            cpu = _cpu_seconds(procs)
            result = await requester.run(name, orders, args.window, rate, limit)
            result["replica_cpu_ms_per_txn"] = round(1000 * (_cpu_seconds(procs) - cpu) / orders, 1)
            results.append(result)
        print(f"replicas={args.replicas} accounts={args.accounts} window={args.window} cpus={os.cpu_count()}")
        print(
            "| run | orders | committed | seconds | txn/s | p50 ms | p99 ms | max ms | replica CPU ms/txn |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(
                f"| {r['run']} | {r['orders']} | {r['committed']} | {r['seconds']} | {r['txn_per_s']} "
                f"| {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['replica_cpu_ms_per_txn']} |"
            )
        if args.json:
            print(json.dumps(results))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await bus.close()
        await _admin(admin, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


def _state() -> dict[str, Any]:
    path = os.environ.get("TS_TESTENV_STATE")
    if path and Path(path).exists():
        data: dict[str, Any] = json.loads(Path(path).read_text())
        return data
    return {}


def main() -> None:
    state = _state()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--urls",
        type=lambda s: [u for u in s.split(",") if u],
        default=state.get("rabbitmq", {}).get("urls"),
        help="RabbitMQ URLs, comma-separated (default: TS_TESTENV_STATE)",
    )
    parser.add_argument(
        "--dsn",
        default=state.get("postgres", {}).get("admin_dsn"),
        help="PostgreSQL URL (default: TS_TESTENV_STATE)",
    )
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--orders", type=int, default=1000, help="orders in the saturated run")
    parser.add_argument("--window", type=int, default=32, help="transactions open at once (both runs)")
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--paced-rate", type=float, default=50.0, help="requests/s of the paced run")
    parser.add_argument("--paced-orders", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    if not args.urls or not args.dsn:
        parser.error("--urls and --dsn are needed (or TS_TESTENV_STATE pointing at a running environment)")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

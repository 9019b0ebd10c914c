"""The operators' CLI against a live replica, PostgreSQL and RabbitMQ (as a subprocess)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from functools import partial

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.environment.rabbitmq import RabbitMQCluster
from tests.integration.coordinator.harness import (
    FENCE,
    INSTRUMENTS,
    ROOT,
    Bench,
    eventually,
    new_namespace,
    setup_ledger,
    start_replica,
)
from trading_system.coordinator.protocol import Phase
from trading_system.coordinator.sql_store import SqlStore
from trading_system.ledger import HoldState, get_hold, reconcile
from trading_system.pipeline.ledger_gate import LedgerGate
from trading_system.pipeline.settlement import SettlementConsumer
from trading_system.storage import create_engine

pytestmark = pytest.mark.integration


def cli(dsn: str, urls: list[str], namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "trading_system.coordinator.service", "coordinator", "txns", *args]
    command += ["--db-url", dsn, "--bus-url", ",".join(urls), "--namespace", namespace]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "services")}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT, check=False)


async def _phase(store: SqlStore, txn_id: str, phase: Phase) -> bool:
    record = await store.get(txn_id)
    return record is not None and record.transaction.phase is phase


async def test_force_abort_of_an_in_doubt_transaction_compensates(
    rabbitmq: RabbitMQCluster, postgres_dsn: str
) -> None:
    await setup_ledger(postgres_dsn)
    namespace, urls = new_namespace(), list(rabbitmq.urls)
    bench = await Bench.start(urls, namespace, with_venue=False)  # the venue is down: no answer
    replica = await start_replica(postgres_dsn, urls, namespace, "r0")
    db = create_engine(postgres_dsn)
    store = SqlStore(db)
    gate = LedgerGate(db)
    try:
        await bench.place("stuck")
        await eventually(partial(_phase, store, "txn-stuck", Phase.PRE_COMMIT), 15, "pre_commit")
        listed = await asyncio.to_thread(cli, postgres_dsn, urls, namespace, "list", "--in-doubt")
        assert listed.returncode == 0 and "txn-stuck" in listed.stdout and "pre_commit" in listed.stdout

        refused = await asyncio.to_thread(cli, postgres_dsn, urls, namespace, "force-abort", "txn-nope",
                                          "--reason", "x", "--operator", "ann")  # fmt: skip
        assert refused.returncode == 2 and "unknown transaction" in refused.stderr

        aborted = await asyncio.to_thread(cli, postgres_dsn, urls, namespace, "force-abort", "txn-stuck",
                                          "--reason", "venue down", "--operator", "ann")  # fmt: skip
        assert aborted.returncode == 0, aborted.stderr
        hold = await get_hold(db, "txn-stuck")
        # The venue may have the order (and fill it before the cancel): the hold stays for now.
        assert hold is not None and hold.state is HoldState.RESERVED
        assert await _phase(store, "txn-stuck", Phase.ABORTING)  # waiting for the venue's cancel

        gate.start()
        settlement = SettlementConsumer(bench.bus, gate, FENCE, INSTRUMENTS, 10, bench.names)
        await settlement.start()
        await bench.venue.start()  # the venue is back: it books the order, then cancels it
        await eventually(partial(_phase, store, "txn-stuck", Phase.ABORTED), 15, "aborted")
        # Settlement releases the hold when the venue reports the order cancelled.
        await eventually(partial(_hold_is, db, "txn-stuck", HoldState.RELEASED), 15, "the hold released")
        await eventually(partial(_has_outcome, bench, "stuck"), 10, "the outcome")
        shown = await asyncio.to_thread(cli, postgres_dsn, urls, namespace, "show", "txn-stuck")
        assert shown.returncode == 0 and "AUDIT force_abort by ann: venue down" in shown.stdout

        again = await asyncio.to_thread(cli, postgres_dsn, urls, namespace, "force-commit", "txn-stuck",
                                        "--reason", "oops", "--operator", "ann")  # fmt: skip
        assert again.returncode == 2 and "aborted" in again.stderr
        assert [a.action for a in await store.audit_entries("txn-stuck")] == ["force_abort"]
        assert (await reconcile(db)).ok
    finally:
        await gate.stop()
        await replica.stop()
        await bench.close()
        await db.dispose()


async def _hold_is(db: AsyncEngine, hold_id: str, state: HoldState) -> bool:
    hold = await get_hold(db, hold_id)
    return hold is not None and hold.state is state


async def _has_outcome(bench: Bench, order_id: str) -> bool:
    return bench.outcome_of(order_id) is not None

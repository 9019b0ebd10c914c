"""kill -9 of a coordinator replica in each phase: another replica finishes the transaction.

Replica A runs with ``TRADING_SYSTEM_COORDINATOR_CRASH_AT=<phase>`` and exits with 137
right after persisting that phase (before any effect of it runs, the worst moment).
Replica B, started once A is dead, takes the expired lease over and resumes from the
persisted phase; the ledger must end exactly as the outcome says.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path

import pytest

from tests.environment.rabbitmq import RabbitMQCluster
from tests.integration.coordinator.harness import (
    LEASE_TTL,
    RECOVERY_BOUND,
    RICH,
    Bench,
    eventually,
    spawn_replica,
)
from trading_system.bus.catalog.transaction import TxnResult
from trading_system.coordinator.protocol import Phase
from trading_system.coordinator.sql_store import SqlStore
from trading_system.ledger import HoldState, get_balance, get_hold, reconcile

pytestmark = pytest.mark.integration


async def _exited(proc: object) -> int | None:
    code = proc.poll()  # type: ignore[attr-defined]
    return None if code is None else int(code)


def _log_says_serving(log: Path) -> bool:
    return log.exists() and "serving on port" in log.read_text(errors="replace")


async def _serving(log: Path) -> bool:
    return await asyncio.to_thread(_log_says_serving, log)


CASES = [
    ("can_commit", 30_000, Phase.COMMITTED),
    ("pre_commit", 30_000, Phase.COMMITTED),
    ("do_commit", 30_000, Phase.COMMITTED),
    ("committed", 30_000, Phase.COMMITTED),
    ("aborting", 30_001, Phase.ABORTED),  # off the tick: the venue rejects, the hold is released
]


@pytest.mark.parametrize(("crash_at", "price", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_another_replica_finishes_after_kill9(
    world: tuple[Bench, SqlStore, str],
    rabbitmq: RabbitMQCluster,
    postgres_dsn: str,
    tmp_path: Path,
    crash_at: str,
    price: int,
    expected: Phase,
) -> None:
    bench, store, namespace = world
    urls = list(rabbitmq.urls)
    txn_id = "txn-k9"
    a = spawn_replica(postgres_dsn, urls, namespace, "replica-a", tmp_path / "a.log", crash_at=crash_at)
    b = None
    try:
        await bench.place("k9", price=price)
        assert await eventually(lambda: _exited(a), 40, "replica A to crash") == 137
        record = await store.get(txn_id)
        assert record is not None and record.transaction.phase.value == crash_at

        b = spawn_replica(postgres_dsn, urls, namespace, "replica-b", tmp_path / "b.log")
        await eventually(lambda: _serving(tmp_path / "b.log"), 40, "replica B to serve")
        ready = time.monotonic()
        await eventually(lambda: _ended(store, txn_id), RECOVERY_BOUND, "replica B to finish the transaction")
        await eventually(lambda: _true(bench.outcome_of("k9") is not None), RECOVERY_BOUND, "the outcome")
        recovered_in = time.monotonic() - ready

        record = await store.get(txn_id)
        assert record is not None and record.transaction.phase is expected
        outcome = bench.outcome_of("k9")
        assert outcome is not None
        hold = await get_hold(store.db, txn_id)
        assert hold is not None
        if expected is Phase.COMMITTED:
            assert outcome.result is TxnResult.COMMITTED
            assert hold.state is HoldState.BOUND
        else:
            assert outcome.result is TxnResult.ABORTED
            assert hold.state is HoldState.RELEASED
            assert (await get_balance(store.db, RICH, "USD")).held == 0
        if crash_at != "committed":  # A died holding the lease: B took it over
            events = [h.event for h in record.transaction.history]
            assert "LeaseAcquired" in events
            replicas = {e.replica for e in await store.events(txn_id)}
            assert replicas == {"replica-a", "replica-b"}
        assert (await reconcile(store.db)).ok
        assert recovered_in < RECOVERY_BOUND
        print(f"\n{crash_at}: finished {recovered_in:.2f}s after replica B was serving")
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    await asyncio.to_thread(proc.wait, 10)
                except Exception:
                    proc.kill()


async def _ended(store: SqlStore, txn_id: str) -> bool:
    record = await store.get(txn_id)
    return record is not None and record.transaction.is_terminal


async def _true(value: bool) -> bool:
    return value


async def test_a_live_replica_takes_over_within_the_lease_bound(
    world: tuple[Bench, SqlStore, str], rabbitmq: RabbitMQCluster, postgres_dsn: str, tmp_path: Path
) -> None:
    """Both replicas serve; A dies in pre_commit of whichever order it gets first. B must
    finish that transaction within the lease ttl plus a sweep and the remaining steps."""
    bench, store, namespace = world
    urls = list(rabbitmq.urls)
    logs = (tmp_path / "a.log", tmp_path / "b.log")
    a = spawn_replica(postgres_dsn, urls, namespace, "replica-a", logs[0], crash_at="pre_commit")
    b = spawn_replica(postgres_dsn, urls, namespace, "replica-b", logs[1])
    try:
        for log in logs:
            await eventually(partial(_serving, log), 40, f"{log.name} to serve")
        placed: list[str] = []
        while a.poll() is None:
            assert len(placed) < 50, "replica A never got a request"
            order_id = f"live-{len(placed)}"
            placed.append(order_id)
            await bench.place(order_id)
            await eventually(partial(_ended_or_crashed, store, f"txn-{order_id}", a), 15, order_id)
        died = time.monotonic()
        assert a.returncode == 137
        for order_id in placed:
            await eventually(partial(_ended, store, f"txn-{order_id}"), LEASE_TTL + 5, order_id)
        recovered_in = time.monotonic() - died
        victim = await store.get(f"txn-{placed[-1]}")
        assert victim is not None and victim.transaction.phase is Phase.COMMITTED
        takeover = [h for h in victim.transaction.history if h.event == "LeaseAcquired"]
        assert [h.detail for h in takeover] == ["owner replica-a -> replica-b"]
        hold = await get_hold(store.db, f"txn-{placed[-1]}")
        assert hold is not None and hold.state is HoldState.BOUND
        assert (await reconcile(store.db)).ok
        assert recovered_in < LEASE_TTL + 3
        print(f"\nlive takeover: finished {recovered_in:.2f}s after replica A died (lease ttl {LEASE_TTL}s)")
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 10)


async def _ended_or_crashed(store: SqlStore, txn_id: str, proc: object) -> bool:
    return proc.poll() is not None or await _ended(store, txn_id)  # type: ignore[attr-defined]

"""Coordinator replicas (in-process) on the real RabbitMQ cluster and PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from sqlalchemy import func, select

from tests.environment.rabbitmq import RabbitMQCluster
from tests.integration.coordinator.harness import (
    POOR,
    RICH,
    Bench,
    eventually,
    start_replica,
)
from trading_system.bus.catalog.transaction import TxnResult
from trading_system.coordinator.protocol import HoldStatus, Phase
from trading_system.coordinator.sql_store import SqlStore, txns
from trading_system.ledger import HoldState, get_balance, get_hold, reconcile

pytestmark = pytest.mark.integration


async def _ended(store: SqlStore, txn_id: str) -> Phase | None:
    record = await store.get(txn_id)
    return record.transaction.phase if record is not None and record.transaction.is_terminal else None


def _ender(store: SqlStore, txn_id: str) -> Callable[[], Awaitable[Phase | None]]:
    return lambda: _ended(store, txn_id)


async def test_two_replicas_commit_every_order_once(
    world: tuple[Bench, SqlStore, str], rabbitmq: RabbitMQCluster, postgres_dsn: str
) -> None:
    bench, store, namespace = world
    replicas = [await start_replica(postgres_dsn, list(rabbitmq.urls), namespace, f"r{i}") for i in range(2)]
    try:
        orders = [f"o-{i}" for i in range(20)]
        for order_id in orders:
            await bench.place(order_id)
        await bench.place("o-0")  # a duplicate placement request

        async def all_committed() -> bool:
            return all([await _ended(store, f"txn-{o}") is Phase.COMMITTED for o in orders])

        await eventually(all_committed, 20, "every transaction to commit")
        await eventually(lambda: _true(len({o.order_id for o in bench.outcomes}) == 20), 10, "20 outcomes")
        assert {o.result for o in bench.outcomes} == {TxnResult.COMMITTED}
        async with store.db.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(txns))).scalar_one()
            dup = (await conn.execute(select(func.count()).where(txns.c.order_id == "o-0"))).scalar_one()
        assert (count, dup) == (20, 1)
        for order_id in orders:
            hold = await get_hold(store.db, f"txn-{order_id}")
            assert hold is not None and hold.state is HoldState.BOUND
        record = await store.get("txn-o-1")
        assert record is not None and record.transaction.hold is HoldStatus.BOUND
        phases = [(h.from_phase, h.to_phase) for h in record.transaction.history]
        assert (Phase.PRE_COMMIT, Phase.DO_COMMIT) in phases and phases[-1][1] is Phase.COMMITTED
        votes = {e.participant: e.vote for e in await store.events("txn-o-1") if e.kind == "vote"}
        assert votes == {"ledger": "yes", "risk": "yes"}
        assert (await reconcile(store.db)).ok
        ended = 0.0
        async with aiohttp.ClientSession() as http:
            for replica in replicas:
                base = f"http://127.0.0.1:{replica.http_port}"
                async with http.get(f"{base}/readyz") as ready:
                    assert ready.status == 200 and (await ready.json())["db"]["ok"] is True
                async with http.get(f"{base}/metrics") as metrics:
                    text = await metrics.text()
                ended += _sample(text, 'ts_coordinator_transactions_ended_total{outcome="committed"}')
                assert "ts_coordinator_phase_seconds_bucket" in text and "ts_coordinator_in_doubt" in text
        assert ended == 20  # each transaction ended once, on one replica or the other
    finally:
        for replica in replicas:
            await replica.stop()


async def test_no_votes_and_venue_reject_abort_without_a_hold(
    world: tuple[Bench, SqlStore, str], rabbitmq: RabbitMQCluster, postgres_dsn: str
) -> None:
    bench, store, namespace = world
    replica = await start_replica(postgres_dsn, list(rabbitmq.urls), namespace, "r0")
    try:
        await bench.place("broke", account=POOR)  # ledger NO: insufficient funds
        await bench.place("big", qty=500)  # risk NO: above max qty (the hold is released)
        await bench.place("offtick", price=30_001)  # venue reject: price not on the tick
        for order_id in ("broke", "big", "offtick"):
            assert await eventually(_ender(store, f"txn-{order_id}"), 15, order_id) is Phase.ABORTED
        await eventually(lambda: _true(len(bench.outcomes) == 3), 10, "three outcomes")
        assert {o.result for o in bench.outcomes} == {TxnResult.ABORTED}
        assert await get_hold(store.db, "txn-broke") is None
        for order_id in ("big", "offtick"):
            hold = await get_hold(store.db, f"txn-{order_id}")
            assert hold is not None and hold.state is HoldState.RELEASED
        assert (await get_balance(store.db, RICH, "USD")).held == 0
        reasons = {o.order_id: o.reason for o in bench.outcomes}
        assert (
            "InsufficientFunds" in reasons["broke"]
            and "qty" in reasons["big"]
            and "venue" in reasons["offtick"]
        )
        assert (await reconcile(store.db)).ok
    finally:
        await replica.stop()


async def test_risk_rate_limit_refuses_the_burst(
    world: tuple[Bench, SqlStore, str], rabbitmq: RabbitMQCluster, postgres_dsn: str
) -> None:
    from trading_system.coordinator.risk import RiskPolicy
    from trading_system.pipeline.orders import RiskLimits

    bench, store, namespace = world
    policy = RiskPolicy(RiskLimits(max_qty=100), max_orders=3, window=60.0, max_exposure=10**12)
    replica = await start_replica(postgres_dsn, list(rabbitmq.urls), namespace, "r0", risk=policy)
    try:
        for i in range(5):
            await bench.place(f"burst-{i}")
            await eventually(_ender(store, f"txn-burst-{i}"), 15, f"burst-{i}")
        phases = [await _ended(store, f"txn-burst-{i}") for i in range(5)]
        assert phases == [Phase.COMMITTED] * 3 + [Phase.ABORTED] * 2
        assert (await get_balance(store.db, RICH, "USD")).held > 0  # three bound holds
        assert (await reconcile(store.db)).ok
    finally:
        await replica.stop()


async def _true(value: bool) -> bool:
    return value


def _sample(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

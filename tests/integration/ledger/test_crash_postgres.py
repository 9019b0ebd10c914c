"""kill -9 of PostgreSQL in the middle of settlement: committed data stays, redelivery settles the rest once.

This test crashes the server it is given, so it skips itself when pointed at a shared
server (TS_TESTENV_STATE); without it, the session starts a private PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.environment.postgres import PostgresServer
from tests.environment.session import STATE_ENV
from tests.unit.ledger.helpers import BTC_DEPOSIT, USD_DEPOSIT, World, place_buy, place_sell, snapshot, trade
from trading_system.ledger import (
    FEE_ACCOUNT,
    SettlementStatus,
    TradeSettlement,
    get_balance,
    reconcile,
    settle_trades,
)
from trading_system.storage import create_engine

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(os.environ.get(STATE_ENV)),
        reason="kills PostgreSQL: runs only on a private server, not a shared TS_TESTENV_STATE one",
    ),
]

_CONNECTION_LOST = (DBAPIError, OperationalError, InterfaceError, ConnectionError, OSError)


async def _orders_and_trades(w: World, count: int) -> list[TradeSettlement]:
    trades = []
    for i in range(count):
        await place_buy(w, "alice", f"b{i}", 1_000, 3)
        await place_sell(w, "bob", f"s{i}", 3)
        trades.append(trade(f"t{i}", 950, 3, ("alice", f"b{i}"), ("bob", f"s{i}")))
    return trades


async def test_settlement_survives_a_crash_and_redelivery_settles_exactly_once(
    postgres: PostgresServer, postgres_dsn: str, pg_world: World, engine: AsyncEngine
) -> None:
    w = pg_world
    trades = await _orders_and_trades(w, 300)
    acknowledged = {r.trade_id for r in (await settle_trades(engine, w.fence, trades[:20])).settled}
    assert len(acknowledged) == 20

    under_way = asyncio.Event()

    async def keep_settling() -> None:
        for i in range(20, len(trades), 2):
            try:
                result = await settle_trades(engine, w.fence, trades[i : i + 2])
            except _CONNECTION_LOST:
                return
            acknowledged.update(r.trade_id for r in result.settled)
            if len(acknowledged) >= 60:
                under_way.set()

    settler = asyncio.create_task(keep_settling())
    await asyncio.wait_for(under_way.wait(), 60)
    await asyncio.to_thread(postgres.crash_restart)
    with contextlib.suppress(*_CONNECTION_LOST):
        await settler
    await engine.dispose()
    assert 20 < len(acknowledged) < len(trades), "the crash should land in the middle of the run"

    fresh = create_engine(postgres_dsn)
    try:
        # Every settlement whose commit was acknowledged survived the crash, entries included.
        after = await snapshot(fresh)
        assert {row[0] for row in after["settled_trades"]} == acknowledged
        assert {row[6] for row in after["entries"] if row[3] == "settle_credit"} == acknowledged
        assert (await reconcile(fresh)).ok
        # Redeliver everything: what committed before the crash is a duplicate, the rest settles now.
        result = await settle_trades(fresh, w.fence, trades)
        assert not result.failed
        assert len(result.settled) + len(result.duplicates) == len(trades)
        again = await settle_trades(fresh, w.fence, trades)
        assert [r.status for r in again.duplicates] == [SettlementStatus.DUPLICATE] * len(trades)
        paid = sum(t.notional + t.buyer_fee for t in trades)
        assert (await get_balance(fresh, "alice", "USD")).total == USD_DEPOSIT - paid
        assert (await get_balance(fresh, "alice", "BTC")).total == BTC_DEPOSIT + 3 * len(trades)
        fees = sum(t.buyer_fee + t.seller_fee for t in trades)
        assert (await get_balance(fresh, FEE_ACCOUNT, "USD")).available == fees
        report = await reconcile(fresh)
        assert report.ok, report.breaks
        assert report.counts["settled_trades"] == len(trades)
    finally:
        await fresh.dispose()

"""Concurrent writers on PostgreSQL: no overdraft, no double settlement, no deadlock."""

from __future__ import annotations

import asyncio
import random

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.unit.ledger.helpers import BTC_DEPOSIT, USD_DEPOSIT, World, place_buy, place_sell, trade
from trading_system.ledger import (
    FEE_ACCOUNT,
    InsufficientFundsError,
    ReleaseStatus,
    SettlementStatus,
    TradeSettlement,
    deposit,
    get_balance,
    open_account,
    reconcile,
    release,
    reserve,
    settle_trade,
    settle_trades,
)

pytestmark = pytest.mark.integration


async def test_concurrent_reserves_never_overdraw(pg_world: World) -> None:
    w = pg_world
    await open_account(w.engine, w.fence, "hot")
    await deposit(w.engine, w.fence, deposit_id="hot", account_id="hot", asset="USD", amount=10_000)
    rng = random.Random(5)
    amounts = [rng.randint(50, 900) for _ in range(120)]
    start = asyncio.Event()

    async def one(i: int, amount: int) -> int:
        await start.wait()
        try:
            await reserve(
                w.engine, w.fence, hold_id=f"h{i}", account_id="hot", asset="USD", amount=amount, order_qty=1
            )
        except InsufficientFundsError as exc:
            assert exc.available < amount
            return 0
        return amount

    tasks = [asyncio.create_task(one(i, a)) for i, a in enumerate(amounts)]
    start.set()
    taken = await asyncio.gather(*tasks)
    balance = await get_balance(w.engine, "hot", "USD")
    assert sum(taken) <= 10_000
    assert (balance.available, balance.held) == (10_000 - sum(taken), sum(taken))
    # Every refusal came when the rest really could not pay for it.
    assert all(t or a > balance.available for t, a in zip(taken, amounts, strict=True))
    assert sum(1 for t in taken if t) > 5 and sum(1 for t in taken if not t) > 5
    assert (await reconcile(w.engine)).ok


async def test_concurrent_deliveries_of_one_trade_settle_once(pg_world: World) -> None:
    w = pg_world
    await place_buy(w, "alice", "b1", 40_000, 5)
    await place_sell(w, "bob", "s1", 5)
    t1 = trade("t1", 40_000, 5, ("alice", "b1"), ("bob", "s1"))
    results = await asyncio.gather(*(settle_trade(w.engine, w.fence, t1) for _ in range(20)))
    statuses = sorted(r.status for r in results)
    assert statuses.count(SettlementStatus.SETTLED) == 1
    assert statuses.count(SettlementStatus.DUPLICATE) == 19
    assert (await get_balance(w.engine, "alice", "BTC")).available == BTC_DEPOSIT + 5
    assert (await reconcile(w.engine)).ok


async def test_crossing_trades_in_both_directions_do_not_deadlock(pg_world: World) -> None:
    """alice buys from bob while bob buys from alice, in batches, all at once."""
    w = pg_world
    names = ("alice", "bob", "carol")
    trades: list[TradeSettlement] = []
    for i in range(60):
        buyer, seller = names[i % 3], names[(i + 1 + i // 3) % 3]
        if buyer == seller:
            seller = names[(i + 2) % 3]
        await place_buy(w, buyer, f"b{i}", 3_000, 2)
        await place_sell(w, seller, f"s{i}", 2)
        trades.append(trade(f"t{i}", 2_900, 2, (buyer, f"b{i}"), (seller, f"s{i}")))
    rng = random.Random(7)
    batches = [rng.sample(trades, 6) for _ in range(30)]  # overlapping batches: duplicates race too
    outcomes = await asyncio.gather(*(settle_trades(w.engine, w.fence, b) for b in batches))
    assert not any(o.failed for o in outcomes)
    settled = [r.trade_id for o in outcomes for r in o.settled]
    assert len(settled) == len(set(settled))
    for leftover in [t for t in trades if t.trade_id not in settled]:
        await settle_trade(w.engine, w.fence, leftover)
    fees = sum(t.buyer_fee + t.seller_fee for t in trades)
    assert (await get_balance(w.engine, FEE_ACCOUNT, "USD")).available == fees
    total_usd = sum([(await get_balance(w.engine, n, "USD")).total for n in names])
    assert total_usd + fees == 3 * USD_DEPOSIT
    assert (await reconcile(w.engine)).ok


async def test_cancel_racing_a_fill_keeps_the_ledger_whole(pg_world: World, engine: AsyncEngine) -> None:
    w = pg_world
    for i in range(15):
        await place_buy(w, "alice", f"b{i}", 4_000, 4)
        await place_sell(w, "bob", f"s{i}", 4)
    releases, settlements = [], []
    for i in range(15):  # created alternately, so each cancel and its fill start together
        releases.append(asyncio.create_task(release(engine, w.fence, f"tx-b{i}", reason="cancel")))
        fill = trade(f"t{i}", 3_900, 4, ("alice", f"b{i}"), ("bob", f"s{i}"))
        settlements.append(asyncio.create_task(settle_trade(engine, w.fence, fill)))
    released = [r for r in await asyncio.gather(*releases) if r.status is ReleaseStatus.RELEASED]
    assert all(r.status is SettlementStatus.SETTLED for r in await asyncio.gather(*settlements))
    usd = await get_balance(engine, "alice", "USD")
    assert usd.held == 0 and len(released) <= 15
    assert (await reconcile(engine)).ok

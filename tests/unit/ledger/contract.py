"""The ledger's behaviour, written once and run on SQLite (unit) and PostgreSQL (integration).

A concrete test module subclasses :class:`LedgerContract` and provides an ``engine``
fixture (a fresh, empty database).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.unit.ledger.helpers import (
    BTC_DEPOSIT,
    BTC_USD,
    FEE_BPS,
    PAIR,
    USD_DEPOSIT,
    World,
    build_world,
    place_buy,
    place_sell,
    snapshot,
    trade,
)
from trading_system.ledger import (
    FEE_ACCOUNT,
    FencedError,
    FenceToken,
    HoldNotFoundError,
    HoldState,
    HoldStateError,
    IdempotencyConflictError,
    InsufficientFundsError,
    LedgerValidationError,
    ReleaseStatus,
    SettlementStatus,
    UnknownAccountError,
    UnknownAssetError,
    bind_hold,
    buy_reservation,
    deposit,
    get_balance,
    get_hold,
    migrate_ledger,
    open_account,
    raise_epoch,
    reconcile,
    release,
    reserve,
    settle_trade,
    settle_trades,
)
from trading_system.ledger.metrics import ReconciliationMetrics
from trading_system.ledger.pricing import fee, notional
from trading_system.storage import applied_versions, read_fence


class LedgerContract:
    @pytest_asyncio.fixture(loop_scope="function")
    async def world(self, engine: AsyncEngine) -> AsyncIterator[World]:
        yield await build_world(engine)

    # ------------------------------------------------------------------ schema

    async def test_migrations_are_recorded_and_idempotent(self, world: World) -> None:
        assert await migrate_ledger(world.engine) == []
        assert await applied_versions(world.engine, "ledger") == [1, 2]
        assert await applied_versions(world.engine, "fencing") == [1]

    # ------------------------------------------------------------- deposits

    async def test_deposit_is_idempotent_per_deposit_id(self, world: World) -> None:
        before = await snapshot(world.engine)
        again = await deposit(
            world.engine,
            world.fence,
            deposit_id="alice-usd",
            account_id="alice",
            asset="USD",
            amount=USD_DEPOSIT,
        )
        assert again.available == USD_DEPOSIT
        assert await snapshot(world.engine) == before
        with pytest.raises(IdempotencyConflictError):
            await deposit(
                world.engine, world.fence, deposit_id="alice-usd", account_id="alice", asset="USD", amount=5
            )
        assert await snapshot(world.engine) == before

    @pytest.mark.parametrize(
        ("account", "asset", "amount", "error"),
        [
            ("alice", "USD", -5, LedgerValidationError),
            ("alice", "USD", 0, LedgerValidationError),
            ("alice", "USD", True, LedgerValidationError),
            ("alice", "USD", 2**63, LedgerValidationError),
            ("", "USD", 5, LedgerValidationError),
            ("mallory", "USD", 5, UnknownAccountError),
            ("alice", "DOGE", 5, UnknownAssetError),
        ],
    )
    async def test_bad_deposit_is_refused_and_changes_nothing(
        self, world: World, account: str, asset: str, amount: int, error: type[Exception]
    ) -> None:
        before = await snapshot(world.engine)
        with pytest.raises(error):
            await deposit(
                world.engine, world.fence, deposit_id="d-bad", account_id=account, asset=asset, amount=amount
            )
        assert await snapshot(world.engine) == before

    # ------------------------------------------------------------- reserves

    async def test_reserve_moves_available_to_held_once(self, world: World) -> None:
        result = await place_sell(world, "bob", "s1", 10)
        assert result.created and result.hold.state is HoldState.RESERVED
        balance = await get_balance(world.engine, "bob", "BTC")
        assert (balance.available, balance.held) == (BTC_DEPOSIT - 10, 10)
        before = await snapshot(world.engine)
        retry = await place_sell(world, "bob", "s1", 10)
        assert not retry.created and retry.hold == result.hold
        assert await snapshot(world.engine) == before

    async def test_insufficient_funds_is_a_clean_no_with_no_hold(self, world: World) -> None:
        before = await snapshot(world.engine)
        with pytest.raises(InsufficientFundsError) as caught:
            await place_sell(world, "bob", "s-big", BTC_DEPOSIT + 1)
        assert (caught.value.requested, caught.value.available) == (BTC_DEPOSIT + 1, BTC_DEPOSIT)
        assert await get_hold(world.engine, "tx-s-big") is None
        assert await snapshot(world.engine) == before

    @pytest.mark.parametrize(
        ("account", "asset", "amount", "qty", "error"),
        [
            ("alice", "USD", -1, 1, LedgerValidationError),
            ("alice", "USD", 10, 0, LedgerValidationError),
            ("alice", "USD", 1.5, 1, LedgerValidationError),
            ("mallory", "USD", 10, 1, UnknownAccountError),
            ("alice", "DOGE", 10, 1, UnknownAssetError),
        ],
    )
    async def test_bad_reserve_is_refused_and_changes_nothing(
        self, world: World, account: str, asset: str, amount: int, qty: int, error: type[Exception]
    ) -> None:
        before = await snapshot(world.engine)
        with pytest.raises(error):
            await reserve(
                world.engine,
                world.fence,
                hold_id="h-bad",
                account_id=account,
                asset=asset,
                amount=amount,
                order_qty=qty,
            )
        assert await snapshot(world.engine) == before

    async def test_reserve_with_a_reused_key_but_other_values_is_a_conflict(self, world: World) -> None:
        await place_sell(world, "bob", "s1", 10)
        before = await snapshot(world.engine)
        with pytest.raises(IdempotencyConflictError):
            await place_sell(world, "bob", "s1", 11)
        with pytest.raises(IdempotencyConflictError):  # another hold for the same order
            await reserve(
                world.engine,
                world.fence,
                hold_id="other",
                account_id="bob",
                asset="BTC",
                amount=1,
                order_qty=1,
                order_id="s1",
            )
        assert await snapshot(world.engine) == before

    # ------------------------------------------------------------- releases

    async def test_release_returns_the_hold_and_is_idempotent(self, world: World) -> None:
        await place_sell(world, "bob", "s1", 10)
        first = await release(world.engine, world.fence, "tx-s1", reason="cancel")
        assert (first.status, first.amount) == (ReleaseStatus.RELEASED, 10)
        balance = await get_balance(world.engine, "bob", "BTC")
        assert (balance.available, balance.held) == (BTC_DEPOSIT, 0)
        before = await snapshot(world.engine)
        second = await release(world.engine, world.fence, "tx-s1", reason="cancel")
        assert (second.status, second.amount) == (ReleaseStatus.ALREADY_CLOSED, 0)
        assert await snapshot(world.engine) == before

    async def test_release_before_reserve_blocks_the_late_reserve(self, world: World) -> None:
        absent = await release(world.engine, world.fence, "tx-s1", reason="abort")
        assert absent.status is ReleaseStatus.ABSENT
        with pytest.raises(HoldStateError):
            await place_sell(world, "bob", "s1", 10)
        balance = await get_balance(world.engine, "bob", "BTC")
        assert (balance.available, balance.held) == (BTC_DEPOSIT, 0)
        assert (await release(world.engine, world.fence, "tx-s1")).status is ReleaseStatus.ALREADY_CLOSED

    # ---------------------------------------------------------------- binds

    async def test_bind_hold_is_idempotent_and_refuses_released_or_foreign(self, world: World) -> None:
        await reserve(
            world.engine, world.fence, hold_id="tx1", account_id="bob", asset="BTC", amount=5, order_qty=5
        )
        bound = await bind_hold(world.engine, world.fence, "tx1", "o1")
        assert (bound.state, bound.order_id) == (HoldState.BOUND, "o1")
        assert await bind_hold(world.engine, world.fence, "tx1", "o1") == bound
        with pytest.raises(IdempotencyConflictError):
            await bind_hold(world.engine, world.fence, "tx1", "o2")
        with pytest.raises(HoldNotFoundError):
            await bind_hold(world.engine, world.fence, "nope", "o3")
        await place_sell(world, "bob", "s2", 1)
        await release(world.engine, world.fence, "tx-s2")
        with pytest.raises(HoldStateError):
            await bind_hold(world.engine, world.fence, "tx-s2", "s2")

    # ------------------------------------------------------------ settlement

    async def test_partial_fills_with_price_improvement_and_fees(self, world: World) -> None:
        limit, qty = 40_000, 10
        reserved = buy_reservation(BTC_USD, limit, qty, FEE_BPS)
        await place_buy(world, "alice", "b1", limit, qty)
        await place_sell(world, "bob", "s1", qty)
        # 4 at the limit, then 6 below it: the second fill releases the improvement.
        t1 = trade("t1", limit, 4, ("alice", "b1"), ("bob", "s1"))
        t2 = trade("t2", 39_000, 6, ("alice", "b1"), ("bob", "s1"))
        r1 = await settle_trade(world.engine, world.fence, t1)
        hold = await get_hold(world.engine, "tx-b1")
        assert hold is not None and hold.filled_qty == 4 and hold.state is HoldState.RESERVED
        assert hold.remaining == -(-reserved * 6 // 10)
        assert r1.status is SettlementStatus.SETTLED
        r2 = await settle_trade(world.engine, world.fence, t2)
        assert r2.buyer_released > 0
        buyer_usd = await get_balance(world.engine, "alice", "USD")
        paid = t1.notional + t1.buyer_fee + t2.notional + t2.buyer_fee
        assert (buyer_usd.available, buyer_usd.held) == (USD_DEPOSIT - paid, 0)
        assert (await get_balance(world.engine, "alice", "BTC")).available == BTC_DEPOSIT + 10
        seller_usd = await get_balance(world.engine, "bob", "USD")
        assert seller_usd.available == USD_DEPOSIT + t1.notional + t2.notional - t1.seller_fee - t2.seller_fee
        seller_btc = await get_balance(world.engine, "bob", "BTC")
        assert (seller_btc.available, seller_btc.held) == (BTC_DEPOSIT - 10, 0)
        fees = await get_balance(world.engine, FEE_ACCOUNT, "USD")
        assert fees.available == t1.buyer_fee + t1.seller_fee + t2.buyer_fee + t2.seller_fee > 0
        for hold_id in ("tx-b1", "tx-s1"):
            done = await get_hold(world.engine, hold_id)
            assert done is not None and done.state is HoldState.CONSUMED and done.remaining == 0
        assert t1.buyer_fee == fee(notional(BTC_USD, limit, 4), FEE_BPS)
        assert (await reconcile(world.engine)).ok

    async def test_redelivered_trade_is_a_duplicate_and_changes_nothing(self, world: World) -> None:
        await place_buy(world, "alice", "b1", 40_000, 5)
        await place_sell(world, "bob", "s1", 5)
        t1 = trade("t1", 40_000, 5, ("alice", "b1"), ("bob", "s1"))
        assert (await settle_trade(world.engine, world.fence, t1)).status is SettlementStatus.SETTLED
        before = await snapshot(world.engine)
        for _ in range(3):
            assert (await settle_trade(world.engine, world.fence, t1)).status is SettlementStatus.DUPLICATE
        with pytest.raises(IdempotencyConflictError):
            await settle_trade(
                world.engine, world.fence, trade("t1", 40_000, 4, ("alice", "b1"), ("bob", "s1"))
            )
        assert await snapshot(world.engine) == before

    async def test_trade_without_hold_is_refused_and_changes_nothing(self, world: World) -> None:
        await place_buy(world, "alice", "b1", 40_000, 5)
        await place_sell(world, "bob", "s1", 5)
        before = await snapshot(world.engine)
        with pytest.raises(HoldNotFoundError):
            await settle_trade(
                world.engine, world.fence, trade("t1", 40_000, 5, ("alice", "b-none"), ("bob", "s1"))
            )
        with pytest.raises(HoldStateError):  # the hold of s1 is bob's BTC, not carol's
            await settle_trade(
                world.engine, world.fence, trade("t2", 40_000, 5, ("alice", "b1"), ("carol", "s1"))
            )
        with pytest.raises(LedgerValidationError):
            await settle_trade(
                world.engine, world.fence, trade("t3", 40_000, 0, ("alice", "x"), ("bob", "s1"))
            )
        assert await snapshot(world.engine) == before

    async def test_batch_settles_good_trades_and_reports_the_rest(self, world: World) -> None:
        await place_buy(world, "alice", "b1", 40_000, 10)
        await place_sell(world, "bob", "s1", 10)
        first = trade("t1", 40_000, 2, ("alice", "b1"), ("bob", "s1"))
        await settle_trade(world.engine, world.fence, first)
        second = trade("t2", 40_000, 3, ("alice", "b1"), ("bob", "s1"))
        orphan = trade("t3", 40_000, 1, ("carol", "c-none"), ("bob", "s1"))
        third = trade("t4", 40_000, 5, ("alice", "b1"), ("bob", "s1"))
        result = await settle_trades(world.engine, world.fence, [first, second, orphan, second, third])
        assert [r.trade_id for r in result.settled] == ["t2", "t4"]
        assert sorted(r.trade_id for r in result.duplicates) == ["t1", "t2"]
        assert [(t.trade_id, type(e)) for t, e in result.failed] == [("t3", HoldNotFoundError)]
        assert (await get_balance(world.engine, "alice", "BTC")).available == BTC_DEPOSIT + 10
        assert (await reconcile(world.engine)).ok

    async def test_a_repeat_in_a_batch_shares_the_fate_of_its_first_copy(self, world: World) -> None:
        await place_sell(world, "bob", "s1", 5)
        orphan = trade("t1", 40_000, 1, ("alice", "no-hold"), ("bob", "s1"))
        result = await settle_trades(world.engine, world.fence, [orphan, orphan])
        assert not result.settled and not result.duplicates
        assert [(t.trade_id, type(e)) for t, e in result.failed] == [("t1", HoldNotFoundError)] * 2

    async def test_fill_after_cancel_settles_from_available(self, world: World) -> None:
        # The cancel's release won the race against a fill already on its way.
        await place_buy(world, "alice", "b1", 40_000, 5)
        await place_sell(world, "bob", "s1", 5)
        await release(world.engine, world.fence, "tx-b1", reason="cancel")
        t1 = trade("t1", 40_000, 5, ("alice", "b1"), ("bob", "s1"))
        assert (await settle_trade(world.engine, world.fence, t1)).status is SettlementStatus.SETTLED
        usd = await get_balance(world.engine, "alice", "USD")
        assert (usd.available, usd.held) == (USD_DEPOSIT - t1.notional - t1.buyer_fee, 0)
        assert (await reconcile(world.engine)).ok

    async def test_fill_beyond_available_is_refused(self, world: World) -> None:
        await open_broke_account(world)
        await place_sell(world, "bob", "s1", 5)
        await reserve(
            world.engine,
            world.fence,
            hold_id="tx-p",
            account_id="pauper",
            asset="USD",
            amount=10,
            order_qty=5,
            order_id="p1",
        )
        before = await snapshot(world.engine)
        with pytest.raises(InsufficientFundsError):
            await settle_trade(
                world.engine, world.fence, trade("t1", 40_000, 5, ("pauper", "p1"), ("bob", "s1"))
            )
        assert await snapshot(world.engine) == before

    async def test_self_trade_keeps_totals(self, world: World) -> None:
        await place_buy(world, "carol", "b1", 40_000, 3)
        await place_sell(world, "carol", "s1", 3)
        t1 = trade("t1", 40_000, 3, ("carol", "b1"), ("carol", "s1"))
        await settle_trade(world.engine, world.fence, t1)
        usd = await get_balance(world.engine, "carol", "USD")
        btc = await get_balance(world.engine, "carol", "BTC")
        assert usd.total == USD_DEPOSIT - t1.buyer_fee - t1.seller_fee
        assert (btc.available, btc.held) == (BTC_DEPOSIT, 0)
        assert (await reconcile(world.engine)).ok

    # -------------------------------------------------------------- fencing

    async def test_stale_epoch_is_fenced_everywhere_and_changes_nothing(self, world: World) -> None:
        await place_buy(world, "alice", "b1", 40_000, 5)
        await place_sell(world, "bob", "s1", 5)
        moved = await raise_epoch(world.engine, PAIR, 2, "new-active")
        assert moved.moved and moved.epoch == 2
        before = await snapshot(world.engine)
        stale = world.fence
        attempts = [
            deposit(world.engine, stale, deposit_id="d9", account_id="alice", asset="USD", amount=1),
            reserve(
                world.engine, stale, hold_id="h9", account_id="alice", asset="USD", amount=1, order_qty=1
            ),
            release(world.engine, stale, "tx-b1"),
            bind_hold(world.engine, stale, "tx-b1", "b1"),
            settle_trade(world.engine, stale, trade("t1", 40_000, 5, ("alice", "b1"), ("bob", "s1"))),
        ]
        for attempt in attempts:
            with pytest.raises(FencedError) as caught:
                await attempt
            assert (caught.value.presented, caught.value.current) == (1, 2)
        assert await snapshot(world.engine) == before
        with pytest.raises(FencedError):  # an epoch from the future is just as wrong
            await release(world.engine, FenceToken(PAIR, 3), "tx-b1")
        current = FenceToken(PAIR, 2)
        assert (await release(world.engine, current, "tx-b1")).status is ReleaseStatus.RELEASED

    async def test_raise_epoch_only_goes_up(self, world: World) -> None:
        assert (await raise_epoch(world.engine, PAIR, 5, "b")).moved
        again = await raise_epoch(world.engine, PAIR, 5, "b")
        assert not again.moved and again.epoch == 5
        for epoch, holder in ((4, "a"), (5, "a"), (1, "b")):
            with pytest.raises(FencedError):
                await raise_epoch(world.engine, PAIR, epoch, holder)
        state = await read_fence(world.engine, PAIR)
        assert state is not None and (state.epoch, state.holder) == (5, "b")
        with pytest.raises(ValueError, match="epoch"):
            await raise_epoch(world.engine, PAIR, 0, "b")
        with pytest.raises(FencedError):
            await deposit(
                world.engine,
                FenceToken("nobody", 1),
                deposit_id="d",
                account_id="alice",
                asset="USD",
                amount=1,
            )

    # -------------------------------------------------------- reconciliation

    async def test_reconciliation_passes_clean_and_finds_an_injected_break(self, world: World) -> None:
        await place_buy(world, "alice", "b1", 40_000, 5)
        await place_sell(world, "bob", "s1", 5)
        await settle_trade(world.engine, world.fence, trade("t1", 40_000, 2, ("alice", "b1"), ("bob", "s1")))
        registry = CollectorRegistry()
        metrics = ReconciliationMetrics(registry)
        clean = await reconcile(world.engine)
        metrics.export(clean)
        assert clean.ok, clean.breaks
        assert registry.get_sample_value("ledger_reconciliation_ok") == 1
        async with world.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE balances SET available = available + 7 WHERE account_id = 'bob' AND asset = 'USD'"
                )
            )
        broken = await reconcile(world.engine)
        metrics.export(broken)
        checks = broken.breaks_by_check()
        assert checks["conservation"] == 1 and checks["entries_vs_balances"] == 1
        assert registry.get_sample_value("ledger_reconciliation_breaks", {"check": "conservation"}) == 1
        assert registry.get_sample_value("ledger_reconciliation_ok") == 0


async def open_broke_account(world: World) -> None:
    await open_account(world.engine, world.fence, "pauper")
    await deposit(
        world.engine, world.fence, deposit_id="pauper-usd", account_id="pauper", asset="USD", amount=100
    )

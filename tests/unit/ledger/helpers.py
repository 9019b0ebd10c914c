"""A small ledger world for tests: two assets, a few funded accounts, order helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from trading_system.ledger import (
    FenceToken,
    Instrument,
    ReserveResult,
    TradeSettlement,
    buy_reservation,
    create_asset,
    deposit,
    migrate_ledger,
    open_account,
    raise_epoch,
    reserve,
    trade_settlement,
)

PAIR = "execution"
BTC_USD = Instrument("BTC-USD", "BTC", "USD")
FEE_BPS = 25
USD_DEPOSIT = 1_000_000
BTC_DEPOSIT = 1_000
ACCOUNTS = ("alice", "bob", "carol")

# Every ledger table, with the columns that do not carry timestamps (they would differ
# between two snapshots even when nothing changed... which is the point of comparing).
_SNAPSHOT_QUERIES = {
    "assets": "SELECT code, decimals FROM assets ORDER BY code",
    "accounts": "SELECT account_id, kind FROM accounts ORDER BY account_id",
    "balances": "SELECT account_id, asset, available, held FROM balances ORDER BY account_id, asset",
    "holds": "SELECT hold_id, account_id, asset, order_id, reserved, remaining, order_qty, filled_qty, state "
    "FROM holds ORDER BY hold_id",
    "entries": "SELECT entry_key, account_id, asset, kind, delta_available, delta_held, ref, epoch "
    "FROM entries ORDER BY entry_key",
    "settled_trades": "SELECT trade_id, qty, notional FROM settled_trades ORDER BY trade_id",
    "fence": "SELECT pair_name, epoch, holder FROM fence ORDER BY pair_name",
}


@dataclass(frozen=True)
class World:
    engine: AsyncEngine
    fence: FenceToken


async def build_world(engine: AsyncEngine, accounts: tuple[str, ...] = ACCOUNTS) -> World:
    """Migrated schema, epoch 1 held by the test, USD/BTC, funded accounts."""
    await migrate_ledger(engine)
    await raise_epoch(engine, PAIR, 1, "test")
    fence = FenceToken(PAIR, 1)
    await create_asset(engine, fence, "USD", 2)
    await create_asset(engine, fence, "BTC", 8)
    for name in accounts:
        await open_account(engine, fence, name)
        await deposit(
            engine, fence, deposit_id=f"{name}-usd", account_id=name, asset="USD", amount=USD_DEPOSIT
        )
        await deposit(
            engine, fence, deposit_id=f"{name}-btc", account_id=name, asset="BTC", amount=BTC_DEPOSIT
        )
    return World(engine, fence)


async def snapshot(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    async with engine.connect() as conn:
        return {
            name: [tuple(r) for r in await conn.execute(text(sql))] for name, sql in _SNAPSHOT_QUERIES.items()
        }


async def place_buy(world: World, account: str, order_id: str, price: int, qty: int) -> ReserveResult:
    return await reserve(
        world.engine,
        world.fence,
        hold_id=f"tx-{order_id}",
        account_id=account,
        asset="USD",
        amount=buy_reservation(BTC_USD, price, qty, FEE_BPS),
        order_qty=qty,
        order_id=order_id,
    )


async def place_sell(world: World, account: str, order_id: str, qty: int) -> ReserveResult:
    return await reserve(
        world.engine,
        world.fence,
        hold_id=f"tx-{order_id}",
        account_id=account,
        asset="BTC",
        amount=qty,
        order_qty=qty,
        order_id=order_id,
    )


def trade(
    trade_id: str, price: int, qty: int, buyer: tuple[str, str], seller: tuple[str, str]
) -> TradeSettlement:
    return trade_settlement(
        BTC_USD,
        trade_id=trade_id,
        price=price,
        qty=qty,
        buyer=buyer,
        seller=seller,
        buyer_fee_bps=FEE_BPS,
        seller_fee_bps=FEE_BPS,
    )

"""Assets, accounts and deposits (admin operations), and balance reads."""

from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from trading_system.ledger.entries import append_entries, entry
from trading_system.ledger.errors import (
    IdempotencyConflictError,
    LedgerValidationError,
    RetryableConflictError,
    UnknownAccountError,
    UnknownAssetError,
)
from trading_system.ledger.schema import accounts, assets, balances, entries
from trading_system.ledger.types import AccountKind, Balance, EntryKind
from trading_system.ledger.validation import require_amount, require_id
from trading_system.storage.dialect import insert_or_ignore, upsert_insert
from trading_system.storage.fencing import FenceToken, check_fence
from trading_system.storage.transactions import Database, transaction


async def create_asset(db: Database, fence: FenceToken, code: str, decimals: int) -> None:
    """Register an asset; repeating it with the same decimals is a no-op."""
    require_id("asset", code)
    if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 18:
        raise LedgerValidationError(f"decimals must be an integer 0..18, got {decimals!r}")
    async with transaction(db) as conn:
        await check_fence(conn, fence)
        await conn.execute(
            insert_or_ignore(conn.dialect.name, assets, ["code"]).values(code=code, decimals=decimals)
        )
        stored = (await conn.execute(select(assets.c.decimals).where(assets.c.code == code))).scalar_one()
    if stored != decimals:
        raise IdempotencyConflictError(f"asset {code!r} exists with {stored} decimals, not {decimals}")


async def open_account(
    db: Database, fence: FenceToken, account_id: str, kind: AccountKind = AccountKind.USER
) -> None:
    """Create an account; repeating it with the same kind is a no-op."""
    require_id("account_id", account_id)
    kind = AccountKind(kind)
    async with transaction(db) as conn:
        await check_fence(conn, fence)
        await conn.execute(
            insert_or_ignore(conn.dialect.name, accounts, ["account_id"]).values(
                account_id=account_id, kind=kind.value
            )
        )
        stored = (
            await conn.execute(select(accounts.c.kind).where(accounts.c.account_id == account_id))
        ).scalar_one()
    if stored != kind.value:
        raise IdempotencyConflictError(f"account {account_id!r} exists as {stored!r}, not {kind.value!r}")


async def require_account_and_asset(conn: AsyncConnection, account_id: str, asset: str) -> None:
    """Raise the typed error for an unknown account or asset (one round trip)."""
    row = (
        await conn.execute(
            select(
                exists().where(accounts.c.account_id == account_id),
                exists().where(assets.c.code == asset),
            )
        )
    ).one()
    if not row[0]:
        raise UnknownAccountError(account_id)
    if not row[1]:
        raise UnknownAssetError(asset)


async def deposit(
    db: Database, fence: FenceToken, *, deposit_id: str, account_id: str, asset: str, amount: int
) -> Balance:
    """Credit ``amount`` to available, once per ``deposit_id`` (a retry changes nothing)."""
    require_id("deposit_id", deposit_id)
    require_id("account_id", account_id)
    require_id("asset", asset)
    require_amount("amount", amount)
    key = f"deposit:{deposit_id}"
    try:
        async with transaction(db) as conn:
            await check_fence(conn, fence)
            await require_account_and_asset(conn, account_id, asset)
            done = (
                await conn.execute(
                    select(entries.c.account_id, entries.c.asset, entries.c.delta_available).where(
                        entries.c.entry_key == key
                    )
                )
            ).first()
            if done is not None:
                if tuple(done) != (account_id, asset, amount):
                    raise IdempotencyConflictError(
                        f"deposit {deposit_id!r} was already made with other values"
                    )
                return await _read_balance(conn, account_id, asset)
            ins = upsert_insert(conn.dialect.name, balances).values(
                account_id=account_id, asset=asset, available=amount, held=0
            )
            stmt = ins.on_conflict_do_update(
                index_elements=[balances.c.account_id, balances.c.asset],
                set_={"available": balances.c.available + ins.excluded.available},
            ).returning(balances.c.available, balances.c.held)
            row = (await conn.execute(stmt)).one()
            await append_entries(
                conn,
                [
                    entry(
                        key,
                        account_id,
                        asset,
                        EntryKind.DEPOSIT,
                        available=amount,
                        held=0,
                        ref=deposit_id,
                        epoch=fence.epoch,
                    )
                ],
            )
    except IntegrityError as exc:
        raise RetryableConflictError(f"deposit {deposit_id!r} raced with another writer") from exc
    return Balance(account_id, asset, int(row.available), int(row.held))


async def _read_balance(conn: AsyncConnection, account_id: str, asset: str) -> Balance:
    row = (
        await conn.execute(
            select(balances.c.available, balances.c.held).where(
                balances.c.account_id == account_id, balances.c.asset == asset
            )
        )
    ).first()
    if row is None:
        return Balance(account_id, asset, 0, 0)
    return Balance(account_id, asset, int(row.available), int(row.held))


async def get_balance(db: Database, account_id: str, asset: str) -> Balance:
    """Balance of one asset; zero if the account never held it."""
    async with transaction(db) as conn:
        return await _read_balance(conn, account_id, asset)


async def get_balances(db: Database, account_id: str) -> list[Balance]:
    async with transaction(db) as conn:
        rows = await conn.execute(
            select(balances.c.asset, balances.c.available, balances.c.held)
            .where(balances.c.account_id == account_id)
            .order_by(balances.c.asset)
        )
        return [Balance(account_id, str(r.asset), int(r.available), int(r.held)) for r in rows]

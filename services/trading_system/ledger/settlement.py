"""Settle trades exactly once: cash and asset for both sides, fees, hold consumption.

One call is one database transaction, for one trade or a batch (a group commit). Order
of work, and why:

1. check the fence (the writer still holds its epoch);
2. lock the holds of every order in the batch, then every balance row involved, each
   in key order (every ledger transaction locks holds before balances, in key order, so
   they cannot deadlock);
3. only now look up which trade ids are already settled: anyone settling the same trade
   needs the same hold locks, so it has either committed (and we see it) or waits for us;
4. plan each trade in memory against the locked rows (``settlement_plan``); a trade that
   cannot settle is reported and leaves nothing behind;
5. write: the ``settled_trades`` rows (the exactly-once keys), holds, balances, entries.

A redelivered trade therefore changes nothing and comes back as a duplicate; the same
trade id with different content is refused as a conflict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import bindparam, func, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from trading_system.ledger.entries import EntryRow, append_entries
from trading_system.ledger.errors import (
    IdempotencyConflictError,
    LedgerError,
    LedgerValidationError,
    RetryableConflictError,
    UnknownAccountError,
    UnknownAssetError,
)
from trading_system.ledger.holds import HOLD_COLUMNS
from trading_system.ledger.schema import accounts, assets, balances, holds, settled_trades
from trading_system.ledger.settlement_plan import (
    BalanceKey,
    TradePlan,
    WorkingBalance,
    WorkingHold,
    apply_plan,
    balance_keys,
    plan_trade,
    validate_trade,
)
from trading_system.ledger.types import (
    FEE_ACCOUNT,
    BatchResult,
    HoldState,
    SettlementResult,
    SettlementStatus,
    TradeSettlement,
)
from trading_system.storage.dialect import upsert_insert
from trading_system.storage.fencing import FenceToken, check_fence
from trading_system.storage.transactions import Database, transaction

_TRADE_FIELDS = tuple(f.name for f in fields(TradeSettlement))

# Built once (see ledger.holds); expanding IN parameters keep them reusable for any batch size.
_LOCK_HOLDS = (
    select(*HOLD_COLUMNS)
    .where(holds.c.order_id.in_(bindparam("order_ids", expanding=True)))
    .order_by(holds.c.hold_id)
    .with_for_update()
)
_LOCK_BALANCES = (
    select(balances.c.account_id, balances.c.asset, balances.c.available, balances.c.held)
    .where(tuple_(balances.c.account_id, balances.c.asset).in_(bindparam("keys", expanding=True)))
    .order_by(balances.c.account_id, balances.c.asset)
    .with_for_update()
)
_SETTLED = select(*(settled_trades.c[name] for name in _TRADE_FIELDS)).where(
    settled_trades.c.trade_id.in_(bindparam("trade_ids", expanding=True))
)
_UPDATE_HOLD = (
    update(holds)
    .where(holds.c.hold_id == bindparam("h_id"))
    .values(
        remaining=bindparam("h_remaining"),
        filled_qty=bindparam("h_filled"),
        state=bindparam("h_state"),
        updated_at=func.now(),
    )
)
# Absolute values are safe: these rows are locked FOR UPDATE by this transaction.
_UPDATE_BALANCE = (
    update(balances)
    .where(balances.c.account_id == bindparam("b_account"), balances.c.asset == bindparam("b_asset"))
    .values(available=bindparam("b_available"), held=bindparam("b_held"))
)


def _credit_new_balance(dialect: str) -> Any:
    """Create a balance row with its first credit, or add to it if another writer just created it."""
    ins = upsert_insert(dialect, balances)
    return ins.on_conflict_do_update(
        index_elements=[balances.c.account_id, balances.c.asset],
        set_={
            "available": balances.c.available + ins.excluded.available,
            "held": balances.c.held + ins.excluded.held,
        },
    )


async def settle_trade(
    db: Database, fence: FenceToken, trade: TradeSettlement, *, fee_account: str = FEE_ACCOUNT
) -> SettlementResult:
    """Settle one trade; a trade id seen before returns ``DUPLICATE`` and changes nothing.

    Raises the :class:`LedgerError` that stopped it (insufficient funds, no hold,
    conflict), or :class:`FencedError`.
    """
    batch = await settle_trades(db, fence, [trade], fee_account=fee_account)
    if batch.failed:
        raise batch.failed[0][1]
    return (batch.settled or batch.duplicates)[0]


async def settle_trades(
    db: Database, fence: FenceToken, trades: Sequence[TradeSettlement], *, fee_account: str = FEE_ACCOUNT
) -> BatchResult:
    """Settle a batch in one transaction (one commit), each trade exactly once.

    Trades that cannot settle are listed in ``failed`` and leave nothing behind; the
    rest commit. A :class:`FencedError` or a database error commits nothing.
    """
    out = BatchResult()
    pending, repeats = _first_of_each(trades, out)
    if not pending:
        return out
    try:
        async with transaction(db) as conn:
            await check_fence(conn, fence)
            hold_rows = await _lock_holds(
                conn, {o for t in pending for o in (t.buyer_order_id, t.seller_order_id)}
            )
            rows, missing = await _lock_balances(
                conn, {k for t in pending for k in balance_keys(t, fee_account)}
            )
            settled_before = await _settled(conn, [t.trade_id for t in pending])
            to_insert: list[dict[str, Any]] = []
            entry_rows: list[EntryRow] = []
            for trade in pending:
                try:
                    result = _settle_one(
                        trade, settled_before, hold_rows, rows, missing, fee_account, fence.epoch
                    )
                except LedgerError as exc:
                    out.failed.append((trade, exc))
                    continue
                if isinstance(result, SettlementResult):
                    out.duplicates.append(result)
                    continue
                plan = result
                apply_plan(plan, hold_rows, rows)
                entry_rows.extend(plan.entries)
                to_insert.append(_trade_row(trade, fee_account, fence.epoch))
                out.settled.append(plan.result)
            if to_insert:
                await _write(conn, to_insert, hold_rows.values(), rows, entry_rows)
    except IntegrityError as exc:
        raise RetryableConflictError("settlement raced with another writer of the same trade") from exc
    # A repeat inside the batch shares the fate of its first copy: acking it as a
    # duplicate while the first copy failed would lose the trade.
    failed = {t.trade_id: exc for t, exc in out.failed}
    for trade in repeats:
        if trade.trade_id in failed:
            out.failed.append((trade, failed[trade.trade_id]))
        else:
            out.duplicates.append(SettlementResult(trade.trade_id, SettlementStatus.DUPLICATE))
    return out


def _first_of_each(
    trades: Sequence[TradeSettlement], out: BatchResult
) -> tuple[list[TradeSettlement], list[TradeSettlement]]:
    """Valid trades, each trade id once, and the identical repeats of them in the batch."""
    first: dict[str, TradeSettlement] = {}
    repeats: list[TradeSettlement] = []
    for trade in trades:
        try:
            validate_trade(trade)
        except LedgerValidationError as exc:
            out.failed.append((trade, exc))
            continue
        seen = first.get(trade.trade_id)
        if seen is None:
            first[trade.trade_id] = trade
        elif seen == trade:
            repeats.append(trade)
        else:
            out.failed.append((trade, _conflict(trade.trade_id)))
    return list(first.values()), repeats


def _conflict(trade_id: str) -> IdempotencyConflictError:
    return IdempotencyConflictError(f"trade {trade_id!r} was already seen with different content")


def _settle_one(
    trade: TradeSettlement,
    settled_before: dict[str, TradeSettlement],
    hold_rows: dict[str, WorkingHold],
    rows: dict[BalanceKey, WorkingBalance],
    missing: dict[BalanceKey, LedgerError],
    fee_account: str,
    epoch: int,
) -> SettlementResult | TradePlan:
    before = settled_before.get(trade.trade_id)
    if before is not None:
        if before != trade:
            raise _conflict(trade.trade_id)
        return SettlementResult(trade.trade_id, SettlementStatus.DUPLICATE)
    for key in balance_keys(trade, fee_account):
        if key in missing:
            raise missing[key]
    return plan_trade(trade, hold_rows, rows, fee_account=fee_account, epoch=epoch)


async def _lock_holds(conn: AsyncConnection, order_ids: Iterable[str]) -> dict[str, WorkingHold]:
    result = await conn.execute(_LOCK_HOLDS, {"order_ids": sorted(order_ids)})
    return {
        r.order_id: WorkingHold(
            r.hold_id,
            r.account_id,
            r.asset,
            int(r.reserved),
            int(r.remaining),
            int(r.order_qty),
            int(r.filled_qty),
            HoldState(r.state),
        )
        for r in result
    }


async def _select_balances(
    conn: AsyncConnection, keys: Iterable[BalanceKey]
) -> dict[BalanceKey, WorkingBalance]:
    result = await conn.execute(_LOCK_BALANCES, {"keys": sorted(keys)})
    return {(r.account_id, r.asset): WorkingBalance(int(r.available), int(r.held)) for r in result}


async def _lock_balances(
    conn: AsyncConnection, keys: set[BalanceKey]
) -> tuple[dict[BalanceKey, WorkingBalance], dict[BalanceKey, LedgerError]]:
    """Lock the balance rows; rows that do not exist yet start at zero and are created on write.

    Only credits can land on a missing row (a debit needs a hold, and a hold needs a
    balance), so creating it late is safe. Also returns, for keys whose account or asset
    does not exist, the error their trades get.
    """
    rows = await _select_balances(conn, keys)
    absent = keys - rows.keys()
    if not absent:
        return rows, {}
    missing = await _unknown_keys(conn, absent)
    for key in absent - missing.keys():
        rows[key] = WorkingBalance(0, 0, new=True)
    return rows, missing


async def _unknown_keys(conn: AsyncConnection, keys: set[BalanceKey]) -> dict[BalanceKey, LedgerError]:
    account_ids = {a for a, _ in keys}
    asset_codes = {s for _, s in keys}
    known_accounts = set(
        (
            await conn.execute(select(accounts.c.account_id).where(accounts.c.account_id.in_(account_ids)))
        ).scalars()
    )
    known_assets = set(
        (await conn.execute(select(assets.c.code).where(assets.c.code.in_(asset_codes)))).scalars()
    )
    unknown: dict[BalanceKey, LedgerError] = {}
    for account_id, asset in keys:
        if account_id not in known_accounts:
            unknown[(account_id, asset)] = UnknownAccountError(account_id)
        elif asset not in known_assets:
            unknown[(account_id, asset)] = UnknownAssetError(asset)
    return unknown


async def _settled(conn: AsyncConnection, trade_ids: list[str]) -> dict[str, TradeSettlement]:
    result = await conn.execute(_SETTLED, {"trade_ids": trade_ids})
    return {r.trade_id: TradeSettlement(**{name: getattr(r, name) for name in _TRADE_FIELDS}) for r in result}


def _trade_row(trade: TradeSettlement, fee_account: str, epoch: int) -> dict[str, Any]:
    row: dict[str, Any] = {name: getattr(trade, name) for name in _TRADE_FIELDS}
    row["fee_account"] = fee_account
    row["epoch"] = epoch
    return row


async def _write(
    conn: AsyncConnection,
    trade_rows: list[dict[str, Any]],
    hold_rows: Iterable[WorkingHold],
    rows: dict[BalanceKey, WorkingBalance],
    entry_rows: list[EntryRow],
) -> None:
    # A plain INSERT: a row already there means a concurrent settlement slipped past the
    # locks, and the unique violation rolls this whole transaction back.
    await conn.execute(settled_trades.insert(), trade_rows)
    hold_params = [
        {"h_id": h.hold_id, "h_remaining": h.remaining, "h_filled": h.filled_qty, "h_state": h.state.value}
        for h in hold_rows
        if h.changed
    ]
    if hold_params:
        await conn.execute(_UPDATE_HOLD, hold_params)
    changed = [(key, r) for key, r in sorted(rows.items()) if r.changed]
    created = [
        {"account_id": a, "asset": s, "available": r.available, "held": r.held}
        for (a, s), r in changed
        if r.new
    ]
    if created:
        await conn.execute(_credit_new_balance(conn.dialect.name), created)
    updated = [
        {"b_account": a, "b_asset": s, "b_available": r.available, "b_held": r.held}
        for (a, s), r in changed
        if not r.new
    ]
    if updated:
        await conn.execute(_UPDATE_BALANCE, updated)
    await append_entries(conn, entry_rows)

"""Prove the ledger's invariants from its own tables, in one consistent snapshot.

Checks (each break names the check, the subject and the expected and actual amounts):

* ``conservation``: per asset, balances (available + held) add up to the deposits;
  trading only moves value, fees included (they land in the fee account);
* ``negative_balance``: no available or held amount below zero;
* ``hold_bounds``: 0 <= remaining <= reserved, and a closed hold keeps nothing;
* ``held_vs_holds``: each balance's held amount is the sum of its open holds;
* ``entries_vs_balances``: each balance is the sum of its journal entries;
* ``trades_vs_entries``: per account and asset, what the settled trades imply equals
  what settlement entries booked, and every settled trade has its entries and vice versa.

Sums are computed by the database (GROUP BY) and compared here, which works the same
on PostgreSQL and SQLite.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trading_system.ledger.schema import balances, entries, holds, settled_trades
from trading_system.ledger.types import EntryKind, HoldState

CHECKS = (
    "conservation",
    "negative_balance",
    "hold_bounds",
    "held_vs_holds",
    "entries_vs_balances",
    "trades_vs_entries",
)
_SETTLEMENT_KINDS = (EntryKind.SETTLE_DEBIT, EntryKind.SETTLE_CREDIT, EntryKind.FEE, EntryKind.FEE_INCOME)
_DETAIL_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Break:
    check: str
    subject: str
    expected: int | None
    actual: int | None
    detail: str = ""


@dataclass(slots=True)
class ReconciliationReport:
    breaks: list[Break] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    duration_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.breaks

    def breaks_by_check(self) -> dict[str, int]:
        found = dict.fromkeys(CHECKS, 0)
        for b in self.breaks:
            found[b.check] = found.get(b.check, 0) + 1
        return found


async def reconcile(engine: AsyncEngine) -> ReconciliationReport:
    """Run every check in one read-only snapshot and report the breaks."""
    report = ReconciliationReport(started_at=time.time())
    clock = time.perf_counter()
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # One snapshot for all queries, so a settlement committing mid-run cannot
            # show up as a break.
            conn = await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        async with conn.begin():
            await _run_checks(conn, report)
    report.duration_seconds = time.perf_counter() - clock
    return report


async def _run_checks(conn: AsyncConnection, report: ReconciliationReport) -> None:
    balance_rows = {
        (r.account_id, r.asset): (int(r.available), int(r.held))
        for r in await conn.execute(
            select(balances.c.account_id, balances.c.asset, balances.c.available, balances.c.held)
        )
    }
    report.counts["balances"] = len(balance_rows)
    for name, table in (("holds", holds), ("entries", entries), ("settled_trades", settled_trades)):
        report.counts[name] = int((await conn.execute(select(func.count()).select_from(table))).scalar_one())
    report.breaks.extend(_negative(balance_rows))
    report.breaks.extend(await _conservation(conn, balance_rows))
    report.breaks.extend(await _hold_bounds(conn))
    report.breaks.extend(await _held_vs_holds(conn, balance_rows))
    report.breaks.extend(await _entries_vs_balances(conn, balance_rows))
    report.breaks.extend(await _trades_vs_entries(conn))


def _subject(key: tuple[str, str]) -> str:
    return f"{key[0]}/{key[1]}"


def _compare(
    check: str, expected: Mapping[Any, int], actual: Mapping[Any, int], name: Callable[[Any], str] = str
) -> list[Break]:
    out = []
    for key in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(key, 0), actual.get(key, 0)
        if want != got:
            out.append(Break(check, name(key), want, got))
    return out


def _negative(balance_rows: Mapping[tuple[str, str], tuple[int, int]]) -> list[Break]:
    out = []
    for key, (available, held) in sorted(balance_rows.items()):
        for column, value in (("available", available), ("held", held)):
            if value < 0:
                out.append(Break("negative_balance", _subject(key), 0, value, f"{column} is negative"))
    return out


async def _conservation(
    conn: AsyncConnection, balance_rows: Mapping[tuple[str, str], tuple[int, int]]
) -> list[Break]:
    totals: dict[str, int] = defaultdict(int)
    for (_, asset), (available, held) in balance_rows.items():
        totals[asset] += available + held
    deposited = {
        str(r.asset): int(r.total)
        for r in await conn.execute(
            select(entries.c.asset, func.sum(entries.c.delta_available + entries.c.delta_held).label("total"))
            .where(entries.c.kind == EntryKind.DEPOSIT.value)
            .group_by(entries.c.asset)
        )
    }
    return _compare("conservation", deposited, totals)


async def _hold_bounds(conn: AsyncConnection) -> list[Break]:
    closed = [HoldState.RELEASED.value, HoldState.CONSUMED.value]
    bad = (
        (holds.c.remaining < 0)
        | (holds.c.remaining > holds.c.reserved)
        | (holds.c.filled_qty < 0)
        | (holds.c.state.in_(closed) & (holds.c.remaining != 0))
    )
    rows = await conn.execute(
        select(holds.c.hold_id, holds.c.reserved, holds.c.remaining, holds.c.state)
        .where(bad)
        .order_by(holds.c.hold_id)
        .limit(_DETAIL_LIMIT)
    )
    return [
        Break("hold_bounds", f"hold {r.hold_id}", int(r.reserved), int(r.remaining), f"state {r.state}")
        for r in rows
    ]


async def _held_vs_holds(
    conn: AsyncConnection, balance_rows: Mapping[tuple[str, str], tuple[int, int]]
) -> list[Break]:
    open_holds = {
        (r.account_id, r.asset): int(r.total)
        for r in await conn.execute(
            select(holds.c.account_id, holds.c.asset, func.sum(holds.c.remaining).label("total"))
            .where(holds.c.account_id.is_not(None))
            .group_by(holds.c.account_id, holds.c.asset)
        )
    }
    held = {key: h for key, (_, h) in balance_rows.items()}
    return _compare("held_vs_holds", open_holds, held, _subject)


async def _entries_vs_balances(
    conn: AsyncConnection, balance_rows: Mapping[tuple[str, str], tuple[int, int]]
) -> list[Break]:
    sums = {
        (r.account_id, r.asset): (int(r.available), int(r.held))
        for r in await conn.execute(
            select(
                entries.c.account_id,
                entries.c.asset,
                func.sum(entries.c.delta_available).label("available"),
                func.sum(entries.c.delta_held).label("held"),
            ).group_by(entries.c.account_id, entries.c.asset)
        )
    }
    out: list[Break] = []
    for column in (0, 1):
        label = ("available", "held")[column]
        out.extend(
            Break("entries_vs_balances", f"{b.subject} {label}", b.expected, b.actual)
            for b in _compare(
                "entries_vs_balances",
                {k: v[column] for k, v in sums.items()},
                {k: v[column] for k, v in balance_rows.items()},
                _subject,
            )
        )
    return out


def _legs() -> Iterable[Any]:
    """Per trade, the net amount each (account, asset) must have moved."""
    t = settled_trades.c
    legs: list[tuple[ColumnElement[Any], ColumnElement[Any], ColumnElement[Any]]] = [
        (t.buyer_account, t.base_asset, t.qty),
        (t.buyer_account, t.quote_asset, -(t.notional + t.buyer_fee)),
        (t.seller_account, t.base_asset, -t.qty),
        (t.seller_account, t.quote_asset, t.notional - t.seller_fee),
        (t.fee_account, t.quote_asset, t.buyer_fee + t.seller_fee),
    ]
    return [
        select(account.label("account_id"), asset.label("asset"), amount.label("amount"))
        for account, asset, amount in legs
    ]


async def _trades_vs_entries(conn: AsyncConnection) -> list[Break]:
    legs = union_all(*_legs()).subquery()
    implied = {
        (r.account_id, r.asset): int(r.total)
        for r in await conn.execute(
            select(legs.c.account_id, legs.c.asset, func.sum(legs.c.amount).label("total")).group_by(
                legs.c.account_id, legs.c.asset
            )
        )
    }
    booked = {
        (r.account_id, r.asset): int(r.total)
        for r in await conn.execute(
            select(
                entries.c.account_id,
                entries.c.asset,
                func.sum(entries.c.delta_available + entries.c.delta_held).label("total"),
            )
            .where(entries.c.kind.in_([k.value for k in _SETTLEMENT_KINDS]))
            .group_by(entries.c.account_id, entries.c.asset)
        )
    }
    out = [b for b in _compare("trades_vs_entries", implied, booked, _subject) if b.expected or b.actual]
    out.extend(await _unmatched_trades(conn))
    return out


async def _unmatched_trades(conn: AsyncConnection) -> list[Break]:
    credit_key = literal("trade:") + settled_trades.c.trade_id + literal(":buyer:credit")
    no_entries = await conn.execute(
        select(settled_trades.c.trade_id)
        .where(~select(entries.c.entry_id).where(entries.c.entry_key == credit_key).exists())
        .limit(_DETAIL_LIMIT)
    )
    out = [
        Break("trades_vs_entries", f"trade {r.trade_id}", 1, 0, "settled trade without entries")
        for r in no_entries
    ]
    orphans = await conn.execute(
        select(entries.c.ref)
        .where(
            entries.c.kind == EntryKind.SETTLE_CREDIT.value,
            ~select(settled_trades.c.trade_id).where(settled_trades.c.trade_id == entries.c.ref).exists(),
        )
        .distinct()
        .limit(_DETAIL_LIMIT)
    )
    out.extend(
        Break("trades_vs_entries", f"trade {r.ref}", 0, 1, "entries without a settled trade") for r in orphans
    )
    return out

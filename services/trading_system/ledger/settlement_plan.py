"""What settling one trade does to the locked rows, worked out in memory. No database.

``settlement`` locks the holds and balances of a whole batch, then plans trade after
trade against these working copies. A plan is checked completely (holds match, no
balance would go negative) before it is applied, so a refused trade leaves the working
state, and therefore the database, untouched, and the other trades of the batch still
settle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from trading_system.ledger.consumption import Draw, draw
from trading_system.ledger.entries import EntryRow, entry
from trading_system.ledger.errors import (
    HoldNotFoundError,
    HoldStateError,
    InsufficientFundsError,
    LedgerValidationError,
    UnknownAccountError,
)
from trading_system.ledger.types import (
    EntryKind,
    HoldState,
    SettlementResult,
    SettlementStatus,
    TradeSettlement,
)
from trading_system.ledger.validation import require_amount, require_id

BalanceKey = tuple[str, str]


@dataclass(slots=True)
class WorkingHold:
    hold_id: str
    account_id: str
    asset: str
    reserved: int
    remaining: int
    order_qty: int
    filled_qty: int
    state: HoldState
    changed: bool = False


@dataclass(slots=True)
class WorkingBalance:
    available: int
    held: int
    changed: bool = False
    # No row yet (an account's first receipt of an asset); written by an upsert.
    new: bool = False


@dataclass(slots=True)
class TradePlan:
    result: SettlementResult
    holds: dict[str, tuple[int, int, HoldState]] = field(default_factory=dict)  # remaining, filled, state
    deltas: dict[BalanceKey, list[int]] = field(default_factory=dict)  # [available, held]
    entries: list[EntryRow] = field(default_factory=list)

    def move(self, key: BalanceKey, available: int, held: int) -> None:
        delta = self.deltas.setdefault(key, [0, 0])
        delta[0] += available
        delta[1] += held


def validate_trade(trade: TradeSettlement) -> None:
    for name in ("trade_id", "symbol", "base_asset", "quote_asset"):
        require_id(name, getattr(trade, name))
    for name in ("buyer_account", "buyer_order_id", "seller_account", "seller_order_id"):
        require_id(name, getattr(trade, name))
    require_amount("price", trade.price)
    require_amount("qty", trade.qty)
    require_amount("notional", trade.notional, allow_zero=True)
    require_amount("buyer_fee", trade.buyer_fee, allow_zero=True)
    require_amount("seller_fee", trade.seller_fee, allow_zero=True)
    if trade.seller_fee > trade.notional:
        raise LedgerValidationError(f"trade {trade.trade_id}: seller fee exceeds the notional")
    if trade.base_asset == trade.quote_asset:
        raise LedgerValidationError(f"trade {trade.trade_id}: base and quote asset are the same")
    if trade.buyer_order_id == trade.seller_order_id:
        raise LedgerValidationError(f"trade {trade.trade_id}: an order cannot trade with itself")


def balance_keys(trade: TradeSettlement, fee_account: str) -> list[BalanceKey]:
    """The balance rows a trade touches (the fee account's only if it charges a fee)."""
    keys = [
        (trade.buyer_account, trade.quote_asset),
        (trade.buyer_account, trade.base_asset),
        (trade.seller_account, trade.base_asset),
        (trade.seller_account, trade.quote_asset),
    ]
    if trade.buyer_fee or trade.seller_fee:
        keys.append((fee_account, trade.quote_asset))
    return keys


def _hold_for(holds: Mapping[str, WorkingHold], order_id: str, account_id: str, asset: str) -> WorkingHold:
    hold = holds.get(order_id)
    if hold is None:
        raise HoldNotFoundError(f"order {order_id}")
    if (hold.account_id, hold.asset) != (account_id, asset):
        raise HoldStateError(
            f"hold {hold.hold_id!r} of order {order_id!r} is {hold.asset} of {hold.account_id!r}, "
            f"the trade needs {asset} of {account_id!r}"
        )
    return hold


def _draw_on(plan: TradePlan, hold: WorkingHold, order_id: str, cost: int, fill_qty: int) -> Draw:
    d = draw(
        reserved=hold.reserved,
        remaining=hold.remaining,
        order_qty=hold.order_qty,
        filled_qty=hold.filled_qty,
        cost=cost,
        fill_qty=fill_qty,
    )
    state = hold.state
    if d.filled_qty >= hold.order_qty and state != HoldState.RELEASED:
        state = HoldState.CONSUMED
    plan.holds[order_id] = (d.remaining, d.filled_qty, state)
    return d


def plan_trade(
    trade: TradeSettlement,
    holds: Mapping[str, WorkingHold],
    balances: Mapping[BalanceKey, WorkingBalance],
    *,
    fee_account: str,
    epoch: int,
) -> TradePlan:
    """Plan one trade against the working state; raises a :class:`LedgerError` if it cannot settle."""
    t = trade
    buyer_hold = _hold_for(holds, t.buyer_order_id, t.buyer_account, t.quote_asset)
    seller_hold = _hold_for(holds, t.seller_order_id, t.seller_account, t.base_asset)
    plan = TradePlan(SettlementResult(t.trade_id, SettlementStatus.SETTLED))
    b = _draw_on(plan, buyer_hold, t.buyer_order_id, t.notional + t.buyer_fee, t.qty)
    s = _draw_on(plan, seller_hold, t.seller_order_id, t.qty, t.qty)
    plan.result = SettlementResult(t.trade_id, SettlementStatus.SETTLED, b.released, s.released)
    _book_buyer(plan, t, b, epoch)
    _book_seller(plan, t, s, epoch)
    if t.buyer_fee + t.seller_fee:
        key = (fee_account, t.quote_asset)
        _book(plan, t, "fees:income", key, EntryKind.FEE_INCOME, t.buyer_fee + t.seller_fee, 0, epoch)
    _check_covered(plan, balances)
    return plan


def _book(
    plan: TradePlan,
    t: TradeSettlement,
    role: str,
    key: BalanceKey,
    kind: EntryKind,
    available: int,
    held: int,
    epoch: int,
) -> None:
    plan.move(key, available, held)
    plan.entries.append(
        entry(
            f"trade:{t.trade_id}:{role}",
            key[0],
            key[1],
            kind,
            available=available,
            held=held,
            ref=t.trade_id,
            epoch=epoch,
        )
    )


def _book_buyer(plan: TradePlan, t: TradeSettlement, b: Draw, epoch: int) -> None:
    quote = (t.buyer_account, t.quote_asset)
    # The hold pays the notional first, then the fee; what it cannot pay comes from available.
    notional_from_hold = min(t.notional, b.from_hold)
    fee_from_hold = b.from_hold - notional_from_hold
    _book(
        plan,
        t,
        "buyer:debit",
        quote,
        EntryKind.SETTLE_DEBIT,
        notional_from_hold - t.notional,
        -notional_from_hold,
        epoch,
    )
    if t.buyer_fee:
        _book(plan, t, "buyer:fee", quote, EntryKind.FEE, fee_from_hold - t.buyer_fee, -fee_from_hold, epoch)
    if b.released:
        _book(plan, t, "buyer:release", quote, EntryKind.RELEASE, b.released, -b.released, epoch)
    _book(plan, t, "buyer:credit", (t.buyer_account, t.base_asset), EntryKind.SETTLE_CREDIT, t.qty, 0, epoch)


def _book_seller(plan: TradePlan, t: TradeSettlement, s: Draw, epoch: int) -> None:
    base = (t.seller_account, t.base_asset)
    _book(plan, t, "seller:debit", base, EntryKind.SETTLE_DEBIT, -s.shortfall, -s.from_hold, epoch)
    if s.released:
        _book(plan, t, "seller:release", base, EntryKind.RELEASE, s.released, -s.released, epoch)
    quote = (t.seller_account, t.quote_asset)
    _book(plan, t, "seller:credit", quote, EntryKind.SETTLE_CREDIT, t.notional, 0, epoch)
    if t.seller_fee:
        _book(plan, t, "seller:fee", quote, EntryKind.FEE, -t.seller_fee, 0, epoch)


def _check_covered(plan: TradePlan, balances: Mapping[BalanceKey, WorkingBalance]) -> None:
    for key, (available, held) in plan.deltas.items():
        row = balances.get(key)
        if row is None:
            raise UnknownAccountError(key[0])
        if row.available + available < 0:
            raise InsufficientFundsError(key[0], key[1], -available, row.available)
        if row.held + held < 0:
            # Holds and the held column disagree: a ledger break, never a normal refusal.
            raise HoldStateError(f"held {key[1]} of {key[0]!r} would go negative")


def apply_plan(
    plan: TradePlan, holds: Mapping[str, WorkingHold], balances: Mapping[BalanceKey, WorkingBalance]
) -> None:
    for order_id, (remaining, filled, state) in plan.holds.items():
        hold = holds[order_id]
        hold.remaining, hold.filled_qty, hold.state, hold.changed = remaining, filled, state, True
    for key, (available, held) in plan.deltas.items():
        row = balances[key]
        row.available += available
        row.held += held
        row.changed = True

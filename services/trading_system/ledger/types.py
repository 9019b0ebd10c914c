"""Plain records the ledger takes and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from trading_system.ledger.errors import LedgerError

FEE_ACCOUNT = "fees"


class AccountKind(StrEnum):
    USER = "user"
    FEE = "fee"
    SYSTEM = "system"


class HoldState(StrEnum):
    RESERVED = "reserved"  # CanCommit voted YES
    BOUND = "bound"  # DoCommit: the venue accepted the order
    CONSUMED = "consumed"  # fully filled, nothing left
    RELEASED = "released"  # cancelled, expired or aborted; the rest went back to available


class EntryKind(StrEnum):
    DEPOSIT = "deposit"
    RESERVE = "reserve"
    RELEASE = "release"
    SETTLE_DEBIT = "settle_debit"
    SETTLE_CREDIT = "settle_credit"
    FEE = "fee"
    FEE_INCOME = "fee_income"


class ReleaseStatus(StrEnum):
    RELEASED = "released"
    ALREADY_CLOSED = "already_closed"
    # No such hold: the abort overtook the reserve. A tombstone now blocks a late reserve.
    ABSENT = "absent"


class SettlementStatus(StrEnum):
    SETTLED = "settled"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Balance:
    account_id: str
    asset: str
    available: int
    held: int

    @property
    def total(self) -> int:
        return self.available + self.held


@dataclass(frozen=True, slots=True)
class Hold:
    hold_id: str
    account_id: str | None
    asset: str | None
    order_id: str | None
    reserved: int
    remaining: int
    order_qty: int
    filled_qty: int
    state: HoldState


@dataclass(frozen=True, slots=True)
class ReserveResult:
    hold: Hold
    created: bool  # False: the same reserve had already been done (a retry)


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    hold_id: str
    status: ReleaseStatus
    amount: int


@dataclass(frozen=True, slots=True)
class TradeSettlement:
    """One trade as settlement needs it, amounts already in minor units.

    The buyer pays ``notional + buyer_fee`` of the quote asset and receives ``qty`` of
    the base asset; the seller delivers ``qty`` and receives ``notional - seller_fee``.
    Build it with :func:`trading_system.ledger.pricing.trade_settlement`.
    """

    trade_id: str
    symbol: str
    base_asset: str
    quote_asset: str
    price: int
    qty: int
    notional: int
    buyer_account: str
    buyer_order_id: str
    seller_account: str
    seller_order_id: str
    buyer_fee: int = 0
    seller_fee: int = 0


@dataclass(frozen=True, slots=True)
class SettlementResult:
    trade_id: str
    status: SettlementStatus
    buyer_released: int = 0  # price improvement and fill-end leftovers returned to available
    seller_released: int = 0


@dataclass(slots=True)
class BatchResult:
    """Outcome of :func:`settle_trades`: every trade is in exactly one of the lists."""

    settled: list[SettlementResult] = field(default_factory=list)
    duplicates: list[SettlementResult] = field(default_factory=list)
    failed: list[tuple[TradeSettlement, LedgerError]] = field(default_factory=list)

"""The ledger: accounts, balances, holds, an append-only journal, exactly-once settlement.

Every write is one database transaction fenced by the writer's epoch
(:class:`~trading_system.storage.fencing.FenceToken`); every refusal is a typed
:class:`LedgerError` (or :class:`FencedError`) and changes nothing. See docs/ledger.md.
"""

from trading_system.ledger.accounts import create_asset, deposit, get_balance, get_balances, open_account
from trading_system.ledger.errors import (
    HoldNotFoundError,
    HoldStateError,
    IdempotencyConflictError,
    InsufficientFundsError,
    LedgerError,
    LedgerValidationError,
    RetryableConflictError,
    UnknownAccountError,
    UnknownAssetError,
)
from trading_system.ledger.holds import bind_hold, get_hold, release, reserve
from trading_system.ledger.migrations import LEDGER_COMPONENT, LEDGER_MIGRATIONS, migrate_ledger
from trading_system.ledger.pricing import (
    Instrument,
    buy_reservation,
    fee,
    notional,
    sell_reservation,
    trade_settlement,
)
from trading_system.ledger.reconciliation import Break, ReconciliationReport, reconcile
from trading_system.ledger.settlement import settle_trade, settle_trades
from trading_system.ledger.types import (
    FEE_ACCOUNT,
    AccountKind,
    Balance,
    BatchResult,
    EntryKind,
    Hold,
    HoldState,
    ReleaseResult,
    ReleaseStatus,
    ReserveResult,
    SettlementResult,
    SettlementStatus,
    TradeSettlement,
)
from trading_system.storage.fencing import FencedError, FenceToken, raise_epoch

__all__ = [
    "FEE_ACCOUNT",
    "LEDGER_COMPONENT",
    "LEDGER_MIGRATIONS",
    "AccountKind",
    "Balance",
    "BatchResult",
    "Break",
    "EntryKind",
    "FenceToken",
    "FencedError",
    "Hold",
    "HoldNotFoundError",
    "HoldState",
    "HoldStateError",
    "IdempotencyConflictError",
    "Instrument",
    "InsufficientFundsError",
    "LedgerError",
    "LedgerValidationError",
    "ReconciliationReport",
    "ReleaseResult",
    "ReleaseStatus",
    "ReserveResult",
    "RetryableConflictError",
    "SettlementResult",
    "SettlementStatus",
    "TradeSettlement",
    "UnknownAccountError",
    "UnknownAssetError",
    "bind_hold",
    "buy_reservation",
    "create_asset",
    "deposit",
    "fee",
    "get_balance",
    "get_balances",
    "get_hold",
    "migrate_ledger",
    "notional",
    "open_account",
    "raise_epoch",
    "reconcile",
    "release",
    "reserve",
    "sell_reservation",
    "settle_trade",
    "settle_trades",
    "trade_settlement",
]

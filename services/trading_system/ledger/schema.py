"""Ledger tables (SQLAlchemy Core), the same on PostgreSQL and SQLite.

Amounts are integers in each asset's minor units (BIGINT): never floats, so sums are
exact and conservation can be checked to the unit. The CHECK constraints are the last
line of defence; the operations never rely on them for control flow.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
)

ledger_metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias), not BIGINT.
_ENTRY_ID = BigInteger().with_variant(Integer, "sqlite")


def _created_at() -> Column[object]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


assets = Table(
    "assets",
    ledger_metadata,
    Column("code", Text, primary_key=True),
    Column("decimals", Integer, nullable=False),
    _created_at(),
    CheckConstraint("decimals BETWEEN 0 AND 18", name="assets_decimals_range"),
)

accounts = Table(
    "accounts",
    ledger_metadata,
    Column("account_id", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    _created_at(),
    CheckConstraint("kind IN ('user', 'fee', 'system')", name="accounts_kind"),
)

balances = Table(
    "balances",
    ledger_metadata,
    Column("account_id", Text, ForeignKey("accounts.account_id"), nullable=False),
    Column("asset", Text, ForeignKey("assets.code"), nullable=False),
    Column("available", BigInteger, nullable=False, server_default="0"),
    Column("held", BigInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("account_id", "asset"),
    CheckConstraint("available >= 0", name="balances_available_nonnegative"),
    CheckConstraint("held >= 0", name="balances_held_nonnegative"),
)

# A hold is a reservation for one order. ``reserved`` covers ``order_qty`` units of the
# order; settlement consumes it fill by fill. A row with no account is a tombstone: the
# hold was released (aborted) before it was ever reserved, which blocks a late reserve.
holds = Table(
    "holds",
    ledger_metadata,
    Column("hold_id", Text, primary_key=True),
    Column("account_id", Text, ForeignKey("accounts.account_id")),
    Column("asset", Text, ForeignKey("assets.code")),
    Column("order_id", Text, unique=True),
    Column("reserved", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("order_qty", BigInteger, nullable=False),
    Column("filled_qty", BigInteger, nullable=False, server_default="0"),
    Column("state", Text, nullable=False),
    Column("close_reason", Text),
    _created_at(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("state IN ('reserved', 'bound', 'consumed', 'released')", name="holds_state"),
    CheckConstraint("remaining >= 0 AND remaining <= reserved", name="holds_remaining_range"),
    CheckConstraint("order_qty >= 0 AND filled_qty >= 0", name="holds_qty_nonnegative"),
    CheckConstraint(
        "(account_id IS NOT NULL AND asset IS NOT NULL)"
        " OR (account_id IS NULL AND asset IS NULL AND state = 'released')",
        name="holds_tombstone_shape",
    ),
)

# Append-only journal of every movement. Each row is one logical effect on one
# (account, asset) and its ``entry_key`` is unique, so no effect can be booked twice;
# per (account, asset) the deltas sum to the balance row.
entries = Table(
    "entries",
    ledger_metadata,
    Column("entry_id", _ENTRY_ID, primary_key=True, autoincrement=True),
    Column("entry_key", Text, nullable=False, unique=True),
    Column("account_id", Text, nullable=False),
    Column("asset", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("delta_available", BigInteger, nullable=False),
    Column("delta_held", BigInteger, nullable=False),
    Column("ref", Text, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    _created_at(),
    # One composite key instead of two single ones: an entry can only touch an existing
    # balance row, and inserting costs one foreign-key probe, not two.
    ForeignKeyConstraint(["account_id", "asset"], ["balances.account_id", "balances.asset"]),
)

settled_trades = Table(
    "settled_trades",
    ledger_metadata,
    Column("trade_id", Text, primary_key=True),
    Column("symbol", Text, nullable=False),
    Column("base_asset", Text, nullable=False),
    Column("quote_asset", Text, nullable=False),
    Column("price", BigInteger, nullable=False),
    Column("qty", BigInteger, nullable=False),
    Column("notional", BigInteger, nullable=False),
    Column("buyer_account", Text, nullable=False),
    Column("buyer_order_id", Text, nullable=False),
    Column("seller_account", Text, nullable=False),
    Column("seller_order_id", Text, nullable=False),
    Column("buyer_fee", BigInteger, nullable=False),
    Column("seller_fee", BigInteger, nullable=False),
    Column("fee_account", Text, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("settled_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

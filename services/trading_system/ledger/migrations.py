"""The ledger's schema versions, applied by ``storage.migrations``.

Version 1 builds the tables from ``ledger.schema``. When the schema changes, add a
version with the ALTERs and freeze version 1 by copying the old table definitions into
it, so a fresh database still walks through the same steps as an old one.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trading_system.ledger.procedures import create_functions
from trading_system.ledger.schema import accounts, ledger_metadata
from trading_system.ledger.types import FEE_ACCOUNT, AccountKind
from trading_system.storage.fencing import FENCING_COMPONENT, FENCING_MIGRATIONS
from trading_system.storage.migrations import Migration, migrate

LEDGER_COMPONENT = "ledger"


async def _initial(conn: AsyncConnection) -> None:
    await conn.run_sync(ledger_metadata.create_all)
    # Settlement credits fees here; it exists from the start so totals always balance.
    await conn.execute(accounts.insert().values(account_id=FEE_ACCOUNT, kind=AccountKind.FEE.value))


LEDGER_MIGRATIONS = (
    Migration(1, "ledger tables and fee account", _initial),
    # PostgreSQL only (a no-op on SQLite): see ledger.procedures.
    Migration(2, "reserve, release and bind as stored functions", create_functions),
)


async def migrate_ledger(engine: AsyncEngine) -> list[int]:
    """Bring the database up to the current ledger schema (fence table included)."""
    await migrate(engine, FENCING_COMPONENT, FENCING_MIGRATIONS)
    return await migrate(engine, LEDGER_COMPONENT, LEDGER_MIGRATIONS)

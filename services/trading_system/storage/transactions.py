"""Run an operation as one database transaction, or inside the caller's.

Ledger and journal operations accept either an engine (they open and commit their own
transaction) or a connection (they join the caller's transaction if one is open), so a
caller can group several operations into one commit, e.g. a batch of settlements.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeAlias

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

Database: TypeAlias = AsyncEngine | AsyncConnection


@asynccontextmanager
async def transaction(db: Database) -> AsyncIterator[AsyncConnection]:
    """A connection inside a transaction; commits on success only if it began it."""
    if isinstance(db, AsyncEngine):
        async with db.begin() as conn:
            yield conn
    elif db.in_transaction():
        yield db
    else:
        async with db.begin():
            yield db


def dialect_name(conn: AsyncConnection) -> str:
    return conn.dialect.name

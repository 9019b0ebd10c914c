"""The few statements whose spelling differs between PostgreSQL and SQLite.

Both support ``INSERT ... ON CONFLICT``, but SQLAlchemy builds it from each dialect's own
``insert``; this picks the right one for the connection at hand.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite


def upsert_insert(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT for ``table`` that supports ``on_conflict_do_nothing/do_update``."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"no ON CONFLICT support for dialect {dialect!r}")


def insert_or_ignore(
    dialect: str, table: Table, conflict_columns: Sequence[str]
) -> postgresql.Insert | sqlite.Insert:
    """INSERT that silently skips rows whose ``conflict_columns`` already exist."""
    stmt = upsert_insert(dialect, table)
    return stmt.on_conflict_do_nothing(index_elements=list(conflict_columns))

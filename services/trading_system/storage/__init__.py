"""Shared database plumbing: engines, transactions, migrations and epoch fencing."""

from trading_system.storage.engine import UnsupportedDatabaseURL, create_engine, normalise_url
from trading_system.storage.fencing import (
    FENCING_COMPONENT,
    FENCING_MIGRATIONS,
    FencedError,
    FenceState,
    FenceToken,
    check_fence,
    current_token,
    raise_epoch,
    read_fence,
)
from trading_system.storage.migrations import Migration, MigrationError, applied_versions, migrate
from trading_system.storage.transactions import Database, transaction

__all__ = [
    "FENCING_COMPONENT",
    "FENCING_MIGRATIONS",
    "Database",
    "FenceState",
    "FenceToken",
    "FencedError",
    "Migration",
    "MigrationError",
    "UnsupportedDatabaseURL",
    "applied_versions",
    "check_fence",
    "create_engine",
    "current_token",
    "migrate",
    "normalise_url",
    "raise_epoch",
    "read_fence",
    "transaction",
]

"""The ledger contract on SQLite (aiosqlite, a temporary file): the embedded demo's path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.unit.ledger.contract import LedgerContract
from trading_system.storage import create_engine

pytestmark = pytest.mark.unit


# Function loop: the test runs there, and asyncpg connections are bound to one loop.
@pytest_asyncio.fixture(loop_scope="function")
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    yield engine
    await engine.dispose()


class TestLedgerOnSqlite(LedgerContract):
    pass

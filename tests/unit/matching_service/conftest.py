from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from trading_system.matching.service import Journal
from trading_system.storage import create_engine
from trading_system.storage.fencing import raise_epoch


@pytest_asyncio.fixture(loop_scope="function")
async def db(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'journal.db'}")
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="function")
async def journal(db: AsyncEngine) -> Journal:
    j = Journal(db, "eng-1")
    await j.migrate()
    await raise_epoch(db, j.pair_name, 1, "node-a")
    return j

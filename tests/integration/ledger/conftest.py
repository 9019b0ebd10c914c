"""Fixtures for the PostgreSQL ledger tests: an engine and a funded world on a fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.unit.ledger.helpers import World, build_world
from trading_system.storage import create_engine


# Function loop: the test runs there, and asyncpg connections are bound to one loop.
@pytest_asyncio.fixture(loop_scope="function")
async def engine(postgres_dsn: str) -> AsyncIterator[AsyncEngine]:
    # Room for the concurrency tests' tasks (the server allows 400 connections).
    engine = create_engine(postgres_dsn, pool_size=25)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="function")
async def pg_world(engine: AsyncEngine) -> World:
    return await build_world(engine)

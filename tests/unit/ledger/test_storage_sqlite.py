"""Storage plumbing on SQLite: URLs, the migration runner, joining a caller's transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.unit.ledger.helpers import World, build_world, place_sell, snapshot, trade
from trading_system.ledger import get_balance, get_hold, reserve, settle_trade
from trading_system.storage import (
    Migration,
    MigrationError,
    UnsupportedDatabaseURL,
    applied_versions,
    create_engine,
    migrate,
    normalise_url,
)

pytestmark = pytest.mark.unit


@pytest_asyncio.fixture(loop_scope="function")
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'store.db'}")
    yield engine
    await engine.dispose()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://u@h/db", "postgresql+asyncpg"),
        ("postgres://u@h/db", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg"),
        ("sqlite:///x.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite://", "sqlite+aiosqlite"),
    ],
)
def test_urls_are_normalised_to_the_async_drivers(url: str, driver: str) -> None:
    assert normalise_url(url).drivername == driver


@pytest.mark.parametrize("url", ["mysql://u@h/db", "postgresql+psycopg2://u@h/db", "sqlite+pysqlite:///x"])
def test_other_databases_are_refused(url: str) -> None:
    with pytest.raises(UnsupportedDatabaseURL):
        normalise_url(url)


def _create(name: str) -> Migration:
    async def upgrade(conn: AsyncConnection) -> None:
        await conn.execute(text(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY)"))

    return Migration(int(name[1:]), f"create {name}", upgrade)


async def test_migrations_apply_in_order_once(engine: AsyncEngine) -> None:
    steps = [_create("t1"), _create("t2")]
    assert await migrate(engine, "demo", steps[:1]) == [1]
    assert await migrate(engine, "demo", steps) == [2]
    assert await migrate(engine, "demo", steps) == []
    assert await applied_versions(engine, "demo") == [1, 2]
    assert await applied_versions(engine, "other") == []


async def test_a_failing_migration_leaves_nothing_behind(engine: AsyncEngine) -> None:
    async def broken(conn: AsyncConnection) -> None:
        await conn.execute(text("CREATE TABLE half (id INTEGER)"))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await migrate(engine, "demo", [Migration(1, "half", broken)])
    assert await applied_versions(engine, "demo") == []
    async with engine.connect() as conn:
        tables = (await conn.execute(text("SELECT name FROM sqlite_master WHERE name = 'half'"))).all()
    assert tables == []


async def test_renamed_or_unordered_migrations_are_refused(engine: AsyncEngine) -> None:
    first = _create("t1")
    await migrate(engine, "demo", [first])
    with pytest.raises(MigrationError, match="recorded as"):
        await migrate(engine, "demo", [Migration(1, "something else", first.upgrade)])
    with pytest.raises(MigrationError, match="ascending"):
        await migrate(engine, "demo", [_create("t2"), first])


async def test_operations_join_the_callers_transaction(engine: AsyncEngine) -> None:
    world: World = await build_world(engine)
    await place_sell(world, "bob", "s1", 5)
    before = await snapshot(engine)

    class Abort(Exception):
        pass

    # Both operations inside one caller transaction: rolled back together.
    with pytest.raises(Abort):
        async with engine.begin() as conn:
            await reserve(
                conn,
                world.fence,
                hold_id="h-b1",
                account_id="alice",
                asset="USD",
                amount=500_000,
                order_qty=5,
                order_id="b1",
            )
            await settle_trade(conn, world.fence, trade("t1", 40_000, 5, ("alice", "b1"), ("bob", "s1")))
            assert (await get_balance(conn, "alice", "BTC")).available > 0
            raise Abort
    assert await snapshot(engine) == before
    assert await get_hold(engine, "h-b1") is None


async def test_in_memory_database_keeps_its_data_across_transactions() -> None:
    engine = create_engine("sqlite+aiosqlite://")
    try:
        world = await build_world(engine)
        assert (await get_balance(world.engine, "alice", "USD")).available > 0
    finally:
        await engine.dispose()

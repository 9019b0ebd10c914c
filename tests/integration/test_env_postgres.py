"""PostgreSQL is real: SQLAlchemy async over asyncpg, a fresh database per test, restarts."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from tests.environment.postgres import PostgresServer

pytestmark = pytest.mark.integration


async def test_sql_round_trip_through_sqlalchemy_asyncpg(postgres_dsn: str) -> None:
    engine = create_async_engine(postgres_dsn)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL)"))
            await conn.execute(text("INSERT INTO t VALUES (1, 'one'), (2, 'two')"))
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id, name FROM t ORDER BY id"))).all()
            version = (await conn.execute(text("SHOW server_version"))).scalar_one()
    finally:
        await engine.dispose()
    assert [tuple(r) for r in rows] == [(1, "one"), (2, "two")]
    assert str(version).startswith("15")
    assert engine.dialect.driver == "asyncpg"


async def test_each_test_gets_an_empty_database(postgres_dsn: str) -> None:
    engine = create_async_engine(postgres_dsn)
    try:
        async with engine.connect() as conn:
            count = (
                await conn.execute(
                    text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    assert count == 0


@pytest.mark.parametrize("how", ["clean", "crash"])
async def test_committed_data_survives_restart(postgres: PostgresServer, postgres_dsn: str, how: str) -> None:
    engine = create_async_engine(postgres_dsn, pool_pre_ping=False)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE kept (v int)"))
            await conn.execute(text("INSERT INTO kept VALUES (42)"))
        if how == "clean":
            postgres.restart()
        else:
            postgres.crash_restart()
        # The pooled connection died with the server: the first use must fail loudly.
        with pytest.raises((DBAPIError, OperationalError, ConnectionError)):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        async with engine.connect() as conn:
            value = (await conn.execute(text("SELECT v FROM kept"))).scalar_one()
    finally:
        await engine.dispose()
    assert value == 42

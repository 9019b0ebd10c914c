"""The engine's cheap pre-ping: a dead pooled connection is replaced, a busy one is not pinged."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from trading_system.storage import create_engine
from trading_system.storage import engine as storage_engine

pytestmark = pytest.mark.integration


async def test_a_connection_the_server_closed_is_replaced_on_checkout(postgres_dsn: str) -> None:
    db = create_engine(postgres_dsn, pool_size=2)
    admin = create_engine(postgres_dsn, pool_size=1)
    try:
        async with db.connect() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with admin.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await asyncio.sleep(0.2)  # the driver sees the socket close
        async with db.connect() as conn:
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() != pid
    finally:
        await db.dispose()
        await admin.dispose()


async def test_only_a_connection_idle_for_a_while_is_pinged(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = create_engine(postgres_dsn, pool_size=1)
    pings: list[object] = []
    real = db.dialect.do_ping

    def counting(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return real(dbapi_connection)  # type: ignore[arg-type]

    monkeypatch.setattr(db.dialect, "do_ping", counting)
    monkeypatch.setattr(storage_engine, "PING_AFTER_IDLE_SECONDS", 0.3)
    try:
        for _ in range(3):
            async with db.connect() as conn:
                await conn.execute(text("SELECT 1"))
        assert pings == []  # a fresh connection, then one back in the pool for milliseconds
        await asyncio.sleep(0.4)
        async with db.connect() as conn:
            await conn.execute(text("SELECT 1"))
        assert len(pings) == 1
    finally:
        await db.dispose()

"""Scratch databases for the benchmarks: created next to an admin DSN, dropped afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

from sqlalchemy import text
from sqlalchemy.engine import make_url

from trading_system.storage import create_engine


async def admin_execute(dsn: str, sql: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
    engine = create_engine(dsn, pool_size=1)
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def scratch_database(admin_dsn: str, prefix: str) -> AsyncIterator[str]:
    """The DSN of a new database ``<prefix>_<random>`` on the same server; dropped on exit."""
    url = make_url(admin_dsn)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = url.render_as_string(hide_password=False)
    await admin_execute(admin, f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

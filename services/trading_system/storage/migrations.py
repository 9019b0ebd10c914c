"""A tiny versioned migration runner.

Each component (``fencing``, ``ledger``, later the matching journal and the coordinator)
owns an ordered list of :class:`Migration`. ``migrate`` applies the ones not yet recorded
in ``schema_migrations``, each in its own transaction together with its record, so a crash
leaves either the whole version or none of it (both PostgreSQL and SQLite have
transactional DDL). Running it again is a no-op.

Concurrent runners (several replicas starting at once) are serialised: on PostgreSQL by
a session advisory lock, on SQLite by ``BEGIN IMMEDIATE`` (see ``storage.engine``).
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

migrations_metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    migrations_metadata,
    Column("component", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("name", Text, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("component", "version"),
)

_ADVISORY_KEY = zlib.crc32(b"trading_system.storage.migrations")


class MigrationError(RuntimeError):
    """The migration list and the database disagree (renamed or reordered versions)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    upgrade: Callable[[AsyncConnection], Awaitable[None]]


def _check_order(component: str, migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or (versions and versions[0] < 1):
        raise MigrationError(f"{component}: versions must be unique, ascending and >= 1, got {versions}")


async def migrate(engine: AsyncEngine, component: str, migrations: Sequence[Migration]) -> list[int]:
    """Apply the pending migrations of ``component``; returns the versions applied now."""
    _check_order(component, migrations)
    applied_now: list[int] = []
    async with engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_KEY})
            await conn.commit()
        try:
            async with conn.begin():
                await conn.run_sync(migrations_metadata.create_all)
            for migration in migrations:
                async with conn.begin():
                    if await _already_applied(conn, component, migration):
                        continue
                    await migration.upgrade(conn)
                    await conn.execute(
                        schema_migrations.insert().values(
                            component=component, version=migration.version, name=migration.name
                        )
                    )
                applied_now.append(migration.version)
        finally:
            if postgres and not conn.closed and not conn.invalidated:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_KEY})
                await conn.commit()
    return applied_now


async def _already_applied(conn: AsyncConnection, component: str, migration: Migration) -> bool:
    recorded = (
        await conn.execute(
            select(schema_migrations.c.name).where(
                schema_migrations.c.component == component, schema_migrations.c.version == migration.version
            )
        )
    ).scalar_one_or_none()
    if recorded is None:
        return False
    if recorded != migration.name:
        raise MigrationError(
            f"{component} v{migration.version} is recorded as {recorded!r}, "
            f"the code calls it {migration.name!r}"
        )
    return True


async def applied_versions(engine: AsyncEngine, component: str) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(schema_migrations.c.version)
            .where(schema_migrations.c.component == component)
            .order_by(schema_migrations.c.version)
        )
        return [int(v) for v in rows.scalars()]

"""The matching journal: every accepted command, in order, fenced by epoch.

One row per command, keyed ``(engine_id, seq)`` with ``seq`` 1, 2, 3, ... per engine and
``UNIQUE(engine_id, command_id)`` so a redelivered command is recognised and ignored.
``append`` runs in ONE transaction that first checks the writer's epoch against the
fence row (:func:`trading_system.storage.fencing.check_fence`, ``FOR SHARE``): a stale
epoch raises :class:`FencedError` and writes nothing. The same transaction records the
highest sequence whose events the writer has had confirmed by the broker (``published``
watermark), so a successor knows which events it must publish again.

Snapshots (``MatchingEngine.snapshot()`` as JSON at a journal sequence) bound rebuild
time: rebuild = latest snapshot + replay of the journal after it.

Works on PostgreSQL and SQLite through the same SQLAlchemy Core statements.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trading_system.matching.core import Command
from trading_system.matching.service.codec import command_id, decode_command, encode_command
from trading_system.storage.dialect import insert_or_ignore, upsert_insert
from trading_system.storage.fencing import FENCING_COMPONENT, FENCING_MIGRATIONS, FenceToken, check_fence
from trading_system.storage.migrations import Migration, migrate
from trading_system.storage.transactions import transaction

journal_metadata = MetaData()

matching_journal = Table(
    "matching_journal",
    journal_metadata,
    Column("engine_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("command_id", Text, nullable=False),
    Column("command", Text, nullable=False),
    PrimaryKeyConstraint("engine_id", "seq"),
    UniqueConstraint("engine_id", "command_id", name="uq_matching_journal_command"),
)

matching_snapshots = Table(
    "matching_snapshots",
    journal_metadata,
    Column("engine_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("state", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("engine_id", "seq"),
)

matching_published = Table(
    "matching_published",
    journal_metadata,
    Column("engine_id", Text, primary_key=True),
    Column("seq", BigInteger, nullable=False),
)


async def _create_tables(conn: AsyncConnection) -> None:
    await conn.run_sync(journal_metadata.create_all)


MATCHING_COMPONENT = "matching"
MATCHING_MIGRATIONS = (Migration(1, "create matching journal, snapshots, published", _create_tables),)


async def migrate_matching(engine: AsyncEngine) -> None:
    """Create the fence table and the journal tables (idempotent)."""
    await migrate(engine, FENCING_COMPONENT, FENCING_MIGRATIONS)
    await migrate(engine, MATCHING_COMPONENT, MATCHING_MIGRATIONS)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    seq: int
    epoch: int
    command_id: str
    command: Command


@dataclass(frozen=True, slots=True)
class AppendResult:
    new: list[JournalEntry]
    """Entries written now, in sequence order."""
    duplicates: list[str]
    """Command ids that were already journaled (or repeated in the batch): ignored."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    seq: int
    epoch: int
    state: dict[str, Any]


_MAX_SEQ = select(func.max(matching_journal.c.seq)).where(matching_journal.c.engine_id == bindparam("e"))
_EXISTING = select(matching_journal.c.command_id).where(
    matching_journal.c.engine_id == bindparam("e"),
    matching_journal.c.command_id.in_(bindparam("ids", expanding=True)),
)
_INSERT = matching_journal.insert()


class Journal:
    """The journal of one matching engine (``engine_id``) fenced by ``pair_name``."""

    def __init__(self, db: AsyncEngine, engine_id: str, pair_name: str | None = None) -> None:
        self.db = db
        self.engine_id = engine_id
        self.pair_name = pair_name or f"matching-{engine_id}"

    def token(self, epoch: int) -> FenceToken:
        return FenceToken(self.pair_name, epoch)

    async def migrate(self) -> None:
        await migrate_matching(self.db)

    async def append(
        self, commands: Sequence[Command], epoch: int, *, published_seq: int | None = None
    ) -> AppendResult:
        """Journal ``commands`` under ``epoch`` in one fenced transaction.

        Raises :class:`FencedError` (nothing written) if ``epoch`` is not the fence's
        current epoch. Commands whose id is already journaled are skipped. If given,
        ``published_seq`` moves the published watermark forward in the same transaction.
        """
        engine_id = self.engine_id
        async with transaction(self.db) as conn:
            await check_fence(conn, self.token(epoch))
            ids = [command_id(c) for c in commands]
            existing: set[str] = set()
            if ids:
                for start in range(0, len(ids), 5000):
                    rows = await conn.execute(_EXISTING, {"e": engine_id, "ids": ids[start : start + 5000]})
                    existing.update(rows.scalars())
            seq = int((await conn.execute(_MAX_SEQ, {"e": engine_id})).scalar_one_or_none() or 0)
            new: list[JournalEntry] = []
            duplicates: list[str] = []
            rows_out: list[dict[str, Any]] = []
            for cid, cmd in zip(ids, commands, strict=True):
                if cid in existing:
                    duplicates.append(cid)
                    continue
                existing.add(cid)
                seq += 1
                new.append(JournalEntry(seq, epoch, cid, cmd))
                rows_out.append(
                    {
                        "engine_id": engine_id,
                        "seq": seq,
                        "epoch": epoch,
                        "command_id": cid,
                        "command": encode_command(cmd),
                    }
                )
            if rows_out:
                await conn.execute(_INSERT, rows_out)
            if published_seq is not None:
                await self._set_published(conn, published_seq)
        return AppendResult(new, duplicates)

    async def _set_published(self, conn: AsyncConnection, seq: int) -> None:
        ins = upsert_insert(conn.dialect.name, matching_published).values(engine_id=self.engine_id, seq=seq)
        await conn.execute(
            ins.on_conflict_do_update(
                index_elements=[matching_published.c.engine_id],
                set_={"seq": ins.excluded.seq},
                where=matching_published.c.seq < ins.excluded.seq,
            )
        )

    async def mark_published(self, seq: int, epoch: int) -> None:
        """Move the published watermark (fenced: only the current writer may)."""
        async with transaction(self.db) as conn:
            await check_fence(conn, self.token(epoch))
            await self._set_published(conn, seq)

    async def published_seq(self) -> int:
        async with self.db.connect() as conn:
            value = (
                await conn.execute(
                    select(matching_published.c.seq).where(matching_published.c.engine_id == self.engine_id)
                )
            ).scalar_one_or_none()
        return int(value or 0)

    async def head(self) -> int:
        """The last journaled sequence (0 if empty)."""
        async with self.db.connect() as conn:
            return int((await conn.execute(_MAX_SEQ, {"e": self.engine_id})).scalar_one_or_none() or 0)

    async def read_from(self, seq: int, limit: int = 1000) -> list[JournalEntry]:
        """Entries with sequence >= ``seq``, in order, at most ``limit``."""
        t = matching_journal.c
        stmt = (
            select(t.seq, t.epoch, t.command_id, t.command)
            .where(t.engine_id == self.engine_id, t.seq >= seq)
            .order_by(t.seq)
            .limit(limit)
        )
        async with self.db.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            JournalEntry(int(r.seq), int(r.epoch), str(r.command_id), decode_command(r.command)) for r in rows
        ]

    async def iterate(self, after: int = 0, page: int = 5000) -> AsyncIterator[list[JournalEntry]]:
        """Pages of entries with sequence > ``after`` until the current head."""
        nxt = after + 1
        while True:
            entries = await self.read_from(nxt, page)
            if not entries:
                return
            yield entries
            nxt = entries[-1].seq + 1

    # -- snapshots ------------------------------------------------------------------------

    async def write_snapshot(self, seq: int, epoch: int, state: dict[str, Any], keep: int = 2) -> None:
        """Store the engine state after journal entry ``seq``; keeps the newest ``keep``.

        Not fenced: a snapshot is derived from the journal (any member may write one, a
        duplicate is ignored) and never changes what the journal says.
        """
        async with transaction(self.db) as conn:
            stmt = insert_or_ignore(conn.dialect.name, matching_snapshots, ["engine_id", "seq"]).values(
                engine_id=self.engine_id, seq=seq, epoch=epoch, state=json.dumps(state, separators=(",", ":"))
            )
            await conn.execute(stmt)
            kept = (
                select(matching_snapshots.c.seq)
                .where(matching_snapshots.c.engine_id == self.engine_id)
                .order_by(matching_snapshots.c.seq.desc())
                .limit(keep)
            )
            floor = (await conn.execute(select(func.min(kept.subquery().c.seq)))).scalar_one()
            await conn.execute(
                delete(matching_snapshots).where(
                    matching_snapshots.c.engine_id == self.engine_id, matching_snapshots.c.seq < floor
                )
            )

    async def latest_snapshot(self, at_most: int | None = None) -> Snapshot | None:
        t = matching_snapshots.c
        stmt = select(t.seq, t.epoch, t.state).where(t.engine_id == self.engine_id)
        if at_most is not None:
            stmt = stmt.where(t.seq <= at_most)
        stmt = stmt.order_by(t.seq.desc()).limit(1)
        async with self.db.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        return Snapshot(int(row.seq), int(row.epoch), json.loads(row.state))

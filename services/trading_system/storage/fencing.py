"""Epoch fencing: a write counts only if its writer still holds the current epoch.

Every pair (matching, execution, ...) has one row in ``fence``. The epoch in it only
grows: the operator picks a new epoch at failover and the promoted member writes it
with :func:`raise_epoch` before it does anything else. Every state-changing transaction
of a pair member starts with :func:`check_fence`, which reads the row ``FOR SHARE`` and
compares it with the writer's epoch.

Why ``FOR SHARE`` and not a plain read: ``raise_epoch`` updates the row, and that UPDATE
waits for every transaction holding the share lock. So once ``raise_epoch`` has returned,
no transaction that checked the old epoch can still commit, and every later transaction
sees the new one: the old writer is cut off at a single point in time, not "soon".
Share locks do not conflict with each other, so writers of the same epoch do not queue
behind one another on the fence row. (``FOR KEY SHARE`` would not do: it does not
conflict with an UPDATE of a non-key column.)

SQLite has no row locks; SQLAlchemy drops the ``FOR SHARE`` clause there, and the engine
from ``storage.engine`` starts every transaction with ``BEGIN IMMEDIATE`` instead, which
serialises all writers, so the check and the writes are just as atomic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, MetaData, Table, Text, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from trading_system.storage.dialect import upsert_insert
from trading_system.storage.migrations import Migration
from trading_system.storage.transactions import Database, transaction

fencing_metadata = MetaData()

fence = Table(
    "fence",
    fencing_metadata,
    Column("pair_name", Text, primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("holder", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


async def _create_fence(conn: AsyncConnection) -> None:
    await conn.run_sync(fencing_metadata.create_all)


FENCING_MIGRATIONS = (Migration(1, "create fence", _create_fence),)
FENCING_COMPONENT = "fencing"


@dataclass(frozen=True, slots=True)
class FenceToken:
    """What a writer presents with each write: its pair and the epoch it was given."""

    pair_name: str
    epoch: int


@dataclass(frozen=True, slots=True)
class FenceState:
    pair_name: str
    epoch: int
    holder: str
    updated_at: datetime | None = None
    moved: bool = False


class FencedError(RuntimeError):
    """The writer's epoch is not the current one: it must stop writing (it lost its role)."""

    def __init__(self, pair_name: str, presented: int, current: int | None) -> None:
        self.pair_name = pair_name
        self.presented = presented
        self.current = current
        shown = "no fence row" if current is None else f"current epoch is {current}"
        super().__init__(f"fenced: {pair_name!r} write with epoch {presented} refused, {shown}")


# Built once: the check runs at the start of every fenced transaction.
_CHECK = select(fence.c.epoch).where(fence.c.pair_name == bindparam("pair")).with_for_update(read=True)


async def check_fence(conn: AsyncConnection, token: FenceToken) -> None:
    """Raise :class:`FencedError` unless ``token`` holds the current epoch.

    Call it inside the writing transaction, before the first write: the share lock it
    takes lasts until that transaction ends.
    """
    current = (await conn.execute(_CHECK, {"pair": token.pair_name})).scalar_one_or_none()
    if current != token.epoch:
        raise FencedError(token.pair_name, token.epoch, current)


async def read_fence(db: Database, pair_name: str) -> FenceState | None:
    async with transaction(db) as conn:
        row = (
            await conn.execute(
                select(fence.c.epoch, fence.c.holder, fence.c.updated_at).where(
                    fence.c.pair_name == pair_name
                )
            )
        ).first()
    if row is None:
        return None
    return FenceState(pair_name, int(row.epoch), str(row.holder), row.updated_at)


async def current_token(db: Database, pair_name: str) -> FenceToken:
    """The token of whoever holds ``pair_name`` now (for admin tools and tests)."""
    state = await read_fence(db, pair_name)
    if state is None:
        raise FencedError(pair_name, 0, None)
    return FenceToken(pair_name, state.epoch)


async def raise_epoch(db: Database, pair_name: str, new_epoch: int, holder: str) -> FenceState:
    """Move ``pair_name`` to ``new_epoch`` held by ``holder``; the epoch never goes down.

    Creates the row for a new pair. Repeating the same call is harmless (``moved`` is
    then False). Raises :class:`FencedError` if the fence already stands at a higher
    epoch, or at the same epoch for another holder: someone newer has taken over.
    """
    if new_epoch < 1:
        raise ValueError(f"epoch must be >= 1, got {new_epoch}")
    if not pair_name or not holder:
        raise ValueError("pair_name and holder must be non-empty")
    async with transaction(db) as conn:
        ins = upsert_insert(conn.dialect.name, fence).values(
            pair_name=pair_name, epoch=new_epoch, holder=holder, updated_at=func.now()
        )
        stmt = ins.on_conflict_do_update(
            index_elements=[fence.c.pair_name],
            set_={"epoch": ins.excluded.epoch, "holder": ins.excluded.holder, "updated_at": func.now()},
            where=fence.c.epoch < ins.excluded.epoch,
        ).returning(fence.c.updated_at)
        moved_at = (await conn.execute(stmt)).scalar_one_or_none()
        if moved_at is not None:
            return FenceState(pair_name, new_epoch, holder, moved_at, moved=True)
        row = (
            await conn.execute(
                select(fence.c.epoch, fence.c.holder, fence.c.updated_at).where(
                    fence.c.pair_name == pair_name
                )
            )
        ).one()
    if int(row.epoch) == new_epoch and row.holder == holder:
        return FenceState(pair_name, new_epoch, holder, row.updated_at, moved=False)
    raise FencedError(pair_name, new_epoch, int(row.epoch))

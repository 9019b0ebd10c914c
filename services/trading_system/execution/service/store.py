"""Orders and parent orders in PostgreSQL (SQLite through the same code), fenced by epoch.

Every write runs in one transaction that starts with ``check_fence``, like the ledger's:
once a standby has raised the epoch, the old active cannot change a row even if it keeps
running. A promoted standby loads everything from here, so it knows every order the old
active acknowledged (an order is acknowledged to the client only after its row exists).

Fills are stored as a JSON list on the order row: an order has few fills, they are read
and written with the order, and the trade id in each makes reapplying one a no-op.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trading_system.execution.algos import ParentOrder, Slice, Strategy
from trading_system.execution.book import OrderRecord
from trading_system.execution.order_state import Fill, OrderStatus
from trading_system.execution.parents import ParentRecord
from trading_system.storage.fencing import FENCING_COMPONENT, FENCING_MIGRATIONS, FenceToken, check_fence
from trading_system.storage.migrations import Migration, migrate
from trading_system.storage.transactions import transaction

EXECUTION_COMPONENT = "execution"

execution_metadata = MetaData()

orders = Table(
    "execution_orders",
    execution_metadata,
    Column("order_id", Text, primary_key=True),
    Column("client_order_id", Text, nullable=False),
    Column("account", Text, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("side", Text, nullable=False),
    Column("order_type", Text, nullable=False),
    Column("time_in_force", Text, nullable=False),
    Column("post_only", Boolean, nullable=False),
    Column("qty", BigInteger, nullable=False),
    Column("price", BigInteger),
    Column("status", Text, nullable=False),
    Column("filled_qty", BigInteger, nullable=False),
    Column("notional", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("fills", Text, nullable=False),
    Column("arrival_price", Float),
    Column("parent_id", Text),
    Column("replaces", Text),
    Column("cancel_requested", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    # The duplicate-client-order-id rule, enforced where it cannot be raced.
    UniqueConstraint("account", "client_order_id", name="execution_orders_client_id"),
)

parent_orders = Table(
    "execution_parent_orders",
    execution_metadata,
    Column("parent_id", Text, primary_key=True),
    Column("client_order_id", Text, nullable=False),
    Column("account", Text, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("side", Text, nullable=False),
    Column("time_in_force", Text, nullable=False),
    Column("qty", BigInteger, nullable=False),
    Column("price", BigInteger),
    Column("strategy", Text, nullable=False),
    Column("params", Text, nullable=False),
    Column("schedule", Text, nullable=False),
    Column("released", Text, nullable=False),
    Column("cancelled", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("arrival_price", Float),
    Column("epoch", BigInteger, nullable=False),
    UniqueConstraint("account", "client_order_id", name="execution_parent_orders_client_id"),
)


async def _initial(conn: AsyncConnection) -> None:
    await conn.run_sync(execution_metadata.create_all)


EXECUTION_MIGRATIONS = (Migration(1, "execution orders and parent orders", _initial),)


async def migrate_execution(engine: AsyncEngine) -> list[int]:
    await migrate(engine, FENCING_COMPONENT, FENCING_MIGRATIONS)
    return await migrate(engine, EXECUTION_COMPONENT, EXECUTION_MIGRATIONS)


class DuplicateClientOrderId(Exception):
    """An order with this (account, client_order_id) exists already."""


# -- rows <-> records ----------------------------------------------------------------------


def _state_values(record: OrderRecord) -> dict[str, Any]:
    s = record.state
    return {
        "status": s.status.value,
        "filled_qty": s.filled_qty,
        "notional": s.notional,
        "reason": s.reason,
        "fills": json.dumps([[f.trade_id, f.qty, f.price] for f in s.fills]),
        "cancel_requested": record.cancel_requested,
    }


def order_row(record: OrderRecord, epoch: int) -> dict[str, Any]:
    return {
        "order_id": record.order_id,
        "client_order_id": record.client_order_id,
        "account": record.account,
        "symbol": record.symbol,
        "side": record.side,
        "order_type": record.order_type,
        "time_in_force": record.time_in_force,
        "post_only": record.post_only,
        "qty": record.qty,
        "price": record.price,
        "arrival_price": record.arrival_price,
        "parent_id": record.parent_id,
        "replaces": record.replaces,
        "created_at": record.created_at,
        "epoch": epoch,
        **_state_values(record),
    }


def record_from_row(row: Any) -> OrderRecord:
    record = OrderRecord(
        order_id=row.order_id,
        client_order_id=row.client_order_id,
        account=row.account,
        symbol=row.symbol,
        side=row.side,
        order_type=row.order_type,
        time_in_force=row.time_in_force,
        qty=int(row.qty),
        price=None if row.price is None else int(row.price),
        created_at=float(row.created_at),
        post_only=bool(row.post_only),
        arrival_price=row.arrival_price,
        parent_id=row.parent_id,
        replaces=row.replaces,
        cancel_requested=bool(row.cancel_requested),
    )
    s = record.state
    s.status = OrderStatus(row.status)
    s.filled_qty = int(row.filled_qty)
    s.notional = int(row.notional)
    s.reason = row.reason
    s.fills = [Fill(t, int(q), int(p)) for t, q, p in json.loads(row.fills)]
    return record


def _parent_state(parent: ParentRecord) -> dict[str, Any]:
    return {
        "released": json.dumps(sorted(parent.progress.released)),
        "cancelled": parent.progress.cancelled,
    }


def parent_row(parent: ParentRecord, epoch: int) -> dict[str, Any]:
    return {
        "parent_id": parent.parent_id,
        "client_order_id": parent.client_order_id,
        "account": parent.account,
        "symbol": parent.symbol,
        "side": parent.side,
        "time_in_force": parent.time_in_force,
        "qty": parent.qty,
        "price": parent.price,
        "strategy": parent.strategy.value,
        "params": json.dumps(parent.params),
        "schedule": json.dumps([[s.index, s.at, s.qty] for s in parent.progress.schedule]),
        "created_at": parent.created_at,
        "arrival_price": parent.arrival_price,
        "epoch": epoch,
        **_parent_state(parent),
    }


def parent_from_row(row: Any) -> ParentRecord:
    schedule = [Slice(int(i), float(at), int(q)) for i, at, q in json.loads(row.schedule)]
    progress = ParentOrder(row.parent_id, int(row.qty), schedule)
    progress.released = set(json.loads(row.released))
    progress.cancelled = bool(row.cancelled)
    return ParentRecord(
        parent_id=row.parent_id,
        client_order_id=row.client_order_id,
        account=row.account,
        symbol=row.symbol,
        side=row.side,
        time_in_force=row.time_in_force,
        qty=int(row.qty),
        price=None if row.price is None else int(row.price),
        strategy=Strategy(row.strategy),
        params=json.loads(row.params),
        created_at=float(row.created_at),
        progress=progress,
        arrival_price=row.arrival_price,
    )


# -- the store -------------------------------------------------------------------------------

_UPDATE_ORDER = (
    update(orders)
    .where(orders.c.order_id == bindparam("b_order_id"))
    .values(
        status=bindparam("status"),
        filled_qty=bindparam("filled_qty"),
        notional=bindparam("notional"),
        reason=bindparam("reason"),
        fills=bindparam("fills"),
        cancel_requested=bindparam("cancel_requested"),
        epoch=bindparam("b_epoch"),
    )
)


class OrderStore:
    def __init__(self, db: AsyncEngine) -> None:
        self.db = db

    async def migrate(self) -> list[int]:
        return await migrate_execution(self.db)

    async def insert_orders(
        self, fence: FenceToken, new: Sequence[OrderRecord], changed: Sequence[OrderRecord] = ()
    ) -> None:
        """Insert ``new`` orders (and save ``changed`` ones) in one fenced transaction."""
        try:
            async with transaction(self.db) as conn:
                await check_fence(conn, fence)
                if new:
                    await conn.execute(orders.insert(), [order_row(r, fence.epoch) for r in new])
                await self._update(conn, fence, changed)
        except IntegrityError as exc:
            raise DuplicateClientOrderId(str(exc.orig)) from exc

    async def save_orders(self, fence: FenceToken, changed: Iterable[OrderRecord]) -> None:
        records = list(changed)
        if not records:
            return
        async with transaction(self.db) as conn:
            await check_fence(conn, fence)
            await self._update(conn, fence, records)

    async def _update(self, conn: AsyncConnection, fence: FenceToken, records: Sequence[OrderRecord]) -> None:
        if records:
            params = [{"b_order_id": r.order_id, "b_epoch": fence.epoch, **_state_values(r)} for r in records]
            await conn.execute(_UPDATE_ORDER, params)

    async def insert_parent(self, fence: FenceToken, parent: ParentRecord) -> None:
        try:
            async with transaction(self.db) as conn:
                await check_fence(conn, fence)
                await conn.execute(parent_orders.insert().values(**parent_row(parent, fence.epoch)))
        except IntegrityError as exc:
            raise DuplicateClientOrderId(str(exc.orig)) from exc

    async def release_children(
        self, fence: FenceToken, parent: ParentRecord, children: Sequence[OrderRecord]
    ) -> None:
        """The children and the parent's released slices in one transaction, so a slice
        is either released with its child order or not at all."""
        async with transaction(self.db) as conn:
            await check_fence(conn, fence)
            if children:
                await conn.execute(orders.insert(), [order_row(r, fence.epoch) for r in children])
            await self._save_parent(conn, fence, parent)

    async def save_parent(self, fence: FenceToken, parent: ParentRecord) -> None:
        async with transaction(self.db) as conn:
            await check_fence(conn, fence)
            await self._save_parent(conn, fence, parent)

    async def _save_parent(self, conn: AsyncConnection, fence: FenceToken, parent: ParentRecord) -> None:
        await conn.execute(
            update(parent_orders)
            .where(parent_orders.c.parent_id == parent.parent_id)
            .values(epoch=fence.epoch, **_parent_state(parent))
        )

    async def load(self) -> tuple[list[OrderRecord], list[ParentRecord]]:
        async with self.db.connect() as conn:
            order_rows = (await conn.execute(select(orders).order_by(orders.c.created_at))).all()
            parent_rows = (
                await conn.execute(select(parent_orders).order_by(parent_orders.c.created_at))
            ).all()
        return [record_from_row(r) for r in order_rows], [parent_from_row(r) for r in parent_rows]

    async def count(self) -> int:
        async with self.db.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(orders))).scalar_one())

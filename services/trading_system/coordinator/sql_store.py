"""The coordinator's tables and the SQL ``TransactionStore`` (PostgreSQL, or SQLite).

``coordinator_transactions`` holds one row per transaction: the order, the protocol
state (without its history), the phase and its deadline, and the lease (owner, expiry).
``coordinator_transaction_events`` is append-only: every accepted event with the phase
change it caused, and every vote with its participant and reason, with timestamps.
``coordinator_audit`` records the operators' forced decisions.

Every save is fenced by the lease: ``UPDATE ... WHERE lease_owner = me``; a replica
whose lease was taken over writes nothing and stops (``LeaseLostError``).

Given a ``GroupCommitter``, the writes of concurrent steps (create, claim, save,
release, the outbox flag, audit rows) share database transactions (group commit); each
call still returns only once its own write is committed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    Row,
    Table,
    Text,
    and_,
    false,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trading_system.coordinator.bulk import Write
from trading_system.coordinator.group_commit import Batch, GroupCommitter
from trading_system.coordinator.protocol import (
    TERMINAL_PHASES,
    HistoryEntry,
    Phase,
    Transaction,
)
from trading_system.coordinator.store import (
    IN_DOUBT_PHASES,
    AuditEntry,
    Claim,
    LeaseBusyError,
    LeaseLostError,
    TxnRecord,
    is_takeover,
    order_from_dict,
    order_to_dict,
)
from trading_system.pipeline.orders import OrderRequest
from trading_system.storage import Migration, migrate, transaction
from trading_system.storage.dialect import insert_or_ignore

T = TypeVar("T")
COORDINATOR_COMPONENT = "coordinator"
coordinator_metadata = MetaData()

txns = Table(
    "coordinator_transactions",
    coordinator_metadata,
    Column("txn_id", Text, primary_key=True),
    Column("order_id", Text, nullable=False, unique=True),
    Column("account", Text, nullable=False),
    Column("symbol", Text, nullable=False),
    Column("order_json", Text, nullable=False),
    Column("state_json", Text, nullable=False),
    Column("phase", Text, nullable=False),
    Column("hold", Text, nullable=False),
    Column("venue", Text, nullable=False),
    Column("outcome_reason", Text),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("deadline", Double),
    Column("lease_owner", Text),
    Column("lease_previous", Text),  # the owner a claim replaced: tells a takeover apart
    Column("lease_expires_at", Double, nullable=False, server_default="0"),
    Column("outcome_published", Boolean, nullable=False, server_default=false()),
    Column("version", Integer, nullable=False, server_default="0"),
    Index("ix_coordinator_transactions_phase_deadline", "phase", "deadline"),
    Index("ix_coordinator_transactions_account_created", "account", "created_at"),
)

txn_events = Table(
    "coordinator_transaction_events",
    coordinator_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("txn_id", Text, nullable=False, index=True),
    Column("at", Double, nullable=False),
    Column("kind", Text, nullable=False),  # "event" (a phase step) or "vote"
    Column("name", Text, nullable=False),
    Column("from_phase", Text),
    Column("to_phase", Text),
    Column("participant", Text),
    Column("vote", Text),
    Column("detail", Text, nullable=False, server_default=""),
    Column("replica", Text, nullable=False),
)

audit = Table(
    "coordinator_audit",
    coordinator_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("txn_id", Text, nullable=False, index=True),
    Column("at", Double, nullable=False),
    Column("action", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("reason", Text, nullable=False),
)


async def _initial(conn: AsyncConnection) -> None:
    await conn.run_sync(coordinator_metadata.create_all)


COORDINATOR_MIGRATIONS = (Migration(1, "coordinator transactions, events and audit", _initial),)


async def migrate_coordinator(engine: AsyncEngine) -> list[int]:
    return await migrate(engine, COORDINATOR_COMPONENT, COORDINATOR_MIGRATIONS)


OPEN_PHASES = tuple(phase.value for phase in Phase if phase not in TERMINAL_PHASES)
ENDED_PHASES = tuple(phase.value for phase in TERMINAL_PHASES)


@dataclass(frozen=True, slots=True)
class EventRow:
    at: float
    kind: str
    name: str
    from_phase: str | None
    to_phase: str | None
    participant: str | None
    vote: str | None
    detail: str
    replica: str


def _state_json(txn: Transaction) -> str:
    # The history lives in its own table, one row per entry; the row keeps the rest.
    return json.dumps(txn.to_dict(history=False))


def _columns(txn: Transaction, deadline: float | None) -> dict[str, Any]:
    return {
        "state_json": _state_json(txn),
        "phase": txn.phase.value,
        "hold": txn.hold.value,
        "venue": txn.venue.value,
        "outcome_reason": txn.outcome_reason,
        "deadline": deadline,
    }


def _event_rows(before: Transaction, after: Transaction, replica: str) -> list[dict[str, Any]]:
    # executemany needs the same keys in every row: votes have no phases, steps no vote.
    base = {"txn_id": after.txn_id, "replica": replica, "from_phase": None, "to_phase": None}
    rows = [
        {
            **base,
            "at": entry.at,
            "kind": "event",
            "name": entry.event,
            "from_phase": entry.from_phase.value,
            "to_phase": entry.to_phase.value,
            "participant": None,
            "vote": None,
            "detail": entry.detail,
        }
        for entry in after.history[len(before.history) :]
    ]
    rows += [
        {
            **base,
            "at": vote.at,
            "kind": "vote",
            "name": "VoteCast",
            "participant": vote.participant,
            "vote": vote.value.value,
            "detail": vote.reason,
        }
        for vote in after.votes[len(before.votes) :]
    ]
    return rows


def _transaction(row: Row[Any]) -> Transaction:
    return Transaction.from_dict(json.loads(row.state_json))


def _record(row: Row[Any], history: Iterable[HistoryEntry] = ()) -> TxnRecord:
    txn = replace(_transaction(row), history=tuple(history))
    order = order_from_dict(json.loads(row.order_json))
    return TxnRecord(
        txn,
        order,
        row.lease_owner,
        float(row.lease_expires_at),
        float(row.updated_at),
        bool(row.outcome_published),
    )


def _claim_statement(txn_id: str, owner: str, now: float, ttl: float) -> Any:
    # One conditional UPDATE: SET's right-hand sides read the old row, so
    # lease_previous keeps the owner this claim replaced.
    free = or_(txns.c.lease_owner.is_(None), txns.c.lease_owner == owner, txns.c.lease_expires_at < now)
    claimable = and_(txns.c.txn_id == txn_id, txns.c.phase.in_(OPEN_PHASES), free)
    # A row another writer has changed but not committed yet (its step's save or
    # release is in a group commit) is skipped, not waited for: waiting would stall
    # this whole batch behind the other one. Skipped counts as busy: retried shortly.
    unlocked = select(txns.c.txn_id).where(claimable).with_for_update(skip_locked=True).scalar_subquery()
    return (
        update(txns)
        .where(claimable, txns.c.txn_id == unlocked)
        .values(lease_previous=txns.c.lease_owner, lease_owner=owner, lease_expires_at=now + ttl)
        .returning(txns.c.state_json, txns.c.order_json, txns.c.lease_previous)
    )


class SqlStore:
    def __init__(self, db: AsyncEngine, committer: GroupCommitter | None = None) -> None:
        self.db = db
        self.committer = committer

    async def close(self) -> None:
        if self.committer is not None:
            await self.committer.close()

    async def _write(self, write: Write, operation: Callable[[Batch], Awaitable[T]]) -> T:
        """Run a write in a committed transaction: a group commit's, or its own.

        ``write`` says the same as ``operation`` for the group commit's set-based form.
        """
        if self.committer is not None:
            return await self.committer.run(write.txn_id, operation, write)
        async with transaction(self.db) as conn:
            work = Batch(conn)
            result = await operation(work)
            await work.flush()
            return result

    async def create(
        self,
        txn: Transaction,
        order: OrderRequest,
        owner: str,
        now: float,
        ttl: float,
        deadline: float | None,
    ) -> bool:
        values = {
            "txn_id": txn.txn_id,
            "order_id": order.order_id,
            "account": order.account,
            "symbol": order.symbol,
            "order_json": json.dumps(order_to_dict(order)),
            "created_at": txn.created_at,
            "updated_at": now,
            "lease_owner": owner,
            "lease_expires_at": now + ttl,
            **_columns(txn, deadline),
        }
        created = {
            "txn_id": txn.txn_id,
            "at": now,
            "kind": "event",
            "name": "Created",
            "from_phase": None,
            "to_phase": txn.phase.value,
            "participant": None,
            "vote": None,
            "detail": "",
            "replica": owner,
        }

        async def insert(work: Batch) -> bool:
            # Two replicas may get the same request (a redelivery): one insert wins.
            statement = insert_or_ignore(work.conn.dialect.name, txns, ["txn_id"]).values(**values)
            if (await work.conn.execute(statement.returning(txns.c.txn_id))).first() is None:
                return False
            work.later(txn_events, [created])
            return True

        return await self._write(Write("create", txn.txn_id, owner, values, (created,)), insert)

    async def claim(self, txn_id: str, owner: str, now: float, ttl: float) -> Claim | None:
        async def take(work: Batch) -> Row[Any] | None:
            # Built only here: with group commit on PostgreSQL the batch runs the bulk form
            # (``Write``), and building SQLAlchemy statements per call is CPU a busy
            # replica does not have.
            row = (await work.conn.execute(_claim_statement(txn_id, owner, now, ttl))).first()
            if row is None:
                query = select(txns.c.phase).where(txns.c.txn_id == txn_id)
                phase = (await work.conn.execute(query)).scalar_one_or_none()
                if phase is not None and phase in OPEN_PHASES:
                    raise LeaseBusyError(txn_id)
            return row

        row = await self._write(Write("claim", txn_id, owner, {"now": now, "expires": now + ttl}), take)
        if row is None:
            return None
        order = order_from_dict(json.loads(row.order_json))
        previous = row.lease_previous
        return Claim(_transaction(row), order, is_takeover(previous, owner), previous)

    async def save(
        self,
        before: Transaction,
        after: Transaction,
        owner: str,
        now: float,
        ttl: float,
        release: bool,
        deadline: float | None,
    ) -> None:
        lease = {"lease_owner": None, "lease_expires_at": 0.0} if release else {"lease_expires_at": now + ttl}
        columns = _columns(after, deadline)
        rows = _event_rows(before, after, owner)

        async def write(work: Batch) -> None:
            statement = (
                update(txns)
                .where(txns.c.txn_id == after.txn_id, txns.c.lease_owner == owner)
                .values(**columns, **lease, updated_at=now, version=txns.c.version + 1)
            )
            result = await work.conn.execute(statement)
            if result.rowcount != 1:
                raise LeaseLostError(after.txn_id)  # before any other write: nothing to undo
            work.later(txn_events, rows)

        bulk = {
            **columns,
            "now": now,
            "release": release,
            "expires": lease["lease_expires_at"],
        }
        await self._write(Write("save", after.txn_id, owner, bulk, rows), write)

    async def release(self, txn_id: str, owner: str) -> None:
        async def write(work: Batch) -> None:
            statement = (
                update(txns)
                .where(txns.c.txn_id == txn_id, txns.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=0.0)
            )
            await work.conn.execute(statement)

        await self._write(Write("release", txn_id, owner), write)

    async def renew(self, owner: str, txn_ids: Collection[str], now: float, ttl: float) -> int:
        if not txn_ids:
            return 0
        mine = and_(txns.c.lease_owner == owner, txns.c.txn_id.in_(sorted(txn_ids)))
        # A row locked by another transaction is in one of this replica's group commits
        # right now (a save renews the lease itself, a release ends it): skip it rather
        # than wait, and never hold rows a batch is waiting for (a deadlock).
        unlocked = select(txns.c.txn_id).where(mine).order_by(txns.c.txn_id).with_for_update(skip_locked=True)
        async with transaction(self.db) as conn:
            result = await conn.execute(
                update(txns).where(mine, txns.c.txn_id.in_(unlocked)).values(lease_expires_at=now + ttl)
            )
        return int(result.rowcount)

    async def needing_attention(self, now: float, limit: int) -> list[str]:
        due = and_(txns.c.lease_owner.is_(None), txns.c.deadline <= now)
        expired = and_(txns.c.lease_owner.is_not(None), txns.c.lease_expires_at < now)
        query = (
            select(txns.c.txn_id)
            .where(txns.c.phase.in_(OPEN_PHASES), or_(due, expired))
            .order_by(txns.c.deadline)
            .limit(limit)
        )
        async with self.db.connect() as conn:
            return [str(r.txn_id) for r in await conn.execute(query)]

    async def unpublished(self, before: float, limit: int) -> list[TxnRecord]:
        query = (
            select(txns)
            .where(
                txns.c.phase.in_(ENDED_PHASES),
                txns.c.outcome_published.is_(False),
                txns.c.updated_at < before,
            )
            .limit(limit)
        )
        async with self.db.connect() as conn:
            return [_record(row) for row in await conn.execute(query)]

    async def mark_published(self, txn_id: str) -> None:
        async def write(work: Batch) -> None:
            await work.conn.execute(
                update(txns).where(txns.c.txn_id == txn_id).values(outcome_published=True)
            )

        await self._write(Write("published", txn_id), write)

    async def recent_orders(self, account: str, since: float, exclude: str) -> int:
        query = select(func.count()).where(
            txns.c.account == account, txns.c.created_at >= since, txns.c.txn_id != exclude
        )
        async with self.db.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def record_audit(self, entry: AuditEntry) -> None:
        statement = audit.insert().values(
            txn_id=entry.txn_id, at=entry.at, action=entry.action, actor=entry.actor, reason=entry.reason
        )

        async def write(work: Batch) -> None:
            await work.conn.execute(statement)

        values = {"at": entry.at, "action": entry.action, "actor": entry.actor, "reason": entry.reason}
        await self._write(Write("audit", entry.txn_id, values=values), write)

    # -- operators' views -----------------------------------------------------------------

    async def get(self, txn_id: str) -> TxnRecord | None:
        async with self.db.connect() as conn:
            row = (await conn.execute(select(txns).where(txns.c.txn_id == txn_id))).first()
            if row is None:
                return None
            events = await self._events(conn, txn_id)
        history = [
            HistoryEntry(e.at, e.name, Phase(e.from_phase), Phase(e.to_phase), e.detail)
            for e in events
            if e.kind == "event" and e.from_phase is not None and e.to_phase is not None
        ]
        return _record(row, history)

    async def events(self, txn_id: str) -> list[EventRow]:
        async with self.db.connect() as conn:
            return await self._events(conn, txn_id)

    @staticmethod
    async def _events(conn: AsyncConnection, txn_id: str) -> list[EventRow]:
        query = select(txn_events).where(txn_events.c.txn_id == txn_id).order_by(txn_events.c.id)
        return [
            EventRow(
                float(r.at),
                r.kind,
                r.name,
                r.from_phase,
                r.to_phase,
                r.participant,
                r.vote,
                r.detail,
                r.replica,
            )
            for r in await conn.execute(query)
        ]

    async def audit_entries(self, txn_id: str | None = None) -> list[AuditEntry]:
        query = select(audit).order_by(audit.c.id)
        if txn_id is not None:
            query = query.where(audit.c.txn_id == txn_id)
        async with self.db.connect() as conn:
            return [
                AuditEntry(r.txn_id, float(r.at), r.action, r.actor, r.reason)
                for r in await conn.execute(query)
            ]

    async def list_records(
        self, *, now: float, in_doubt: bool = False, stuck_for: float | None = None, limit: int = 100
    ) -> list[TxnRecord]:
        query = select(txns).order_by(txns.c.created_at).limit(limit)
        if in_doubt:
            query = query.where(txns.c.phase.in_([phase.value for phase in IN_DOUBT_PHASES]))
        if stuck_for is not None:
            query = query.where(txns.c.phase.in_(OPEN_PHASES), txns.c.updated_at <= now - stuck_for)
        async with self.db.connect() as conn:
            return [_record(row) for row in await conn.execute(query)]

    async def phase_counts(self) -> dict[str, int]:
        query = select(txns.c.phase, func.count()).group_by(txns.c.phase)
        async with self.db.connect() as conn:
            return {str(phase): int(count) for phase, count in await conn.execute(query)}

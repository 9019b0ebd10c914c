"""Group commit of coordinator writes on the real PostgreSQL: the set-based statements
keep every rule of the one-at-a-time ones (creation once, lease fencing, busy leases,
history only for writes that landed), and a claim never waits behind another batch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from trading_system.coordinator import protocol as p
from trading_system.coordinator.group_commit import GroupCommitter
from trading_system.coordinator.sql_store import SqlStore, migrate_coordinator, txn_events, txns
from trading_system.coordinator.store import LeaseBusyError, LeaseLostError
from trading_system.matching.core import Side
from trading_system.pipeline.orders import OrderRequest
from trading_system.storage import create_engine

pytestmark = pytest.mark.integration

TIMEOUTS = p.PhaseTimeouts()
TTL = 30.0
N = 30


@pytest_asyncio.fixture(loop_scope="function")
async def db(postgres_dsn: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_dsn)
    await migrate_coordinator(engine)
    yield engine
    await engine.dispose()


def orders(n: int) -> list[OrderRequest]:
    run = uuid.uuid4().hex[:8]
    return [OrderRequest(f"gc-{run}-{i}", "alice", "BTC-USD", Side.BUY, 1, 100) for i in range(n)]


async def history(db: AsyncEngine, txn_id: str) -> list[str]:
    async with db.connect() as conn:
        query = select(txn_events.c.name).where(txn_events.c.txn_id == txn_id).order_by(txn_events.c.id)
        return [str(name) for name in (await conn.execute(query)).scalars()]


async def test_batched_writes_keep_the_store_rules(db: AsyncEngine) -> None:
    one = SqlStore(db, GroupCommitter(db, writers=2))
    two = SqlStore(db, GroupCommitter(db, writers=2))
    try:
        now = 1_000.0
        placed = orders(N)
        new = [p.Transaction.new(f"txn-{o.order_id}", ("ledger", "risk"), "r1", now) for o in placed]
        pairs = list(zip(new, placed, strict=True))
        assert all(await asyncio.gather(*(one.create(t, o, "r1", now, TTL, None) for t, o in pairs)))
        # A redelivered request on the other replica creates nothing, and no second history row.
        assert not any(await asyncio.gather(*(two.create(t, o, "r2", now, TTL, None) for t, o in pairs)))

        begun = [p.apply(t, p.Begin(now), TIMEOUTS).transaction for t in new]
        steps = list(zip(new, begun, strict=True))
        lost = await asyncio.gather(
            *(two.save(t, b, "r2", now, TTL, False, None) for t, b in steps), return_exceptions=True
        )
        assert all(isinstance(x, LeaseLostError) for x in lost)  # r1 holds the leases
        await asyncio.gather(*(one.save(t, b, "r1", now, TTL, True, None) for t, b in steps))

        claims = await asyncio.gather(*(two.claim(t.txn_id, "r2", now, TTL) for t in new))
        assert all(c is not None and not c.taken_over for c in claims)
        assert {c.transaction.phase for c in claims if c is not None} == {p.Phase.CAN_COMMIT}
        busy = await asyncio.gather(
            *(one.claim(t.txn_id, "r1", now, TTL) for t in new), return_exceptions=True
        )
        assert all(isinstance(x, LeaseBusyError) for x in busy)
        assert await one.claim("txn-unknown-" + uuid.uuid4().hex, "r1", now, TTL) is None

        await asyncio.gather(*(two.release(t.txn_id, "r2") for t in new))
        await asyncio.gather(*(two.mark_published(t.txn_id) for t in new))
        record = await one.get(new[0].txn_id)
        assert record is not None and record.lease_owner is None and record.outcome_published
        assert await history(db, new[0].txn_id) == ["Created", "Begin"]
        # Batched: far fewer commits than writes.
        assert one.committer is not None and one.committer.commits < one.committer.operations
    finally:
        await one.close()
        await two.close()


async def test_a_claim_skips_a_row_another_batch_is_writing(db: AsyncEngine) -> None:
    store = SqlStore(db, GroupCommitter(db, writers=1))
    (placed,) = orders(1)
    txn = p.Transaction.new(f"txn-{placed.order_id}", ("ledger", "risk"), "r1", 1_000.0)
    try:
        assert await store.create(txn, placed, "r1", 1_000.0, TTL, None)
        await store.release(txn.txn_id, "r1")
        async with db.connect() as other:
            await other.begin()
            # Another replica's batch has written the row and not committed yet.
            await other.execute(
                update(txns).where(txns.c.txn_id == txn.txn_id).values(version=txns.c.version)
            )
            with pytest.raises(LeaseBusyError):
                await asyncio.wait_for(store.claim(txn.txn_id, "r2", 1_000.0, TTL), timeout=5.0)
            await other.rollback()
        claim = await store.claim(txn.txn_id, "r2", 1_000.0, TTL)
        assert claim is not None and claim.transaction.txn_id == txn.txn_id
    finally:
        await store.close()


async def test_two_replicas_racing_for_the_same_transactions_never_deadlock(db: AsyncEngine) -> None:
    """Claims, saves and releases of one set of transactions from two stores at once: every
    write ends with its own answer (done, busy, lost), none with a database error."""
    stores = [SqlStore(db, GroupCommitter(db, writers=2)) for _ in range(2)]
    placed = orders(20)
    new = [p.Transaction.new(f"txn-{o.order_id}", ("ledger", "risk"), "r0", 1_000.0) for o in placed]
    try:
        await asyncio.gather(
            *(stores[0].create(t, o, "r0", 1_000.0, TTL, None) for t, o in zip(new, placed, strict=True))
        )
        await asyncio.gather(*(stores[0].release(t.txn_id, "r0") for t in new))

        async def step(replica: int, txn: p.Transaction) -> str:
            owner = f"r{replica}"
            try:
                claim = await stores[replica].claim(txn.txn_id, owner, 1_000.0, TTL)
            except LeaseBusyError:
                return "busy"
            assert claim is not None
            if claim.transaction.phase is not p.Phase.INIT:  # the other replica was first
                await stores[replica].release(txn.txn_id, owner)
                return "stepped already"
            after = p.apply(claim.transaction, p.Begin(1_000.0), TIMEOUTS).transaction
            try:
                await stores[replica].save(claim.transaction, after, owner, 1_000.0, TTL, True, None)
            except LeaseLostError:
                return "lost"
            return "saved"

        answers = await asyncio.gather(*(step(r, t) for t in new for r in (0, 1)))
        assert answers.count("saved") == len(new)  # each transaction stepped exactly once
        async with db.connect() as conn:
            ids = [t.txn_id for t in new]
            stepped = await conn.execute(
                text(
                    "SELECT count(*) FROM coordinator_transactions "
                    "WHERE txn_id = ANY(:ids) AND phase = 'can_commit' AND lease_owner IS NULL"
                ),
                {"ids": ids},
            )
            assert stepped.scalar_one() == len(new)
    finally:
        for store in stores:
            await store.close()


async def test_renewing_leases_skips_a_row_a_batch_is_writing(db: AsyncEngine) -> None:
    """The renew loop must not wait for (or deadlock with) this replica's own group commit:
    the row being saved gets its lease extended by the save itself."""
    store = SqlStore(db, GroupCommitter(db, writers=1))
    placed = orders(2)
    new = [p.Transaction.new(f"txn-{o.order_id}", ("ledger", "risk"), "r1", 1_000.0) for o in placed]
    try:
        for txn, order in zip(new, placed, strict=True):
            assert await store.create(txn, order, "r1", 1_000.0, TTL, None)
        ids = [t.txn_id for t in new]
        async with db.connect() as other:
            await other.begin()
            await other.execute(update(txns).where(txns.c.txn_id == ids[0]).values(version=txns.c.version))
            renewed = await asyncio.wait_for(store.renew("r1", ids, 2_000.0, TTL), timeout=5.0)
            assert renewed == 1  # the free row; the locked one was skipped, not waited for
            await other.rollback()
        async with db.connect() as conn:
            query = select(txns.c.txn_id, txns.c.lease_expires_at).where(txns.c.txn_id.in_(ids))
            expiry = {str(r.txn_id): float(r.lease_expires_at) for r in await conn.execute(query)}
        assert expiry == {ids[0]: 1_000.0 + TTL, ids[1]: 2_000.0 + TTL}
    finally:
        await store.close()

"""The store contract and the lease rules, on the memory store and on SQL (SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from trading_system.coordinator import protocol as p
from trading_system.coordinator.group_commit import GroupCommitter
from trading_system.coordinator.sql_store import SqlStore, migrate_coordinator
from trading_system.coordinator.store import (
    AuditEntry,
    LeaseBusyError,
    LeaseLostError,
    MemoryStore,
    TransactionStore,
    is_takeover,
    lease_is_free,
)
from trading_system.matching.core import Side
from trading_system.pipeline.orders import OrderRequest
from trading_system.storage import create_engine

pytestmark = pytest.mark.unit

TIMEOUTS = p.PhaseTimeouts(init=1, can_commit=2, pre_commit=3, do_commit=1, aborting=1)
ORDER = OrderRequest("o-1", "alice", "BTC-USD", Side.BUY, 2, 30_000)
T0, TTL = 1_000.0, 5.0


@pytest_asyncio.fixture(params=["memory", "sqlite", "sqlite-group-commit"], loop_scope="function")
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TransactionStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    db = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    await migrate_coordinator(db)
    sql = SqlStore(db, GroupCommitter(db) if request.param == "sqlite-group-commit" else None)
    yield sql
    await sql.close()
    await db.dispose()


def new_txn(order: OrderRequest = ORDER, at: float = T0) -> p.Transaction:
    return p.Transaction.new(f"txn-{order.order_id}", ("ledger", "risk"), "a", at)


async def begun(store: TransactionStore) -> tuple[p.Transaction, p.Transaction]:
    txn = new_txn()
    assert await store.create(txn, ORDER, "a", T0, TTL, txn.deadline(TIMEOUTS))
    after = p.apply(txn, p.Begin(T0 + 0.1), TIMEOUTS).transaction
    await store.save(txn, after, "a", T0 + 0.1, TTL, release=False, deadline=after.deadline(TIMEOUTS))
    return txn, after


def test_lease_rules() -> None:
    assert lease_is_free(None, 0.0, "a", T0)
    assert lease_is_free("a", T0 + 10, "a", T0)
    assert lease_is_free("b", T0 - 1, "a", T0)
    assert not lease_is_free("b", T0 + 1, "a", T0)
    assert is_takeover("b", "a") and not is_takeover("a", "a") and not is_takeover(None, "a")


async def test_create_is_once_per_transaction(store: TransactionStore) -> None:
    txn = new_txn()
    assert await store.create(txn, ORDER, "a", T0, TTL, None)
    assert not await store.create(txn, ORDER, "b", T0 + 1, TTL, None)
    record = await store.get(txn.txn_id)
    assert record is not None and record.order == ORDER and record.lease_owner == "a"


async def test_a_live_lease_is_busy_for_others_and_free_for_its_owner(store: TransactionStore) -> None:
    await begun(store)
    with pytest.raises(LeaseBusyError):
        await store.claim("txn-o-1", "b", T0 + 1, TTL)
    claim = await store.claim("txn-o-1", "a", T0 + 1, TTL)
    assert claim is not None and not claim.taken_over
    assert claim.transaction.phase is p.Phase.CAN_COMMIT and claim.order == ORDER


async def test_an_expired_lease_is_taken_over_and_fences_the_old_owner(store: TransactionStore) -> None:
    _, after = await begun(store)
    claim = await store.claim("txn-o-1", "b", T0 + 0.1 + TTL + 0.01, TTL)
    assert claim is not None and claim.taken_over and claim.previous_owner == "a"
    voted = p.apply(after, p.VoteCast("ledger", p.VoteValue.YES, "ok", T0 + 7), TIMEOUTS).transaction
    with pytest.raises(LeaseLostError):  # a's save after the takeover writes nothing
        await store.save(after, voted, "a", T0 + 7, TTL, release=False, deadline=voted.deadline(TIMEOUTS))
    record = await store.get("txn-o-1")
    assert record is not None and record.transaction.votes == () and record.lease_owner == "b"


async def test_a_released_lease_is_claimed_without_takeover(store: TransactionStore) -> None:
    await begun(store)
    await store.release("txn-o-1", "a")
    claim = await store.claim("txn-o-1", "b", T0 + 1, TTL)
    assert claim is not None and not claim.taken_over and claim.previous_owner is None
    await store.release("txn-o-1", "a")  # not a's any more: changes nothing
    record = await store.get("txn-o-1")
    assert record is not None and record.lease_owner == "b"


async def test_unknown_and_ended_transactions_cannot_be_claimed(store: TransactionStore) -> None:
    assert await store.claim("txn-nope", "a", T0, TTL) is None
    txn = new_txn()
    await store.create(txn, ORDER, "a", T0, TTL, None)
    aborted = p.apply(txn, p.ForceAbort("op", "test", T0 + 1), TIMEOUTS).transaction
    await store.save(txn, aborted, "a", T0 + 1, TTL, release=True, deadline=aborted.deadline(TIMEOUTS))
    assert aborted.phase is p.Phase.ABORTED
    assert await store.claim(txn.txn_id, "b", T0 + 2, TTL) is None


async def test_needing_attention_finds_due_timeouts_and_expired_leases(store: TransactionStore) -> None:
    await begun(store)  # can_commit entered at T0 + 0.1, deadline T0 + 2.1, lease until T0 + 5.1
    assert await store.needing_attention(T0 + 3, 10) == []  # due, but a's lease is live
    assert await store.needing_attention(T0 + 5.2, 10) == ["txn-o-1"]  # a's lease expired
    await store.release("txn-o-1", "a")
    assert await store.needing_attention(T0 + 2.0, 10) == []
    assert await store.needing_attention(T0 + 2.2, 10) == ["txn-o-1"]


async def test_outbox_recent_orders_and_audit(store: TransactionStore) -> None:
    txn = new_txn()
    await store.create(txn, ORDER, "a", T0, TTL, None)
    other = OrderRequest("o-2", "alice", "BTC-USD", Side.BUY, 1, 30_000)
    await store.create(new_txn(other, T0 + 0.5), other, "a", T0 + 0.5, TTL, None)
    assert await store.recent_orders("alice", T0 - 1, exclude="txn-o-1") == 1
    assert await store.recent_orders("alice", T0 + 0.6, exclude="txn-o-1") == 0
    aborted = p.apply(txn, p.ForceAbort("op", "test", T0 + 1), TIMEOUTS).transaction
    await store.save(txn, aborted, "a", T0 + 1, TTL, release=True, deadline=aborted.deadline(TIMEOUTS))
    assert await store.unpublished(T0 + 0.5, 10) == []  # too fresh: its replica announces it
    pending = await store.unpublished(T0 + 10, 10)
    assert [r.transaction.txn_id for r in pending] == ["txn-o-1"]
    await store.mark_published("txn-o-1")
    assert await store.unpublished(T0 + 10, 10) == []
    await store.record_audit(AuditEntry("txn-o-1", T0 + 1, "force_abort", "op", "test"))


async def test_sql_store_keeps_history_votes_and_audit(tmp_path: Path) -> None:
    db = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    await migrate_coordinator(db)
    assert await migrate_coordinator(db) == []  # idempotent
    store = SqlStore(db)
    try:
        _, txn = await begun(store)
        for event in (
            p.VoteCast("ledger", p.VoteValue.YES, "held 60000 USD", T0 + 0.2),
            p.VoteCast("risk", p.VoteValue.YES, "within limits", T0 + 0.3),
        ):
            after = p.apply(txn, event, TIMEOUTS).transaction
            await store.save(txn, after, "a", T0 + 0.3, TTL, release=False, deadline=after.deadline(TIMEOUTS))
            txn = after
        await store.record_audit(AuditEntry(txn.txn_id, T0 + 1, "force_commit", "op", "venue confirmed"))
        record = await store.get(txn.txn_id)
        assert record is not None and record.transaction.phase is p.Phase.PRE_COMMIT
        assert [(h.from_phase, h.to_phase) for h in record.transaction.history] == [
            (p.Phase.INIT, p.Phase.CAN_COMMIT),
            (p.Phase.CAN_COMMIT, p.Phase.CAN_COMMIT),
            (p.Phase.CAN_COMMIT, p.Phase.PRE_COMMIT),
        ]
        votes = [
            (e.participant, e.vote, e.detail) for e in await store.events(txn.txn_id) if e.kind == "vote"
        ]
        assert votes == [("ledger", "yes", "held 60000 USD"), ("risk", "yes", "within limits")]
        assert [a.action for a in await store.audit_entries(txn.txn_id)] == ["force_commit"]
        assert [r.transaction.txn_id for r in await store.list_records(now=T0 + 1, in_doubt=True)] == [
            txn.txn_id
        ]
        assert await store.list_records(now=T0 + 1, stuck_for=60) == []
        assert (await store.phase_counts()) == {"pre_commit": 1}
    finally:
        await db.dispose()


async def test_only_leases_of_work_in_progress_are_renewed(store: TransactionStore) -> None:
    """A step that died holding its lease (its database call failed) must not keep the
    lease alive through the replica's renewals: it expires and a sweep takes over."""
    txn, _ = await begun(store)
    assert await store.renew("a", set(), T0 + 1, TTL) == 0
    assert await store.needing_attention(T0 + 0.1 + TTL + 1, 10) == [txn.txn_id]
    assert await store.renew("a", {txn.txn_id}, T0 + 1, TTL) == 1
    assert await store.needing_attention(T0 + 1 + TTL - 0.5, 10) == []
    assert await store.renew("b", {txn.txn_id}, T0 + 2, TTL) == 0  # not b's lease

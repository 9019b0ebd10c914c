"""Group commit of coordinator writes (SQLite): one commit for many callers, each its answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import Column, MetaData, Table, Text, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from trading_system.coordinator import protocol as p
from trading_system.coordinator.bulk import Write, rounds
from trading_system.coordinator.group_commit import Batch, GroupCommitter
from trading_system.coordinator.sql_store import SqlStore, migrate_coordinator, txn_events
from trading_system.coordinator.store import LeaseLostError
from trading_system.matching.core import Side
from trading_system.pipeline.orders import OrderRequest
from trading_system.storage import create_engine

pytestmark = pytest.mark.unit

TIMEOUTS = p.PhaseTimeouts()
T0, TTL = 1_000.0, 5.0
meta = MetaData()
rows = Table("gc_rows", meta, Column("key", Text, primary_key=True), Column("value", Text))


@pytest_asyncio.fixture(loop_scope="function")
async def db(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'gc.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(meta.create_all)
    await migrate_coordinator(engine)
    yield engine
    await engine.dispose()


async def count(db: AsyncEngine) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(rows))).scalar_one())


Operation = Callable[[Batch], Awaitable[object]]


def put(key: str, value: str = "v") -> Operation:
    async def operation(batch: Batch) -> str:
        await batch.conn.execute(rows.insert().values(key=key, value=value))
        return key

    return operation


class Refused(RuntimeError):
    pass


def refuse(key: str) -> Operation:
    async def operation(batch: Batch) -> None:
        raise Refused(key)

    return operation


async def test_concurrent_writes_share_commits_and_each_gets_its_result(db: AsyncEngine) -> None:
    committer = GroupCommitter(db, writers=1)
    try:
        results = await asyncio.gather(*(committer.run(f"k{i}", put(f"k{i}")) for i in range(40)))
        assert results == [f"k{i}" for i in range(40)]
        assert await count(db) == 40
        assert committer.operations == 40
        assert committer.commits < 40  # batched: fewer commits than writes
    finally:
        await committer.close()


async def test_a_refusal_answers_its_caller_and_the_rest_commits(db: AsyncEngine) -> None:
    committer = GroupCommitter(db, writers=1)
    try:
        outcomes = await asyncio.gather(
            committer.run("a", put("a")),
            committer.run("b", refuse("b")),
            committer.run("c", put("c")),
            return_exceptions=True,
        )
        assert outcomes[0] == "a" and outcomes[2] == "c"
        assert isinstance(outcomes[1], Refused)
        assert await count(db) == 2
    finally:
        await committer.close()


async def test_a_database_error_fails_only_its_own_write(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await conn.execute(rows.insert().values(key="taken", value="v"))
    committer = GroupCommitter(db, writers=1)
    try:
        outcomes = await asyncio.gather(
            committer.run("a", put("a")),
            committer.run("taken", put("taken")),  # primary key violation: the batch rolls back
            committer.run("z", put("z")),
            return_exceptions=True,
        )
        assert outcomes[0] == "a" and outcomes[2] == "z"
        assert isinstance(outcomes[1], Exception) and "UNIQUE" in str(outcomes[1]).upper()
        assert await count(db) == 3  # taken, a, z: retried one by one, nothing lost
    finally:
        await committer.close()


async def test_one_key_keeps_its_order_within_a_batch(db: AsyncEngine) -> None:
    committer = GroupCommitter(db, writers=1)
    seen: list[str] = []

    def note(label: str) -> Operation:
        async def operation(batch: Batch) -> None:
            seen.append(label)

        return operation

    try:
        await asyncio.gather(
            committer.run("b", note("b1")),
            committer.run("a", note("a1")),
            committer.run("b", note("b2")),
            committer.run("a", note("a2")),
        )
        # Sorted by key (one lock order for every batch), each key in submission order.
        assert seen.index("a1") < seen.index("a2") and seen.index("b1") < seen.index("b2")
    finally:
        await committer.close()


async def test_deferred_rows_land_with_the_batch(db: AsyncEngine) -> None:
    committer = GroupCommitter(db, writers=1)

    def later(key: str) -> Operation:
        async def operation(batch: Batch) -> None:
            batch.later(rows, [{"key": key, "value": "later"}])

        return operation

    try:
        await asyncio.gather(*(committer.run(k, later(k)) for k in ("x", "y")))
        assert await count(db) == 2
    finally:
        await committer.close()


async def test_close_fails_waiting_callers_instead_of_hanging(db: AsyncEngine) -> None:
    committer = GroupCommitter(db, writers=1)
    gate, started = asyncio.Event(), asyncio.Event()

    async def slow(batch: Batch) -> None:
        started.set()
        await gate.wait()

    first = asyncio.create_task(committer.run("a", slow))
    second = asyncio.create_task(committer.run("b", put("b")))
    await started.wait()  # both were queued before the writer ran: one batch, stuck on "a"
    await committer.close()
    for task in (first, second):
        with pytest.raises(RuntimeError):
            await task


def test_rounds_put_one_write_per_transaction_in_each_round() -> None:
    writes = [Write("save", "t1"), Write("save", "t2"), Write("release", "t1"), Write("claim", "t1")]
    assert rounds(writes) == [[0, 1], [2], [3]]


async def test_store_saves_share_commits_and_a_lost_lease_writes_nothing(db: AsyncEngine) -> None:
    store = SqlStore(db, GroupCommitter(db, writers=1))
    try:
        orders = [OrderRequest(f"o{i}", "alice", "BTC-USD", Side.BUY, 1, 100) for i in range(10)]
        txns = [p.Transaction.new(f"txn-{o.order_id}", ("ledger", "risk"), "a", T0) for o in orders]
        created = await asyncio.gather(
            *(
                store.create(t, o, "a", T0, TTL, t.deadline(TIMEOUTS))
                for t, o in zip(txns, orders, strict=True)
            )
        )
        assert all(created)
        begun = [p.apply(t, p.Begin(T0), TIMEOUTS).transaction for t in txns]
        outcomes = await asyncio.gather(
            *(
                store.save(t, b, "a" if i else "b", T0, TTL, True, b.deadline(TIMEOUTS))
                for i, (t, b) in enumerate(zip(txns, begun, strict=True))
            ),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], LeaseLostError)  # "b" never held it
        assert outcomes[1:] == [None] * 9
        async with db.connect() as conn:
            names = (
                await conn.execute(select(txn_events.c.name).where(txn_events.c.txn_id == "txn-o0"))
            ).scalars()
            assert list(names) == ["Created"]  # the refused save left no history row
        record = await store.get("txn-o1")
        assert record is not None and record.transaction.phase is p.Phase.CAN_COMMIT
        assert record.lease_owner is None
    finally:
        await store.close()

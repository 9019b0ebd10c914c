"""Active + standby on one PostgreSQL journal: load, promotion, fencing, digest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.unit.matching_service.helpers import (
    SPECS,
    RecordingPublisher,
    command_stream,
    eventually,
    replay_digest,
    take,
)
from trading_system.matching.service import EngineRunner, Journal, NotActiveError, Role
from trading_system.matching.service.journal import matching_journal
from trading_system.storage import create_engine
from trading_system.storage.fencing import FencedError, raise_epoch

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="function")
async def db(postgres_dsn: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_dsn, pool_size=10)
    yield engine
    await engine.dispose()


async def journal_rows(db: AsyncEngine) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(matching_journal))).scalar_one())


async def test_promotion_under_load_fences_the_old_active(db: AsyncEngine) -> None:
    journal = Journal(db, "m1")
    await journal.migrate()
    await raise_epoch(db, journal.pair_name, 1, "node-a")
    active_pub, standby_pub = RecordingPublisher(), RecordingPublisher()
    active = EngineRunner(
        journal, active_pub, role=Role.ACTIVE, epoch=1, specs=SPECS, holder="node-a", snapshot_every=500
    )
    standby = EngineRunner(Journal(db, "m1"), standby_pub, role=Role.STANDBY, specs=SPECS, holder="node-b")
    await standby.recover()
    stream = command_stream(seed=21)
    stop_tail = asyncio.Event()
    tail = asyncio.create_task(standby.run_standby(stop_tail, interval=0.01))
    fenced = asyncio.Event()
    acked: list[int] = []

    async def load() -> None:
        while True:
            try:
                result = await active.submit(take(stream, 50))
            except FencedError:
                fenced.set()
                return
            acked.extend(result.appended)
            await asyncio.sleep(0)

    loader = asyncio.create_task(load())

    await eventually(
        lambda: standby.applied_seq >= 1000, within=60
    )  # the standby keeps up while the active runs
    await standby.promote(2)
    await asyncio.wait_for(fenced.wait(), 30)
    await asyncio.wait_for(loader, 5)
    stop_tail.set()
    await asyncio.wait_for(tail, 5)

    assert active.role is Role.FENCED and standby.role is Role.ACTIVE
    head = await journal.head()
    assert standby.applied_seq == head and set(acked) <= set(range(1, head + 1))
    # The old active can no longer write: its next append fails and writes nothing.
    rows = await journal_rows(db)
    with pytest.raises(FencedError):
        await journal.append(take(stream, 10), 1)
    with pytest.raises(NotActiveError):
        await active.submit(take(stream, 10))
    assert await journal_rows(db) == rows == head

    # The promoted member continues the same sequence under the new epoch.
    for _ in range(5):
        await standby.submit(take(stream, 40))
    head = await journal.head()
    assert head == rows + 200
    digest, last = await replay_digest(journal)
    assert last == head and standby.engine.digest() == digest

    keys = active_pub.keys + standby_pub.keys
    assert len(keys) == len(set(keys)), "an (epoch, seq) was published twice"
    assert {s for _, s in keys} == set(range(1, head + 1)), (
        "a journaled command's events were never published"
    )
    async with db.connect() as conn:
        epochs = (
            await conn.execute(
                select(
                    matching_journal.c.epoch,
                    func.min(matching_journal.c.seq),
                    func.max(matching_journal.c.seq),
                )
                .group_by(matching_journal.c.epoch)
                .order_by(matching_journal.c.epoch)
            )
        ).all()
    assert [e.epoch for e in epochs] == [1, 2] and epochs[0][2] < epochs[1][1]

    # Rebuild from snapshot + tail gives the same book.
    fresh = EngineRunner(Journal(db, "m1"), RecordingPublisher(), specs=SPECS)
    await fresh.recover()
    assert fresh.engine.digest() == digest and fresh.applied_seq == head


async def test_concurrent_appends_of_a_stale_writer_never_interleave(db: AsyncEngine) -> None:
    """raise_epoch waits for in-flight appends (FOR SHARE); after it, none succeeds."""
    journal = Journal(db, "m2")
    await journal.migrate()
    await raise_epoch(db, journal.pair_name, 1, "a")
    stream = command_stream(seed=2, prefix="w")
    results: list[str] = []

    async def writer() -> None:
        for _ in range(40):
            try:
                await journal.append(take(stream, 20), 1)
                results.append("ok")
            except FencedError:
                results.append("fenced")
                return

    task = asyncio.create_task(writer())

    await eventually(lambda: len(results) >= 5, within=30, interval=0.005)
    await raise_epoch(db, journal.pair_name, 2, "b")
    head_at_raise = await journal.head()
    await asyncio.wait_for(task, 30)
    assert results[-1] == "fenced" and await journal.head() == head_at_raise
    new = await journal.append(take(stream, 3), 2)
    assert [e.seq for e in new.new] == [head_at_raise + 1, head_at_raise + 2, head_at_raise + 3]

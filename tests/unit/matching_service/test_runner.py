"""EngineRunner on SQLite: ordering, fencing, standby catch-up and promotion."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.unit.matching_service.helpers import SPECS, RecordingPublisher, command_stream, replay_digest, take
from trading_system.matching.service import EngineRunner, EventBatch, Journal, NotActiveError, Role
from trading_system.matching.service.metrics import MatchingMetrics
from trading_system.storage.fencing import FencedError, raise_epoch

pytestmark = pytest.mark.unit


def runner(
    journal: Journal, publisher: RecordingPublisher, role: Role = Role.ACTIVE, epoch: int = 1, **kw: object
) -> EngineRunner:
    return EngineRunner(journal, publisher, role=role, epoch=epoch, specs=SPECS, **kw)  # type: ignore[arg-type]


async def test_ack_only_after_journal_and_publish(journal: Journal) -> None:
    seen: list[tuple[int, int]] = []

    async def publisher(batch: EventBatch) -> None:
        # When the publisher runs, the commands are already journaled.
        seen.append((await journal.head(), batch.entries[-1].seq))
        gate.set()
        await release.wait()

    gate, release = asyncio.Event(), asyncio.Event()
    r = EngineRunner(journal, publisher, role=Role.ACTIVE, epoch=1, specs=SPECS)
    task = asyncio.create_task(r.submit(take(command_stream(), 5)))
    await asyncio.wait_for(gate.wait(), 5)
    assert not task.done()  # no ack while the publish is unconfirmed
    release.set()
    result = await asyncio.wait_for(task, 5)
    assert result.appended == [1, 2, 3, 4, 5] and result.events > 0
    assert seen == [(5, 5)]


async def test_events_carry_epoch_and_seq(journal: Journal) -> None:
    pub = RecordingPublisher()
    r = runner(journal, pub)
    stream = command_stream()
    for _ in range(4):
        await r.submit(take(stream, 10))
    assert pub.keys == [(1, s) for s in range(1, 41)]
    assert pub.batches[0].engine_id == "eng-1"


async def test_fenced_error_stops_the_runner_and_publishes_nothing(journal: Journal, db: AsyncEngine) -> None:
    pub = RecordingPublisher()
    roles: list[Role] = []
    r = runner(journal, pub, on_role_change=roles.append)
    stream = command_stream()
    await r.submit(take(stream, 5))
    digest = r.engine.digest()
    await raise_epoch(db, journal.pair_name, 2, "node-b")
    with pytest.raises(FencedError):
        await r.submit(take(stream, 5))
    assert r.role is Role.FENCED and roles == [Role.FENCED]
    assert len(pub.batches) == 1 and await journal.head() == 5
    assert r.engine.digest() == digest and r.applied_seq == 5
    with pytest.raises(NotActiveError):
        await r.submit(take(stream, 1))


async def test_duplicates_are_acked_without_new_events(journal: Journal) -> None:
    pub = RecordingPublisher()
    r = runner(journal, pub)
    cmds = take(command_stream(), 6)
    await r.submit(cmds[:4])
    res = await r.submit(cmds[2:])
    assert res.appended == [5, 6] and res.duplicates == ["c3", "c4"]
    assert pub.keys == [(1, s) for s in range(1, 7)]


async def test_publish_failure_keeps_events_pending_until_redelivery(journal: Journal) -> None:
    pub = RecordingPublisher()
    r = runner(journal, pub)
    cmds = take(command_stream(), 8)
    await r.submit(cmds[:4])
    pub.fail = ConnectionError("broker down")
    with pytest.raises(ConnectionError):
        await r.submit(cmds[4:6])
    assert r.pending_events == 2 and await journal.head() == 6
    pub.fail = None
    res = await r.submit(cmds[4:])  # redelivery of the unacked commands plus new ones
    assert res.duplicates == ["c5", "c6"] and res.appended == [7, 8]
    assert pub.keys == [(1, s) for s in range(1, 9)]  # each (epoch, seq) exactly once


async def test_restart_at_the_same_epoch_republishes_what_was_never_confirmed(journal: Journal) -> None:
    """The active crashes after journaling a batch whose events were never confirmed; the
    same member restarted at the same epoch publishes exactly those (epoch, seq) keys."""
    pub = RecordingPublisher()
    crashed = runner(journal, pub, holder="node-a")
    cmds = take(command_stream(), 10)
    await crashed.submit(cmds[:6])
    pub.fail = ConnectionError("killed before the confirm")
    with pytest.raises(ConnectionError):
        await crashed.submit(cmds[6:8])
    assert await journal.head() == 8 and pub.keys == [(1, s) for s in range(1, 7)]

    restarted_pub = RecordingPublisher()
    restarted = runner(journal, restarted_pub, role=Role.STANDBY, epoch=0, holder="node-a")
    await restarted.recover()
    await restarted.promote(1)  # same epoch, same holder: a restart, not a takeover
    assert restarted.role is Role.ACTIVE and restarted.epoch == 1
    assert restarted_pub.keys == [(1, 7), (1, 8)]
    res = await restarted.submit(cmds[6:])  # the broker redelivers the unacked commands
    assert res.duplicates == [c.cmd_id for c in cmds[6:8]] and res.appended == [9, 10]
    assert restarted_pub.keys == [(1, s) for s in range(7, 11)]
    assert restarted.engine.digest() == (await replay_digest(journal))[0]


async def test_restart_at_the_same_epoch_by_another_holder_is_fenced(journal: Journal) -> None:
    r = runner(journal, RecordingPublisher(), role=Role.STANDBY, epoch=0, holder="node-b")
    await r.recover()
    with pytest.raises(FencedError):
        await r.promote(1)  # epoch 1 belongs to node-a: node-b needs a higher one
    assert r.role is Role.STANDBY


async def test_standby_catches_up_and_promotion_takes_over(journal: Journal, db: AsyncEngine) -> None:
    registry = CollectorRegistry()
    active_pub, standby_pub = RecordingPublisher(), RecordingPublisher()
    active = runner(journal, active_pub, snapshot_every=50)
    standby = runner(
        Journal(db, "eng-1"),
        standby_pub,
        role=Role.STANDBY,
        epoch=0,
        metrics=MatchingMetrics.create(registry),
    )
    stream = command_stream(seed=5)
    for _ in range(6):
        await active.submit(take(stream, 20))
    assert await standby.refresh_lag() == 120
    assert await standby.catch_up() == 120
    assert standby.lag == 0 and standby.engine.digest() == active.engine.digest()
    assert registry.get_sample_value("ts_matching_applied_seq") == 120
    for _ in range(2):
        await active.submit(take(stream, 20))
    assert await standby.catch_up() == 40
    with pytest.raises(NotActiveError):
        await standby.submit(take(stream, 1))

    # The standby tails a few more entries in the background, then is promoted.
    await active.submit(take(stream, 20))
    stop = asyncio.Event()
    tail = asyncio.create_task(standby.run_standby(stop, interval=0.01))
    await standby.promote(2)
    stop.set()
    await asyncio.wait_for(tail, 5)
    assert standby.role is Role.ACTIVE and standby.epoch == 2 and standby.applied_seq == 180
    assert registry.get_sample_value("ts_matching_role") == 1
    assert registry.get_sample_value("ts_matching_epoch") == 2
    with pytest.raises(FencedError):
        await active.submit(take(stream, 5))
    await standby.submit(take(stream, 20))
    assert await journal.head() == 200
    digest, _ = await replay_digest(journal)
    assert standby.engine.digest() == digest
    # Promotion republished what the old active had not confirmed in the watermark
    # (its last batch), under the new epoch; nothing is duplicated within an epoch.
    keys = active_pub.keys + standby_pub.keys
    assert len(keys) == len(set(keys))
    assert {s for _, s in keys} == set(range(1, 201))
    with pytest.raises(FencedError):
        await standby.promote(1)  # the epoch never goes down


async def test_recover_uses_snapshot_and_tail(journal: Journal) -> None:
    pub = RecordingPublisher()
    r = runner(journal, pub, snapshot_every=40)
    stream = command_stream(seed=9)
    for _ in range(5):
        await r.submit(take(stream, 25))
    snap = await journal.latest_snapshot()
    assert snap is not None and snap.seq == 100
    fresh = runner(journal, RecordingPublisher())
    assert await fresh.recover() == 25  # only the tail after the snapshot
    assert fresh.engine.digest() == r.engine.digest() and fresh.applied_seq == 125
    # The restarted active continues the sequence; what the old process had not got
    # into the watermark is published again on its first batch.
    res = await fresh.submit(take(stream, 5))
    assert res.appended == [126, 127, 128, 129, 130]


async def test_check_epoch_fences_a_paused_active(journal: Journal, db: AsyncEngine) -> None:
    r = runner(journal, RecordingPublisher())
    await r.check_epoch()
    assert r.role is Role.ACTIVE
    await raise_epoch(db, journal.pair_name, 3, "node-c")
    await r.check_epoch()
    assert r.role is Role.FENCED

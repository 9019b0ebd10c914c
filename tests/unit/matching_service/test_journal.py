"""The journal on SQLite: append, dedup, fencing, replay == live, snapshot + tail."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.unit.matching_service.helpers import SPECS, command_stream, replay_digest, take
from trading_system.matching.core import (
    AddSymbol,
    MatchingEngine,
    NewOrder,
    OrderType,
    Side,
    SymbolSpec,
    TimeInForce,
)
from trading_system.matching.service import (
    Journal,
    command_from_dict,
    command_to_dict,
    decode_command,
    encode_command,
)
from trading_system.matching.service.journal import matching_journal
from trading_system.storage.fencing import FencedError, raise_epoch

pytestmark = pytest.mark.unit


def test_codec_round_trip() -> None:
    cmds = [
        *take(command_stream(), 50),
        NewOrder(9, 3, "X", "o", "a", Side.SELL, 5, 0, OrderType.STOP, TimeInForce.IOC, stop_price=10),
        AddSymbol("s1", 1, SymbolSpec("NEW", tick_size=2)),
    ]
    for cmd in cmds:
        back = decode_command(encode_command(cmd))
        assert back == cmd and type(back) is type(cmd)
    assert command_from_dict({**command_to_dict(cmds[0]), "side": 7})[5] == 7  # kept for the engine to reject


async def count_rows(db: AsyncEngine) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(matching_journal))).scalar_one())


async def test_append_assigns_consecutive_seqs_and_ignores_duplicates(
    journal: Journal, db: AsyncEngine
) -> None:
    cmds = take(command_stream(), 10)
    first = await journal.append(cmds[:6], 1)
    assert [e.seq for e in first.new] == [1, 2, 3, 4, 5, 6] and first.duplicates == []
    second = await journal.append([*cmds[4:], cmds[9]], 1)
    assert [e.command_id for e in second.new] == ["c7", "c8", "c9", "c10"]
    assert [e.seq for e in second.new] == [7, 8, 9, 10]
    assert second.duplicates == ["c5", "c6", "c10"]
    assert await journal.head() == 10 and await count_rows(db) == 10
    back = await journal.read_from(3, limit=4)
    assert [e.seq for e in back] == [3, 4, 5, 6]
    assert [e.command for e in back] == cmds[2:6]
    assert all(e.epoch == 1 for e in back)


async def test_stale_epoch_is_rejected_and_writes_nothing(journal: Journal, db: AsyncEngine) -> None:
    stream = command_stream()
    await journal.append(take(stream, 3), 1, published_seq=2)
    await raise_epoch(db, journal.pair_name, 2, "node-b")
    with pytest.raises(FencedError):
        await journal.append(take(stream, 3), 1, published_seq=3)
    assert await journal.head() == 3 and await journal.published_seq() == 2
    with pytest.raises(FencedError):
        await journal.append(take(stream, 1), 3)  # a future epoch is not current either
    ok = await journal.append(take(stream, 2), 2)
    assert [(e.seq, e.epoch) for e in ok.new] == [(4, 2), (5, 2)]


async def test_no_fence_row_means_fenced(db: AsyncEngine) -> None:
    j = Journal(db, "other")
    await j.migrate()
    with pytest.raises(FencedError):
        await j.append(take(command_stream(), 1), 1)


async def test_engines_have_independent_sequences(journal: Journal, db: AsyncEngine) -> None:
    other = Journal(db, "eng-2")
    await raise_epoch(db, other.pair_name, 5, "x")
    await journal.append(take(command_stream(), 3), 1)
    res = await other.append(take(command_stream(), 2), 5)  # same command ids, other engine
    assert [e.seq for e in res.new] == [1, 2]


async def test_replay_equals_live(journal: Journal) -> None:
    live = MatchingEngine(SPECS)
    stream = command_stream(seed=3)
    for _ in range(20):
        batch = take(stream, 25)
        result = await journal.append(batch, 1)
        for entry in result.new:
            live.process(entry.command)
    digest, last = await replay_digest(journal)
    assert last == 500 and digest == live.digest()


async def test_snapshot_plus_tail_rebuilds_the_same_book(journal: Journal) -> None:
    live = MatchingEngine(SPECS)
    stream = command_stream(seed=11)
    for i in range(10):
        result = await journal.append(take(stream, 30), 1)
        for entry in result.new:
            live.process(entry.command)
        if i in (3, 6):
            await journal.write_snapshot(entry.seq, 1, live.snapshot(), keep=1)
    snap = await journal.latest_snapshot()
    assert snap is not None and snap.seq == 210
    assert (await journal.latest_snapshot(at_most=200)) is None  # keep=1 pruned the older one
    rebuilt = MatchingEngine.from_snapshot(snap.state)
    async for page in journal.iterate(after=snap.seq):
        for entry in page:
            rebuilt.process(entry.command)
    assert rebuilt.digest() == live.digest() and rebuilt.seq == live.seq

"""Fencing on PostgreSQL: promotion waits for in-flight writes, then cuts the old writer off."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.unit.ledger.helpers import PAIR, World
from trading_system.ledger import FencedError, FenceToken, deposit, raise_epoch, reserve
from trading_system.storage import check_fence, read_fence

pytestmark = pytest.mark.integration


async def test_raise_epoch_waits_for_a_write_that_checked_the_old_epoch(
    pg_world: World, engine: AsyncEngine
) -> None:
    w = pg_world
    async with engine.connect() as conn:
        await conn.begin()
        await check_fence(conn, w.fence)
        await deposit(conn, w.fence, deposit_id="in-flight", account_id="alice", asset="USD", amount=1)
        promotion = asyncio.create_task(raise_epoch(engine, PAIR, 2, "standby"))
        await asyncio.sleep(0.5)
        assert not promotion.done()  # blocked on the share lock of the open write
        await conn.commit()
    state = await asyncio.wait_for(promotion, 10)
    assert state.moved and state.epoch == 2
    with pytest.raises(FencedError):
        await deposit(engine, w.fence, deposit_id="late", account_id="alice", asset="USD", amount=1)


async def test_a_zombie_writer_is_cut_off_at_promotion(pg_world: World, engine: AsyncEngine) -> None:
    """The old active keeps writing through a promotion; nothing it starts afterwards lands."""
    w = pg_world
    promoted = asyncio.Event()
    writing = asyncio.Event()
    landed: list[int] = []
    refused_after_promotion = 0

    async def zombie() -> None:
        nonlocal refused_after_promotion
        for i in range(400):
            started_after = promoted.is_set()
            try:
                await reserve(
                    engine, w.fence, hold_id=f"z{i}", account_id="bob", asset="BTC", amount=1, order_qty=1
                )
            except FencedError:
                refused_after_promotion += 1
                if refused_after_promotion >= 20:
                    return
                continue
            assert not started_after, "a write that began after the promotion committed"
            landed.append(i)
            if len(landed) == 10:
                writing.set()

    task = asyncio.create_task(zombie())
    # Promote while the zombie is writing (a reserve is one short statement: a fixed
    # sleep could let all of them finish before the promotion).
    await asyncio.wait_for(writing.wait(), 30)
    await raise_epoch(engine, PAIR, 2, "standby")
    promoted.set()
    await asyncio.wait_for(task, 60)
    assert landed and refused_after_promotion == 20
    async with engine.connect() as conn:
        holds = (await conn.execute(text("SELECT count(*) FROM holds WHERE hold_id LIKE 'z%'"))).scalar_one()
        stale = (
            await conn.execute(text("SELECT count(*) FROM entries WHERE epoch = 1 AND ref LIKE 'z%'"))
        ).scalar_one()
    assert holds == stale == len(landed)
    state = await read_fence(engine, PAIR)
    assert state is not None and (state.epoch, state.holder) == (2, "standby")
    # The new holder writes normally.
    await reserve(
        engine, FenceToken(PAIR, 2), hold_id="new", account_id="bob", asset="BTC", amount=1, order_qty=1
    )


async def test_concurrent_promotions_leave_the_highest_epoch(pg_world: World, engine: AsyncEngine) -> None:
    async def promote(epoch: int) -> None:
        with contextlib.suppress(FencedError):
            await raise_epoch(engine, PAIR, epoch, f"member-{epoch}")

    await asyncio.gather(*(promote(e) for e in (5, 3, 9, 2, 7, 9, 4)))
    state = await read_fence(engine, PAIR)
    assert state is not None and (state.epoch, state.holder) == (9, "member-9")

"""The driver over a shared store: takeover of a dead replica's lease, busy leases, duplicates."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.unit.bus.support import eventually
from tests.unit.coordinator.world import SPECS, TIMEOUTS, World, order
from trading_system.coordinator import protocol as p
from trading_system.coordinator.store import MemoryStore
from trading_system.ledger import HoldState, get_hold
from trading_system.pipeline.coordinator import PARTICIPANTS, CoordinatorDriver, venue_events
from trading_system.pipeline.venue import VenueAdapter

pytestmark = pytest.mark.unit


@pytest_asyncio.fixture(loop_scope="function")
async def world(tmp_path: Path) -> AsyncIterator[World]:
    world = await World.start(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    yield world
    await world.close()


async def test_a_replica_takes_over_an_expired_lease_and_resumes(world: World) -> None:
    venue = VenueAdapter(world.bus, SPECS)
    await venue.start()
    # Replica "dead" persisted CAN_COMMIT ten seconds ago (lease ttl 1 s) and then vanished.
    then = time.time() - 10
    txn = p.Transaction.new("txn-o-1", PARTICIPANTS, "dead", then)
    assert await world.store.create(txn, order("o-1"), "dead", then, 1.0, None)
    begun = p.apply(txn, p.Begin(then), TIMEOUTS).transaction
    await world.store.save(txn, begun, "dead", then, 1.0, release=False, deadline=begun.deadline(TIMEOUTS))

    taken: list[str | None] = []
    driver = world.driver("alive")
    driver.hooks.on_takeover = lambda _txn, previous: taken.append(previous)
    await driver.start(await_events=True)
    try:

        async def committed() -> bool:
            record = await world.store.get("txn-o-1")
            return record is not None and record.transaction.phase is p.Phase.COMMITTED

        await eventually(committed, within=5.0, what="committed after the takeover")
        assert taken == ["dead"] and driver.stats.takeovers == 1
        record = await world.store.get("txn-o-1")
        assert record is not None and record.lease_owner is None
        assert "LeaseAcquired" in [h.event for h in record.transaction.history]
        hold = await get_hold(world.db, "txn-o-1")
        assert hold is not None and hold.state is HoldState.BOUND
    finally:
        await driver.stop()


async def test_an_event_waits_for_a_live_lease_and_then_applies(world: World) -> None:
    placer = world.driver("a")
    placed = await placer.place(order("o-2"))
    assert placed is not None and placed.phase is p.Phase.PRE_COMMIT
    # "a" is mid-step on the transaction (its lease is live): "b" cannot apply the accept.
    assert await world.store.claim("txn-o-2", "a", time.time(), 30.0) is not None
    other = world.driver("b")
    assert await other.drive("txn-o-2", p.VenueAccepted(time.time())) is None
    record = await world.store.get("txn-o-2")
    assert record is not None and record.transaction.phase is p.Phase.PRE_COMMIT
    await world.store.release("txn-o-2", "a")
    after = await other.drive("txn-o-2", p.VenueAccepted(time.time()))
    assert after is not None and after.phase is p.Phase.COMMITTED
    assert other.stats.takeovers == 0


async def test_a_due_timeout_aborts_and_compensates(world: World) -> None:
    driver = world.driver("a", timeouts=p.PhaseTimeouts(pre_commit=0.2))
    placed = await driver.place(order("o-3"))
    assert placed is not None and placed.phase is p.Phase.PRE_COMMIT  # no venue: no answer
    await asyncio.sleep(0.25)  # let the pre_commit deadline pass (logical time is the wall clock)
    assert await driver.fire_due_timeouts() == 1
    record = await world.store.get("txn-o-3")
    assert record is not None and record.transaction.phase is p.Phase.ABORTING  # the venue cancel is pending
    hold = await get_hold(world.db, "txn-o-3")
    # The venue may have the order, and a fill may race the cancel: the hold stays for it.
    assert hold is not None and hold.state is HoldState.RESERVED
    await driver.drive("txn-o-3", p.VenueOrderCancelled(time.time()))
    record = await world.store.get("txn-o-3")
    assert record is not None and record.transaction.phase is p.Phase.ABORTED
    # What is left of the hold is settlement's to release, in the venue's event order.
    hold = await get_hold(world.db, "txn-o-3")
    assert hold is not None and hold.state is HoldState.RESERVED


async def test_a_duplicate_placement_starts_nothing(world: World) -> None:
    driver = world.driver("a")
    assert await driver.place(order("o-4")) is not None
    assert await driver.place(order("o-4")) is None
    assert driver.stats.duplicates == 1


async def test_memory_store_duplicates_and_views() -> None:
    from trading_system.pipeline.messages import make_bus, topology

    bus = make_bus(None)
    await bus.start()
    await bus.declare(topology())

    class NoLedger:
        db = None

    driver = CoordinatorDriver(bus, NoLedger(), None, {}, store=MemoryStore())  # type: ignore[arg-type]
    try:
        assert driver.store is not None
        txn = p.Transaction.new("txn-x", PARTICIPANTS, "coordinator-0", 0.0)
        assert await driver.store.create(txn, order("x"), "coordinator-0", 0.0, 5.0, None)
        assert not await driver.store.create(txn, order("x"), "coordinator-0", 0.0, 5.0, None)
        assert driver.phases() == {} and driver.open_transactions() == []
    finally:
        await bus.close()


def test_venue_events_map_to_protocol_events() -> None:
    from trading_system.matching.core import EventKind, RejectReason

    events = (
        (1, EventKind.ACCEPTED, "BTC-USD", "a", "acct"),
        (2, EventKind.REJECTED, "new:b", "BTC-USD", "b", RejectReason.INVALID_PRICE),
        (3, EventKind.REJECTED, "new:c", "BTC-USD", "c", RejectReason.DUPLICATE_ORDER_ID),
        (4, EventKind.REJECTED, "cancel:m", "BTC-USD", "d", RejectReason.UNKNOWN_ORDER),
        (5, EventKind.CANCELLED, "BTC-USD", "e", "acct", 1, 1),
        (6, EventKind.TRADE, "BTC-USD", "f"),
    )
    found = [(txn_id, type(event).__name__) for txn_id, event in venue_events(events, 1.0)]
    assert found == [
        ("txn-a", "VenueAccepted"),
        ("txn-b", "VenueRejected"),
        ("txn-d", "VenueOrderCancelled"),
        ("txn-e", "VenueOrderCancelled"),
    ]


async def test_a_creation_whose_replica_died_is_begun_by_the_taker(world: World) -> None:
    then = time.time() - 10
    txn = p.Transaction.new("txn-o-5", PARTICIPANTS, "dead", then)
    assert await world.store.create(txn, order("o-5"), "dead", then, 1.0, txn.deadline(TIMEOUTS))
    driver = world.driver("alive")
    assert await driver.fire_due_timeouts() == 1
    record = await world.store.get("txn-o-5")
    assert record is not None and record.transaction.phase is p.Phase.PRE_COMMIT
    assert [h.event for h in record.transaction.history][:2] == ["LeaseAcquired", "Begin"]


async def test_a_step_that_fails_on_the_database_leaves_nothing_in_flight(world: World) -> None:
    """Its lease is then no longer renewed, so it expires and any replica's sweep takes over
    (before, the replica renewed it forever and the transaction stayed stuck)."""
    driver = world.driver("flaky")
    original = world.store.save
    calls = 0

    seen_in_flight: list[set[str]] = []

    async def failing_save(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        seen_in_flight.append(set(driver.in_flight))
        if calls == 2:  # the save after Begin: the database restarts right then
            raise ConnectionResetError("the database went away")
        return await original(*args, **kwargs)

    world.store.save = failing_save  # type: ignore[method-assign]
    with pytest.raises(ConnectionResetError):
        await driver.place(order("o-9"))
    assert seen_in_flight[0] == {"txn-o-9"}  # while the placement's step ran, its lease was renewable
    assert driver.in_flight == set()
    assert await world.store.renew("flaky", driver.in_flight, time.time(), 1.0) == 0


async def test_a_detached_placement_returns_once_created_and_runs_on(world: World) -> None:
    driver = world.driver("a")
    assert await driver.place_detached(order("o-10")) is True
    # Created (and so durable) when the request may be acknowledged; the rest goes on.
    assert await world.store.get("txn-o-10") is not None

    async def sent() -> bool:
        record = await world.store.get("txn-o-10")
        return record is not None and record.transaction.phase is p.Phase.PRE_COMMIT

    await eventually(sent, within=5.0, what="the detached placement reached the venue")
    assert await driver.place_detached(order("o-10")) is False
    await driver.stop()
    assert driver.stats.duplicates == 1


async def test_a_detached_event_is_saved_before_it_returns(world: World) -> None:
    placer = world.driver("a")
    assert await placer.place(order("o-11")) is not None
    steps: list[p.Phase] = []
    driver = world.driver("b")
    driver.hooks.on_saved = lambda _before, after: steps.append(after.phase)
    await driver.drive_detached("txn-o-11", p.VenueAccepted(time.time()))
    # The accept's own step is stored; the bind and the commit may still be running.
    assert steps[0] is p.Phase.DO_COMMIT
    await driver.stop()
    record = await world.store.get("txn-o-11")
    assert record is not None and record.transaction.phase is p.Phase.COMMITTED
    assert record.lease_owner is None


async def test_a_detached_event_for_an_unknown_transaction_changes_nothing(world: World) -> None:
    driver = world.driver("a")
    await driver.drive_detached("txn-unknown", p.VenueAccepted(time.time()))
    await driver.stop()
    assert await world.store.get("txn-unknown") is None

"""Active/standby on one database: a standby refuses writes and consumes nothing, a
promoted standby knows every order of the old active, and the fenced old active can no
longer change anything."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.unit.execution_service.conftest import (
    ADMIN_AUTH,
    AUTH,
    FakeClock,
    Harness,
    eventually,
    make_service,
    order_body,
    start_harness,
)
from trading_system.matching.core import EventKind
from trading_system.pipeline.messages import EVENTS_KEY, MatchingEvents

pytestmark = pytest.mark.unit


@pytest_asyncio.fixture(loop_scope="function")
async def pair(tmp_path: Path, clock: FakeClock) -> AsyncIterator[tuple[Harness, Harness]]:
    from trading_system.execution.service.app import Role

    db = tmp_path / "pair.db"
    active_service, reg_a = make_service(db, Role.ACTIVE, 1, clock, holder="a")
    active = await start_harness(active_service, clock, reg_a)
    standby_service, reg_b = make_service(db, Role.STANDBY, 0, clock, holder="b")
    standby = await start_harness(standby_service, clock, reg_b)
    yield active, standby
    for h in (active, standby):
        await h.client.close()
        await h.service.stop()


async def ready(h: Harness) -> tuple[int, dict[str, Any]]:
    resp = await h.client.get("/readyz")
    return resp.status, await resp.json()


async def test_standby_refuses_writes_and_does_not_consume(pair: tuple[Harness, Harness]) -> None:
    _, standby = pair
    for path, body in [
        ("/orders", order_body()),
        ("/orders/cancel-all", {"account": "alice"}),
        ("/parent-orders", {"client_order_id": "p"}),
        ("/orders/x/cancel", None),
        ("/orders/x/replace", {"client_order_id": "y", "qty": 1}),
        ("/parent-orders/x/cancel", None),
    ]:
        resp = await standby.client.post(path, json=body, headers=AUTH)
        answer = await resp.json()
        assert resp.status == 503, (path, answer)
        assert "standby" in answer["error"] and answer["role"] == "standby"
    status, body = await ready(standby)
    assert status == 200 and (body["role"], body["epoch"], body["consuming"]) == ("standby", 0, False)
    names = standby.service.names
    await standby.service.bus.publish(
        MatchingEvents(venue="v", events=((1, EventKind.BBO, "BTC-USD", 1, 1, 3, 1),)),
        exchange=names.exchange,
        routing_key=EVENTS_KEY,
    )
    depths = await standby.service.bus.queue_depths()
    assert depths[names.execution] == 1 and standby.service.book.mid("BTC-USD") is None
    assert await standby.service.store.count() == 0


async def test_promoted_standby_serves_old_active_orders_and_fences_it(pair: tuple[Harness, Harness]) -> None:
    active, standby = pair
    ids = []
    for cid in ("a", "b", "c"):
        resp = await active.client.post("/orders", json=order_body(cid), headers=AUTH)
        ids.append((await resp.json())["order_id"])
    # The standby follows the database on its refresh timer; its lag drops to zero.
    await eventually(lambda: len(standby.service.book.orders) == 3)
    status, body = await ready(standby)
    assert body["lag"] == 0 and body["orders"] == 3

    resp = await standby.client.post("/promote", json={"epoch": 2})
    assert resp.status == 401
    resp = await standby.client.post("/promote", json={"epoch": 2}, headers=ADMIN_AUTH)
    assert resp.status == 200 and await resp.json() == {"role": "active", "epoch": 2}
    status, body = await ready(standby)
    assert (status, body["role"], body["epoch"], body["consuming"]) == (200, "active", 2, True)
    for oid in ids:
        resp = await standby.client.get(f"/orders/{oid}", headers=AUTH)
        assert resp.status == 200 and (await resp.json())["status"] == "pending"
    # Placements the old active may not have published are sent again (idempotent downstream).
    await eventually(lambda: {p.order_id for p in standby.placements()} == set(ids))
    resp = await standby.client.post("/orders", json=order_body("a"), headers=AUTH)
    assert resp.status == 409  # the client id is known to the new active too
    resp = await standby.client.post("/orders", json=order_body("d"), headers=AUTH)
    assert resp.status == 201

    # The old active's writes are refused by the fence; it turns fenced.
    resp = await active.client.post("/orders", json=order_body("e"), headers=AUTH)
    answer = await resp.json()
    assert resp.status == 503 and "fenced" in answer["error"], answer
    assert active.service.role.value == "fenced"
    status, body = await ready(active)
    assert status == 503 and body["role"] == "fenced"
    resp = await active.client.post(f"/orders/{ids[0]}/cancel", headers=AUTH)
    assert resp.status == 503
    assert await standby.service.store.count() == 4
    records, _ = await standby.service.store.load()
    assert "e" not in {r.client_order_id for r in records}
    assert all(not r.cancel_requested for r in records)


async def test_old_active_event_writes_are_refused(pair: tuple[Harness, Harness]) -> None:
    active, standby = pair
    resp = await active.client.post("/orders", json=order_body("a"), headers=AUTH)
    oid = (await resp.json())["order_id"]
    # The old active does not check the epoch on its own here (a paused process): only the
    # fence row in the write itself can stop it.
    for task in active.service._tasks:
        task.cancel()
    await standby.service.promote(2)
    names = active.service.names
    await active.service.bus.publish(
        MatchingEvents(
            venue="v", events=((5, EventKind.TRADE, "BTC-USD", 100, 10, 1, oid, "alice", 0, "m", "x", 0),)
        ),
        exchange=names.exchange,
        routing_key=EVENTS_KEY,
    )
    await eventually(lambda: active.service.role.value == "fenced")
    assert active.service.book.orders[oid].state.filled_qty == 10  # applied in memory, then refused
    records, _ = await standby.service.store.load()
    assert [(r.status.value, r.state.filled_qty) for r in records] == [("pending", 0)]


async def test_watch_fences_an_idle_active(pair: tuple[Harness, Harness]) -> None:
    active, standby = pair
    await standby.service.promote(3)
    await eventually(lambda: active.service.role.value == "fenced")
    status, body = await ready(active)
    assert (status, body["consuming"]) == (503, False)

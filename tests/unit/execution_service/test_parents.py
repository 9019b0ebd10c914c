"""Parent orders: child timing under a controlled clock, progress, slippage, cancel."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.execution_service.conftest import AUTH, Harness, eventually
from trading_system.execution.service import models as m
from trading_system.matching.core import EventKind
from trading_system.pipeline.messages import EVENTS_KEY, MatchingEvents

pytestmark = pytest.mark.unit


def parent_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "client_order_id": "p1",
        "account": "alice",
        "symbol": "BTC-USD",
        "side": "buy",
        "qty": 10,
        "price": 200,
        "strategy": "twap",
        "slices": 5,
        "duration_seconds": 60,
    }
    body.update(overrides)
    return body


async def create(h: Harness, body: dict[str, Any]) -> dict[str, Any]:
    resp = await h.client.post("/parent-orders", json=body, headers=AUTH)
    answer: dict[str, Any] = await resp.json()
    assert resp.status == 201, answer
    m.ParentOut.model_validate(answer)
    return answer


def child_qtys(h: Harness, parent_id: str) -> list[tuple[str, int]]:
    return [(p.order_id, int(p.qty)) for p in h.placements() if p.order_id.startswith(parent_id)]


async def test_twap_releases_children_on_the_clock(harness: Harness) -> None:
    h = harness
    parent = await create(h, parent_body())
    pid = parent["parent_id"]
    assert [s["at"] - h.clock.now for s in parent["schedule"]] == [0, 12, 24, 36, 48]
    assert parent["slices_released"] == 1 and parent["released_qty"] == 2  # the first one is due at once
    await eventually(lambda: len(child_qtys(h, pid)) == 1)
    h.clock.advance(11.9)
    assert await h.service.tick_parents() == 0
    h.clock.advance(0.1)
    assert await h.service.tick_parents() == 1
    h.clock.advance(30)
    assert await h.service.tick_parents() == 2  # slices at 24 and 36
    h.clock.advance(100)
    assert await h.service.tick_parents() == 1
    assert await h.service.tick_parents() == 0
    await eventually(lambda: len(child_qtys(h, pid)) == 5)
    assert child_qtys(h, pid) == [(f"{pid}.{i}", 2) for i in range(5)]
    child = h.placements()[0]
    assert (child.price, child.side, child.account, child.client_order_id) == (200, "buy", "alice", "p1#0")
    resp = await h.client.get(f"/parent-orders/{pid}", headers=AUTH)
    body = await resp.json()
    assert (body["slices_released"], body["released_qty"], body["done"]) == (5, 10, False)
    assert len(body["children"]) == 5
    # The released slices are persisted with their children.
    _, parents = await h.service.store.load()
    assert parents[0].progress.released == {0, 1, 2, 3, 4}


async def test_vwap_follows_the_volume_profile(harness: Harness) -> None:
    h = harness
    body = parent_body(strategy="vwap", qty=20, volume_profile=[1, 3, 0, 6], duration_seconds=40)
    del body["slices"]
    parent = await create(h, body)
    pid = parent["parent_id"]
    start = h.clock.now
    assert [(s["at"] - start, s["qty"]) for s in parent["schedule"]] == [(0, 2), (10, 6), (30, 12)]
    h.clock.advance(10)
    assert await h.service.tick_parents() == 1
    h.clock.advance(19.99)
    assert await h.service.tick_parents() == 0
    h.clock.advance(0.01)
    assert await h.service.tick_parents() == 1
    await eventually(lambda: len(child_qtys(h, pid)) == 3)
    assert [q for _, q in child_qtys(h, pid)] == [2, 6, 12]


async def test_chunking_with_interval(harness: Harness) -> None:
    h = harness
    body = parent_body(strategy="chunk", qty=25, chunk_size=10, interval_seconds=5)
    del body["slices"], body["duration_seconds"]
    parent = await create(h, body)
    assert [s["qty"] for s in parent["schedule"]] == [10, 10, 5]
    h.clock.advance(10)
    assert await h.service.tick_parents() == 2
    await eventually(lambda: len(child_qtys(h, parent["parent_id"])) == 3)


async def test_parent_progress_slippage_and_cancel(harness: Harness) -> None:
    h = harness
    names = h.service.names
    await h.service.bus.publish(
        MatchingEvents(venue="v1", events=((1, EventKind.BBO, "BTC-USD", 190, 1, 200, 1),)),
        exchange=names.exchange,
        routing_key=EVENTS_KEY,
    )
    await eventually(lambda: h.service.book.mid("BTC-USD") == 195.0)
    parent = await create(h, parent_body(qty=6, slices=3, duration_seconds=30))
    pid = parent["parent_id"]
    assert parent["arrival_price"] == 195.0
    h.clock.advance(10)
    await h.service.tick_parents()
    fills = (
        (2, EventKind.TRADE, "BTC-USD", 200, 2, 1, f"{pid}.0", "alice", 0, "m", "mm", 0),
        (3, EventKind.TRADE, "BTC-USD", 190, 1, 1, f"{pid}.1", "alice", 1, "m", "mm", 0),
    )
    await h.service.bus.publish(
        MatchingEvents(venue="v1", events=fills), exchange=names.exchange, routing_key=EVENTS_KEY
    )
    await eventually(lambda: h.service.book.orders[f"{pid}.1"].state.filled_qty == 1)
    resp = await h.client.get(f"/parent-orders/{pid}", headers=AUTH)
    body = await resp.json()
    assert (body["filled_qty"], body["released_qty"]) == (3, 4)
    average = (2 * 200 + 190) / 3
    assert body["average_price"] == pytest.approx(average)
    assert body["slippage"]["vs_arrival_bps"] == pytest.approx((average - 195) / 195 * 1e4)
    assert body["slippage"]["vs_limit_bps"] == pytest.approx((average - 200) / 200 * 1e4)

    resp = await h.client.post(f"/parent-orders/{pid}/cancel", headers=AUTH)
    body = await resp.json()
    assert resp.status == 202 and body["cancelled"] is True and body["done"] is True
    await eventually(lambda: [c.order_id for c in h.cancels()] == [f"{pid}.1"])  # the live child
    h.clock.advance(100)
    assert await h.service.tick_parents() == 0
    resp = await h.client.post(f"/parent-orders/{pid}/cancel", headers=AUTH)
    assert resp.status == 409
    resp = await h.client.get("/parent-orders", params={"account": "alice"}, headers=AUTH)
    listed = await resp.json()
    m.ParentList.model_validate(listed)
    assert [p["parent_id"] for p in listed["parents"]] == [pid]
    _, parents = await h.service.store.load()
    assert parents[0].progress.cancelled is True


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"slices": None}, "needs slices"),
        ({"strategy": "vwap", "slices": None, "volume_profile": [0, 0]}, "positive sum"),
        ({"strategy": "chunk"}, "needs chunk_size"),
        ({"slices": 11}, "more slices than lots"),
        ({"duration_seconds": -1}, "duration_seconds"),
        ({"strategy": "iceberg"}, "strategy"),
    ],
)
async def test_invalid_parent_is_422_and_changes_nothing(
    harness: Harness, overrides: dict[str, Any], needle: str
) -> None:
    body = {k: v for k, v in parent_body(**overrides).items() if v is not None}
    resp = await harness.client.post("/parent-orders", json=body, headers=AUTH)
    answer = await resp.json()
    assert resp.status == 422 and needle in answer["error"], answer
    assert harness.service.parents == {} and harness.requests == []
    assert (await harness.service.store.load()) == ([], [])


async def test_duplicate_parent_client_id_is_409(harness: Harness) -> None:
    await create(harness, parent_body())
    resp = await harness.client.post("/parent-orders", json=parent_body(), headers=AUTH)
    assert resp.status == 409
    assert len(harness.service.parents) == 1
    resp = await harness.client.get("/parent-orders/unknown", headers=AUTH)
    assert resp.status == 404

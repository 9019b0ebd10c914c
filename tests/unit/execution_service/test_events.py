"""Order state from matching events and transaction outcomes, and slippage analytics."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.execution_service.conftest import AUTH, Harness, eventually, order_body
from trading_system.bus.catalog import TxnOutcome
from trading_system.bus.catalog.transaction import TxnResult
from trading_system.matching.core import CancelReason, EventKind, RejectReason
from trading_system.pipeline.messages import EVENTS_KEY, OUTCOME_KEY, MatchingEvents

pytestmark = pytest.mark.unit


async def feed(h: Harness, *events: tuple[Any, ...]) -> None:
    await h.service.bus.publish(
        MatchingEvents(venue="v1", events=events), exchange=h.service.names.exchange, routing_key=EVENTS_KEY
    )


async def outcome(h: Harness, order_id: str, result: TxnResult, reason: str = "") -> None:
    message = TxnOutcome(transaction_id=f"txn-{order_id}", order_id=order_id, result=result, reason=reason)
    await h.service.bus.publish(message, exchange=h.service.names.exchange, routing_key=OUTCOME_KEY)


async def order(h: Harness, order_id: str) -> dict[str, Any]:
    resp = await h.client.get(f"/orders/{order_id}", headers=AUTH)
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


def bbo(seq: int, bid: int | None, ask: int | None) -> tuple[Any, ...]:
    return (seq, EventKind.BBO, "BTC-USD", bid, 1, ask, 1)


def trade(seq: int, price: int, qty: int, taker: str, maker: str, taker_leaves: int = 0) -> tuple[Any, ...]:
    return (seq, EventKind.TRADE, "BTC-USD", price, qty, 1, taker, "alice", taker_leaves, maker, "mm", 0)


async def stored_is(h: Harness, order_id: str, wanted: tuple[str, int]) -> bool:
    """The order's (status, filled) in the table; written a moment after the book changes."""
    records, _ = await h.service.store.load()
    record = next(r for r in records if r.order_id == order_id)
    return (record.status.value, record.state.filled_qty) == wanted


async def test_partial_fill_then_fill_with_slippage(harness: Harness) -> None:
    h = harness
    await feed(h, bbo(1, 100, 110))
    await eventually(lambda: h.service.book.mid("BTC-USD") == 105.0)
    resp = await h.client.post("/orders", json=order_body(price=120), headers=AUTH)
    oid = (await resp.json())["order_id"]
    assert (await order(h, oid))["arrival_price"] == 105.0

    await outcome(h, oid, TxnResult.COMMITTED)
    await feed(
        h, (2, EventKind.ACCEPTED, "BTC-USD", oid, "alice", 1, 120, 10, 1), trade(3, 110, 4, oid, "m1", 6)
    )
    await eventually(lambda: h.service.book.orders[oid].state.filled_qty == 4)
    body = await order(h, oid)
    assert (body["status"], body["filled_qty"], body["remaining_qty"]) == ("partially_filled", 4, 6)
    await eventually(lambda: stored_is(h, oid, ("partially_filled", 4)), what="the stored state")

    await feed(h, trade(4, 115, 6, "m2", oid))  # now our order is the maker
    await eventually(lambda: h.service.book.orders[oid].state.filled_qty == 10)
    body = await order(h, oid)
    assert body["status"] == "filled" and body["average_price"] == 113.0
    first, second = body["fills"]
    assert first["trade_id"] == "v1:BTC-USD:3" and first["vs_arrival_bps"] == pytest.approx(476.190476)
    assert first["vs_limit_bps"] == pytest.approx(-833.333333)
    assert second["vs_arrival_bps"] == pytest.approx((115 - 105) / 105 * 1e4)
    assert body["slippage"]["vs_arrival_bps"] == pytest.approx((113 - 105) / 105 * 1e4)
    assert body["slippage"]["vs_limit_bps"] == pytest.approx((113 - 120) / 120 * 1e4)
    await eventually(lambda: h.metric("ts_execution_fills_total") == 2)
    await eventually(lambda: stored_is(h, oid, ("filled", 10)), what="the stored state")
    assert h.metric("ts_execution_fill_slippage_bps_count", {"reference": "arrival"}) == 2
    assert h.metric("ts_execution_fill_slippage_bps_sum", {"reference": "arrival"}) == pytest.approx(
        (110 - 105) / 105 * 1e4 + (115 - 105) / 105 * 1e4
    )

    # A redelivered trade changes nothing.
    await feed(h, trade(4, 115, 6, "m2", oid))
    await feed(h, bbo(5, 100, 120))  # same queue, in order: once seen, the redelivery was handled
    await eventually(lambda: h.service.book.mid("BTC-USD") == 110.0)
    assert (await order(h, oid))["filled_qty"] == 10 and h.metric("ts_execution_fills_total") == 2


async def test_sell_slippage_sign(harness: Harness) -> None:
    h = harness
    await feed(h, bbo(1, 100, 110))
    await eventually(lambda: h.service.book.mid("BTC-USD") == 105.0)
    resp = await h.client.post("/orders", json=order_body(side="sell", price=95, qty=2), headers=AUTH)
    oid = (await resp.json())["order_id"]
    await feed(h, trade(2, 100, 2, oid, "m1"))
    await eventually(lambda: h.service.book.orders[oid].state.filled_qty == 2)
    body = await order(h, oid)
    # Selling at 100 against a mid of 105 is a cost (+), against a limit of 95 a gain (-).
    assert body["slippage"]["vs_arrival_bps"] == pytest.approx(5 / 105 * 1e4)
    assert body["slippage"]["vs_limit_bps"] == pytest.approx(-5 / 95 * 1e4)


async def test_aborted_transaction_shows_rejected_with_reason(harness: Harness) -> None:
    h = harness
    resp = await h.client.post("/orders", json=order_body(), headers=AUTH)
    oid = (await resp.json())["order_id"]
    await outcome(h, oid, TxnResult.ABORTED, "ledger: insufficient funds")
    await eventually(lambda: h.service.book.orders[oid].status.value == "rejected")
    body = await order(h, oid)
    assert body["reason"] == "ledger: insufficient funds"
    await eventually(lambda: stored_is(h, oid, ("rejected", 0)), what="the stored state")


async def test_venue_reject_cancel_and_expiry(harness: Harness) -> None:
    h = harness
    ids = []
    for cid in ("a", "b", "c"):
        resp = await h.client.post("/orders", json=order_body(cid), headers=AUTH)
        ids.append((await resp.json())["order_id"])
    a, b, c = ids
    await feed(
        h,
        (1, EventKind.REJECTED, f"new:{a}", "BTC-USD", a, RejectReason.PRICE_OUT_OF_BAND),
        (2, EventKind.ACCEPTED, "BTC-USD", b, "alice", 1, 100, 10, 1),
        (3, EventKind.CANCELLED, "BTC-USD", b, "alice", 10, CancelReason.USER),
        (4, EventKind.ACCEPTED, "BTC-USD", c, "alice", 1, 100, 10, 1),
        (5, EventKind.EXPIRED, "BTC-USD", c, "alice", 10),
        (6, EventKind.ACCEPTED, "BTC-USD", "someone-else", "zed", 1, 100, 10, 1),
    )
    await eventually(lambda: h.service.book.orders[c].status.value == "expired")
    assert (await order(h, a))["reason"] == "venue rejected: price_out_of_band"
    assert (await order(h, b))["status"] == "cancelled" and (await order(h, b))["reason"] == "user"
    assert "someone-else" not in h.service.book.orders
    for i, wanted in zip(ids, [("rejected", 0), ("cancelled", 0), ("expired", 0)], strict=True):
        await eventually(lambda i=i, wanted=wanted: stored_is(h, i, wanted), what=f"{i} stored as {wanted}")
    # A late abort for an order the venue already ended does not change it.
    assert h.service.book.outcome(b, committed=False, reason="late") is False
    resp = await h.client.get("/orders", params={"status": "cancelled"}, headers=AUTH)
    assert [o["order_id"] for o in (await resp.json())["orders"]] == [b]


async def test_concurrent_saves_share_writes_and_a_failed_one_is_retried(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    ids = []
    for i in range(6):
        resp = await h.client.post("/orders", json=order_body(f"share-{i}"), headers=AUTH)
        ids.append((await resp.json())["order_id"])
    store = h.service.store
    real = store.save_orders
    writes: list[set[str]] = []
    fail = [True]

    async def counting(fence: Any, records: Any) -> None:
        records = list(records)
        writes.append({r.order_id for r in records})
        await asyncio.sleep(0.02)  # a commit takes time: the other callers queue up meanwhile
        if fail[0]:
            fail[0] = False
            raise RuntimeError("database hiccup")
        await real(fence, records)

    monkeypatch.setattr(store, "save_orders", counting)
    results = await asyncio.gather(*(h.service._save({oid}) for oid in ids), return_exceptions=True)
    # The first write failed (its caller hears it); the callers behind it shared the next
    # write, which also carried the failed write's orders.
    assert isinstance(results[0], RuntimeError) and all(r is None for r in results[1:])
    assert len(writes) < len(ids)
    assert set().union(*writes[1:]) == set(ids) and not h.service._dirty

"""Every endpoint of the order API: happy paths, auth, validation, duplicates, rate limits."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

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
from trading_system.execution.service import models as m
from trading_system.execution.service.app import ROUTES, Role
from trading_system.ledger import AccountKind, create_asset, deposit, migrate_ledger, open_account
from trading_system.storage.fencing import FenceToken, raise_epoch

pytestmark = pytest.mark.unit


async def submit(h: Harness, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await h.client.post("/orders", json=body, headers=AUTH)
    return resp.status, await resp.json()


async def all_orders(h: Harness) -> list[dict[str, Any]]:
    resp = await h.client.get("/orders", headers=AUTH)
    assert resp.status == 200
    return list((await resp.json())["orders"])


async def test_submit_persists_then_publishes_placement(harness: Harness) -> None:
    status, order = await submit(harness, order_body())
    assert status == 201, order
    m.OrderOut.model_validate(order)
    assert order["status"] == "pending" and order["client_order_id"] == "c1"
    await eventually(lambda: len(harness.placements()) == 1)
    placed = harness.placements()[0]
    assert placed.order_id == order["order_id"] and placed.client_order_id == "c1"
    assert (placed.account, placed.symbol, placed.side, placed.qty, placed.price) == (
        "alice",
        "BTC-USD",
        "buy",
        Decimal(10),
        Decimal(100),
    )
    assert harness.requests[0].transaction_id == f"txn-{order['order_id']}"
    stored, _ = await harness.service.store.load()
    assert [r.order_id for r in stored] == [order["order_id"]]


async def test_get_and_list_orders_with_filters(harness: Harness) -> None:
    _, a = await submit(harness, order_body("a1"))
    _, b = await submit(harness, order_body("b1", account="bob", symbol="ETH-USD", qty=20, price=7))
    resp = await harness.client.get(f"/orders/{a['order_id']}", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["client_order_id"] == "a1"
    resp = await harness.client.get("/orders", params={"account": "bob"}, headers=AUTH)
    body = await resp.json()
    m.OrderList.model_validate(body)
    assert [o["order_id"] for o in body["orders"]] == [b["order_id"]]
    resp = await harness.client.get(
        "/orders", params={"symbol": "BTC-USD", "status": "pending"}, headers=AUTH
    )
    assert [o["order_id"] for o in (await resp.json())["orders"]] == [a["order_id"]]
    resp = await harness.client.get("/orders", params={"status": "bogus"}, headers=AUTH)
    assert resp.status == 422
    resp = await harness.client.get("/orders/nope", headers=AUTH)
    assert resp.status == 404 and "nope" in (await resp.json())["error"]


async def test_auth_required_and_scoped(harness: Harness) -> None:
    resp = await harness.client.post("/orders", json=order_body())
    assert resp.status == 401 and "bearer" in (await resp.json())["error"]
    resp = await harness.client.post("/orders", json=order_body(), headers={"Authorization": "Bearer wrong"})
    assert resp.status == 403
    resp = await harness.client.get("/orders")
    assert resp.status == 401
    # The API token is not an admin token.
    resp = await harness.client.post("/promote", json={"epoch": 5}, headers=AUTH)
    assert resp.status == 403
    resp = await harness.client.post("/demote", headers=AUTH)
    assert resp.status == 403
    assert await all_orders(harness) == [] and harness.requests == []
    assert harness.service.role is Role.ACTIVE and harness.service.epoch == 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (order_body(qty=0), "qty"),
        (order_body(qty="10"), "qty"),
        (order_body(price=None), "needs a price"),
        (order_body(order_type="market"), "market order has no price"),
        (order_body(side="hold"), "side"),
        (order_body(symbol="btc"), "symbol"),
        (order_body(extra=1), "extra"),
        (order_body(time_in_force="gtd"), "time_in_force"),
        (order_body(price=101), "tick size"),
        (order_body(symbol="ETH-USD", qty=15), "lot size"),
        (order_body(symbol="XRP-USD"), "unknown symbol"),
        ({"client_order_id": "x"}, "account"),
    ],
)
async def test_invalid_orders_are_422_and_change_nothing(
    harness: Harness, body: dict[str, Any], needle: str
) -> None:
    status, answer = await submit(harness, body)
    assert status == 422, answer
    assert needle in answer["error"]
    assert await all_orders(harness) == []
    assert harness.requests == [] and await harness.service.store.count() == 0


async def test_malformed_json_is_400(harness: Harness) -> None:
    resp = await harness.client.post("/orders", data=b"{not json", headers=AUTH)
    assert resp.status == 400 and "JSON" in (await resp.json())["error"]
    assert await harness.service.store.count() == 0


async def test_duplicate_client_order_id_is_409(harness: Harness) -> None:
    status, first = await submit(harness, order_body("dup"))
    assert status == 201
    status, answer = await submit(harness, order_body("dup", qty=3))
    assert status == 409 and answer["order_id"] == first["order_id"]
    # Another account may use the same client id.
    status, _ = await submit(harness, order_body("dup", account="bob"))
    assert status == 201
    assert len(await all_orders(harness)) == 2 and await harness.service.store.count() == 2
    assert harness.metric("ts_execution_submissions_total", {"kind": "order", "outcome": "duplicate"}) == 1


async def test_rate_limit_429_with_retry_after(tmp_path: Path, clock: FakeClock) -> None:
    service, reg = make_service(tmp_path / "r.db", Role.ACTIVE, 1, clock, rate=1.0, burst=2)
    h = await start_harness(service, clock, reg)
    try:
        assert (await submit(h, order_body("r1")))[0] == 201
        assert (await submit(h, order_body("r2")))[0] == 201
        resp = await h.client.post("/orders", json=order_body("r3"), headers=AUTH)
        assert resp.status == 429 and resp.headers["Retry-After"] == "1"
        assert "rate limit" in (await resp.json())["error"]
        assert (await submit(h, order_body("b1", account="bob")))[0] == 201  # per account
        clock.advance(1.0)
        assert (await submit(h, order_body("r3")))[0] == 201
        assert len(await all_orders(h)) == 4
        assert h.metric("ts_execution_submissions_total", {"kind": "order", "outcome": "rate_limited"}) == 1
    finally:
        await h.client.close()
        await service.stop()


async def test_cancel_publishes_cancel_and_refuses_terminal(harness: Harness) -> None:
    _, order = await submit(harness, order_body())
    oid = order["order_id"]
    resp = await harness.client.post(f"/orders/{oid}/cancel", headers=AUTH)
    assert resp.status == 202 and (await resp.json())["cancel_requested"] is True
    await eventually(lambda: len(harness.cancels()) == 1)
    assert harness.cancels()[0].order_id == oid
    # The venue confirms the cancel; a second cancel is then refused.
    harness.service.book.orders[oid].state.cancel("user")
    resp = await harness.client.post(f"/orders/{oid}/cancel", headers=AUTH)
    assert resp.status == 409
    resp = await harness.client.post("/orders/missing/cancel", headers=AUTH)
    assert resp.status == 404


async def test_cancel_all_by_account_or_symbol(harness: Harness) -> None:
    ids = {}
    for cid, account, symbol in [
        ("1", "alice", "BTC-USD"),
        ("2", "alice", "ETH-USD"),
        ("3", "bob", "BTC-USD"),
    ]:
        qty = 10
        _, o = await submit(harness, order_body(cid, account=account, symbol=symbol, qty=qty, price=100))
        ids[cid] = o["order_id"]
    resp = await harness.client.post("/orders/cancel-all", json={}, headers=AUTH)
    assert resp.status == 422 and "account, a symbol" in (await resp.json())["error"]
    resp = await harness.client.post("/orders/cancel-all", json={"account": "alice"}, headers=AUTH)
    body = await resp.json()
    assert resp.status == 202 and sorted(body["cancel_requested"]) == sorted([ids["1"], ids["2"]])
    resp = await harness.client.post("/orders/cancel-all", json={"symbol": "BTC-USD"}, headers=AUTH)
    assert sorted((await resp.json())["cancel_requested"]) == sorted([ids["1"], ids["3"]])
    await eventually(lambda: len(harness.cancels()) == 4)


async def test_replace_is_cancel_plus_new(harness: Harness) -> None:
    _, old = await submit(harness, order_body("orig"))
    resp = await harness.client.post(
        f"/orders/{old['order_id']}/replace",
        json={"client_order_id": "orig-2", "qty": 4, "price": 95},
        headers=AUTH,
    )
    body = await resp.json()
    assert resp.status == 201, body
    m.ReplaceOut.model_validate(body)
    new = body["order"]
    assert body["replaced"] == old["order_id"] and new["replaces"] == old["order_id"]
    assert (new["qty"], new["price"], new["side"]) == (4, 95, "buy")
    await eventually(lambda: len(harness.placements()) == 2 and len(harness.cancels()) == 1)
    assert harness.cancels()[0].order_id == old["order_id"]
    # Replacing an order already being cancelled, or with a used client id, is refused.
    resp = await harness.client.post(
        f"/orders/{old['order_id']}/replace", json={"client_order_id": "orig-3", "qty": 4}, headers=AUTH
    )
    assert resp.status == 409
    resp = await harness.client.post(
        f"/orders/{new['order_id']}/replace", json={"client_order_id": "orig", "qty": 4}, headers=AUTH
    )
    assert resp.status == 409
    resp = await harness.client.post(
        f"/orders/{new['order_id']}/replace", json={"client_order_id": "z", "qty": -1}, headers=AUTH
    )
    assert resp.status == 422
    assert len(await all_orders(harness)) == 2


async def test_balances_and_positions_from_the_ledger(harness: Harness) -> None:
    db = harness.service.db
    await migrate_ledger(db)
    await raise_epoch(db, "ledger", 1, "test")
    fence = FenceToken("ledger", 1)
    await create_asset(db, fence, "USD", 2)
    await open_account(db, fence, "alice", AccountKind.USER)
    await deposit(db, fence, deposit_id="d1", account_id="alice", asset="USD", amount=5000)
    resp = await harness.client.get("/accounts/alice/balances", headers=AUTH)
    body = await resp.json()
    assert resp.status == 200, body
    m.BalancesOut.model_validate(body)
    assert body["balances"] == [{"asset": "USD", "available": 5000, "held": 0, "total": 5000}]
    resp = await harness.client.get("/accounts/alice/positions", headers=AUTH)
    body = await resp.json()
    m.PositionsOut.model_validate(body)
    assert body == {"account": "alice", "positions": []}
    resp = await harness.client.get("/accounts/nobody/balances", headers=AUTH)
    assert resp.status == 404
    resp = await harness.client.get("/accounts/alice/balances")
    assert resp.status == 401


async def test_balances_without_ledger_tables_is_503(harness: Harness) -> None:
    resp = await harness.client.get("/accounts/alice/balances", headers=AUTH)
    assert resp.status == 503 and "ledger" in (await resp.json())["error"]


async def test_openapi_documents_every_route(harness: Harness) -> None:
    resp = await harness.client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in harness.service.http.app.router.routes()
        if route.method not in ("HEAD", "OPTIONS") and route.resource is not None
    }
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented, served ^ documented
    assert len(ROUTES) == len(documented)
    schemas = doc["components"]["schemas"]
    for name in (
        "SubmitOrder",
        "OrderOut",
        "SubmitParent",
        "ParentOut",
        "ErrorOut",
        "ReplaceOrder",
        "CancelAll",
    ):
        assert name in schemas
    submit_op = doc["paths"]["/orders"]["post"]
    assert submit_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SubmitOrder")
    assert {"201", "401", "409", "422", "429", "503"} <= set(submit_op["responses"])
    # Every $ref resolves.
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert refs and all(r.rsplit("/", 1)[1] in schemas for r in refs)


async def test_health_ready_metrics(harness: Harness) -> None:
    resp = await harness.client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["alive"] is True
    resp = await harness.client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200, body
    m.ReadyOut.model_validate(body)
    assert (body["role"], body["epoch"], body["lag"], body["consuming"]) == ("active", 1, 0, True)
    resp = await harness.client.get("/metrics")
    assert resp.status == 200 and "ts_execution_role 1.0" in await resp.text()


async def test_admin_demote_then_promote(harness: Harness) -> None:
    resp = await harness.client.post("/demote", headers=ADMIN_AUTH)
    assert resp.status == 200 and (await resp.json())["role"] == "standby"
    status, answer = await submit(harness, order_body())
    assert status == 503 and answer["role"] == "standby"
    resp = await harness.client.post("/promote", json={"epoch": "x"}, headers=ADMIN_AUTH)
    assert resp.status == 422
    resp = await harness.client.post("/promote", json={"epoch": 2}, headers=ADMIN_AUTH)
    assert resp.status == 200 and await resp.json() == {"role": "active", "epoch": 2}
    assert (await submit(harness, order_body()))[0] == 201
    # Going back to an older epoch is refused by the fence row.
    resp = await harness.client.post("/promote", json={"epoch": 1}, headers=ADMIN_AUTH)
    assert resp.status == 409 and (await resp.json())["current"] == 2


async def test_concurrent_submits_with_one_client_id_place_one_order(harness: Harness) -> None:
    import asyncio

    answers = await asyncio.gather(*(submit(harness, order_body("race", qty=1 + i)) for i in range(8)))
    assert sorted(status for status, _ in answers) == [201] + [409] * 7
    await eventually(lambda: len(harness.placements()) == 1)
    assert await harness.service.store.count() == 1


async def test_unconfirmed_publish_is_503_then_republished(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trading_system.bus import PublishTimeoutError

    service = harness.service
    real_publish = service.bus.publish

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise PublishTimeoutError("no confirm")

    monkeypatch.setattr(service.bus, "publish", failing)
    status, answer = await submit(harness, order_body("lost"))
    assert status == 503 and "not confirmed" in answer["error"]
    # Stored (it may have reached the broker), so the client id stays taken.
    assert await service.store.count() == 1
    assert (await submit(harness, order_body("lost")))[0] == 409
    monkeypatch.setattr(service.bus, "publish", real_publish)
    assert await service.republish() == 1
    await eventually(lambda: [p.order_id for p in harness.placements()] == [answer["order_id"]])
    assert await service.republish() == 0


async def test_a_submit_the_database_refuses_is_503_and_frees_the_client_id(harness: Harness) -> None:
    """During a database restart the order is not stored: a retry with the same client id
    must be taken as new, not answered 409 with the id of an order that does not exist."""
    store = harness.service.store
    original = store.insert_orders
    failures = [ConnectionResetError("the database is restarting")]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await original(*args, **kwargs)

    store.insert_orders = flaky  # type: ignore[method-assign]
    status, answer = await submit(harness, order_body("retry-me"))
    assert status == 503 and "retry" in answer["error"]
    assert await all_orders(harness) == [] and harness.placements() == []
    status, answer = await submit(harness, order_body("retry-me"))
    assert status == 201 and await store.count() == 1

"""The execution service on the real RabbitMQ cluster and PostgreSQL: placements on the
wire, order state from the broker, kill -9 of the active and promotion, fencing."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.environment.processes import free_port_block
from tests.environment.rabbitmq import RabbitMQCluster
from tests.integration.execution_service.conftest import (
    ADMIN_AUTH,
    AUTH,
    Client,
    active_at,
    eventually,
    get_json,
    in_process,
    new_namespace,
    post_json,
    spawn,
)
from trading_system.bus.catalog import TxnOutcome
from trading_system.bus.catalog.transaction import TxnResult
from trading_system.execution.service.app import Role
from trading_system.execution.service.store import OrderStore
from trading_system.matching.core import EventKind
from trading_system.pipeline.messages import EVENTS_KEY, OUTCOME_KEY, MatchingEvents, Names
from trading_system.storage import create_engine
from trading_system.storage.fencing import FencedError, FenceToken

pytestmark = pytest.mark.integration
ClientFactory = Callable[[Names], Awaitable[Client]]


def order(cid: str, qty: int = 10, price: int = 100) -> dict[str, Any]:
    return {
        "client_order_id": cid,
        "account": "alice",
        "symbol": "BTC-USD",
        "side": "buy",
        "qty": qty,
        "price": price,
    }


async def test_submit_publishes_order_new_on_coordinator_requests(
    rabbitmq: RabbitMQCluster, postgres_dsn: str, client_factory: ClientFactory
) -> None:
    ns = new_namespace()
    service = in_process(postgres_dsn, rabbitmq.urls, ns, Role.ACTIVE, 1, "a")
    client = await client_factory(service.names)
    await service.start()
    try:
        base = f"http://127.0.0.1:{service.http_port}"
        status, body = await post_json(f"{base}/orders", order("c-1", qty=7, price=101), AUTH)
        assert status == 201, body
        await eventually(lambda: _has(client, 1), what="OrderNew on coordinator.requests")
        env = client.requests[0]
        placed = env.payload
        assert placed.message_type == "order.new" and env.transaction_id == f"txn-{body['order_id']}"
        assert (placed.order_id, placed.client_order_id, placed.account, placed.symbol) == (
            body["order_id"],
            "c-1",
            "alice",
            "BTC-USD",
        )
        assert (placed.side, placed.order_type, placed.qty, placed.price) == (
            "buy",
            "limit",
            Decimal(7),
            Decimal(101),
        )
        assert client.requests[0].payload.time_in_force == "gtc"
        # It was persisted before it was published.
        records, _ = await service.store.load()
        assert [r.order_id for r in records] == [body["order_id"]]
        status, dup = await post_json(f"{base}/orders", order("c-1"), AUTH)
        assert status == 409 and dup["order_id"] == body["order_id"]
    finally:
        await service.stop()


async def _has(client: Client, n: int) -> bool:
    return len(client.requests) >= n


async def test_outcomes_and_matching_events_through_the_broker(
    rabbitmq: RabbitMQCluster, postgres_dsn: str, client_factory: ClientFactory
) -> None:
    ns = new_namespace()
    service = in_process(postgres_dsn, rabbitmq.urls, ns, Role.ACTIVE, 1, "a")
    client = await client_factory(service.names)
    await service.start()
    names = service.names
    try:
        base = f"http://127.0.0.1:{service.http_port}"
        _, first = await post_json(f"{base}/orders", order("f-1"), AUTH)
        _, second = await post_json(f"{base}/orders", order("f-2"), AUTH)
        oid, aborted = first["order_id"], second["order_id"]
        bus = client.bus
        await bus.publish(
            TxnOutcome(
                transaction_id=f"txn-{aborted}", order_id=aborted, result=TxnResult.ABORTED, reason="risk: no"
            ),
            exchange=names.exchange,
            routing_key=OUTCOME_KEY,
        )
        await bus.publish(
            TxnOutcome(transaction_id=f"txn-{oid}", order_id=oid, result=TxnResult.COMMITTED),
            exchange=names.exchange,
            routing_key=OUTCOME_KEY,
        )
        events: list[tuple[Any, ...]] = [
            (1, EventKind.BBO, "BTC-USD", 98, 5, 102, 5),
            (2, EventKind.ACCEPTED, "BTC-USD", oid, "alice", 1, 100, 10, 1),
            (3, EventKind.TRADE, "BTC-USD", 99, 3, 2, "taker-x", "bob", 0, oid, "alice", 7),
        ]
        await bus.publish(
            MatchingEvents(venue="v1", events=tuple(events)), exchange=names.exchange, routing_key=EVENTS_KEY
        )

        async def status_is(order_id: str, status: str) -> bool:
            _, body = await get_json(f"{base}/orders/{order_id}", AUTH)
            return bool(body["status"] == status)

        await eventually(lambda: status_is(oid, "partially_filled"), what="partial fill")
        _, body = await get_json(f"{base}/orders/{oid}", AUTH)
        assert (body["filled_qty"], body["remaining_qty"]) == (3, 7)
        await eventually(lambda: status_is(aborted, "rejected"), what="aborted placement rejected")
        _, body = await get_json(f"{base}/orders/{aborted}", AUTH)
        assert body["reason"] == "risk: no"

        fill = (4, EventKind.TRADE, "BTC-USD", 101, 7, 2, "taker-y", "bob", 0, oid, "alice", 0)
        await bus.publish(
            MatchingEvents(venue="v1", events=(fill,)), exchange=names.exchange, routing_key=EVENTS_KEY
        )
        await eventually(lambda: status_is(oid, "filled"), what="fill")
        _, body = await get_json(f"{base}/orders/{oid}", AUTH)
        assert body["average_price"] == pytest.approx((3 * 99 + 7 * 101) / 10)
        assert [f["trade_id"] for f in body["fills"]] == ["v1:BTC-USD:3", "v1:BTC-USD:4"]
        records, _ = await service.store.load()
        stored = {r.order_id: (r.status.value, r.state.filled_qty) for r in records}
        assert stored == {oid: ("filled", 10), aborted: ("rejected", 0)}
    finally:
        await service.stop()


async def test_kill9_active_then_promoted_standby_serves_its_orders(
    rabbitmq: RabbitMQCluster, postgres_dsn: str, client_factory: ClientFactory, tmp_path: Path
) -> None:
    ns = new_namespace()
    names = Names.namespaced(ns)
    client = await client_factory(names)
    port = free_port_block(1, 43000)
    log = tmp_path / "active.log"
    proc = spawn(postgres_dsn, rabbitmq.urls, ns, port, log)
    standby = in_process(postgres_dsn, rabbitmq.urls, ns, Role.STANDBY, 0, "b")
    active_base = f"http://127.0.0.1:{port}"
    try:
        await eventually(
            lambda: active_at(active_base), within=30, what=f"active up: {log.read_text()[-2000:]}"
        )
        await standby.start()
        ids = []
        for i in range(20):
            status, body = await post_json(f"{active_base}/orders", order(f"k-{i}"), AUTH)
            assert status == 201, body
            ids.append(body["order_id"])
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL

        base = f"http://127.0.0.1:{standby.http_port}"
        status, body = await post_json(f"{base}/orders", order("refused"), AUTH)
        assert status == 503 and body["role"] == "standby"
        status, body = await post_json(f"{base}/promote", {"epoch": 2}, ADMIN_AUTH)
        assert status == 200 and body == {"role": "active", "epoch": 2}
        status, body = await get_json(f"{base}/readyz")
        assert (status, body["role"], body["epoch"], body["lag"]) == (200, "active", 2, 0)
        status, listed = await get_json(f"{base}/orders?account=alice", AUTH)
        assert status == 200 and {o["order_id"] for o in listed["orders"]} == set(ids)
        status, body = await post_json(f"{base}/orders", order("k-0"), AUTH)
        assert status == 409  # the new active knows the old one's client ids
        # The new active consumes: a fill for an order the old active placed lands.
        fill = (9, EventKind.TRADE, "BTC-USD", 100, 10, 2, "t", "bob", 0, ids[0], "alice", 0)
        await client.bus.publish(
            MatchingEvents(venue="v1", events=(fill,)), exchange=names.exchange, routing_key=EVENTS_KEY
        )

        async def filled() -> bool:
            _, body = await get_json(f"{base}/orders/{ids[0]}", AUTH)
            return bool(body["status"] == "filled")

        await eventually(filled, what="fill applied by the promoted standby")
        # Every placement reached the wire (the old active's, possibly again from the new one).
        assert {p.order_id for p in client.placements()} >= set(ids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        await standby.stop()


async def test_fenced_old_active_cannot_write(
    rabbitmq: RabbitMQCluster, postgres_dsn: str, client_factory: ClientFactory
) -> None:
    ns = new_namespace()
    old = in_process(postgres_dsn, rabbitmq.urls, ns, Role.ACTIVE, 1, "a")
    new = in_process(postgres_dsn, rabbitmq.urls, ns, Role.STANDBY, 0, "b")
    await client_factory(old.names)
    await old.start()
    await new.start()
    db = create_engine(postgres_dsn)
    try:
        old_base = f"http://127.0.0.1:{old.http_port}"
        status, kept = await post_json(f"{old_base}/orders", order("x-1"), AUTH)
        assert status == 201
        await new.promote(2)
        # The old member still believes it is active until its next write or epoch check.
        status, body = await post_json(f"{old_base}/orders", order("x-2"), AUTH)
        assert status == 503 and ("fenced" in body["error"] or body["role"] == "fenced"), body
        status, body = await post_json(f"{old_base}/orders/{kept['order_id']}/cancel", None, AUTH)
        assert status == 503
        # Directly at the store too: the old epoch's token is refused by PostgreSQL.
        store = OrderStore(db)
        records, _ = await store.load()
        records[0].cancel_requested = True
        with pytest.raises(FencedError):
            await store.save_orders(FenceToken("execution", 1), records)
        records, _ = await store.load()
        assert [(r.client_order_id, r.cancel_requested) for r in records] == [("x-1", False)]

        async def fenced() -> bool:
            status, body = await get_json(f"{old_base}/readyz")
            return status == 503 and body["role"] == "fenced" and body["consuming"] is False

        await eventually(fenced, what="old active reports fenced")
    finally:
        await db.dispose()
        await old.stop()
        await new.stop()

"""The wire contract end to end: orders submitted over HTTP go through a real coordinator
replica (three-phase commit, ledger reservation) and the venue, and come back to the
execution service as fills or as rejections with the coordinator's reason."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.environment.rabbitmq import RabbitMQCluster
from tests.integration.execution_service.conftest import (
    AUTH,
    Client,
    eventually,
    get_json,
    in_process,
    new_namespace,
    post_json,
)
from trading_system.coordinator.protocol import PhaseTimeouts
from trading_system.coordinator.service.app import CoordinatorConfig, CoordinatorService
from trading_system.coordinator.sql_store import migrate_coordinator
from trading_system.execution.service.app import Role
from trading_system.ledger import (
    AccountKind,
    FenceToken,
    Instrument,
    create_asset,
    deposit,
    migrate_ledger,
    open_account,
)
from trading_system.matching.core import SymbolSpec
from trading_system.pipeline.messages import topology
from trading_system.pipeline.venue import VenueAdapter
from trading_system.storage import create_engine, raise_epoch

pytestmark = pytest.mark.integration
SYMBOL = "BTC-USD"


async def setup_ledger(dsn: str) -> None:
    # The coordinator writes the ledger under the execution pair's epoch; the execution
    # service takes epoch 2 below, after this set-up at epoch 1.
    db = create_engine(dsn)
    fence = FenceToken("execution", 1)
    try:
        await migrate_ledger(db)
        await migrate_coordinator(db)
        await raise_epoch(db, "execution", 1, "setup")
        await create_asset(db, fence, "USD", decimals=2)
        await create_asset(db, fence, "BTC", decimals=0)
        for account in ("buyer", "seller", "broke"):
            await open_account(db, fence, account, AccountKind.USER)
        await deposit(db, fence, deposit_id="d1", account_id="buyer", asset="USD", amount=100_000_000)
        await deposit(db, fence, deposit_id="d2", account_id="seller", asset="BTC", amount=1_000)
    finally:
        await db.dispose()


async def test_http_orders_through_coordinator_and_venue(
    rabbitmq: RabbitMQCluster, postgres_dsn: str, client_factory: Callable[..., Awaitable[Client]]
) -> None:
    await setup_ledger(postgres_dsn)
    namespace = new_namespace()
    execution = in_process(postgres_dsn, rabbitmq.urls, namespace, Role.ACTIVE, 2, "a")
    client = await client_factory(execution.names, watch_requests=False)
    venue = VenueAdapter(
        client.bus, [SymbolSpec(SYMBOL, tick_size=5, lot_size=1)], venue="v1", names=client.names
    )
    coordinator = CoordinatorService(
        CoordinatorConfig(
            db_url=postgres_dsn,
            bus_urls=tuple(rabbitmq.urls),
            bus_mode="rabbitmq",
            http_host="127.0.0.1",
            http_port=0,
            namespace=namespace,
            instruments={SYMBOL: Instrument(SYMBOL, "BTC", "USD")},
            timeouts=PhaseTimeouts(init=3.0, can_commit=8.0, pre_commit=8.0, do_commit=1.0, aborting=1.0),
        )
    )
    await client.bus.declare(topology(client.names))  # the venue's command queue too
    await execution.start()
    await coordinator.start()
    await venue.start()
    base = f"http://127.0.0.1:{execution.http_port}"
    try:

        async def submit(cid: str, account: str, side: str, qty: int, price: int) -> str:
            body = {"client_order_id": cid, "account": account, "symbol": SYMBOL, "side": side, "qty": qty}
            status, answer = await post_json(f"{base}/orders", {**body, "price": price}, AUTH)
            assert status == 201, answer
            return str(answer["order_id"])

        async def order(order_id: str) -> dict[str, Any]:
            _, body = await get_json(f"{base}/orders/{order_id}", AUTH)
            return dict(body)

        def reaches(order_id: str, status: str) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return bool((await order(order_id))["status"] == status)

            return check

        sell = await submit("s1", "seller", "sell", 5, 100)
        await eventually(reaches(sell, "open"), within=30, what="sell order resting at the venue")
        buy = await submit("b1", "buyer", "buy", 3, 100)
        await eventually(reaches(buy, "filled"), within=30, what="buy filled against the resting sell")
        await eventually(reaches(sell, "partially_filled"), within=10, what="sell partially filled")
        assert (await order(sell))["filled_qty"] == 3 and (await order(buy))["average_price"] == 100

        broke = await submit("x1", "broke", "buy", 1, 100)
        await eventually(reaches(broke, "rejected"), within=30, what="unfunded order rejected")
        assert (await order(broke))["reason"], "the coordinator's reason is shown"

        status, answer = await post_json(f"{base}/orders/{sell}/cancel", None, AUTH)
        assert status == 202, answer
        await eventually(reaches(sell, "cancelled"), within=30, what="cancel confirmed by the venue")
        status, balances = await get_json(f"{base}/accounts/buyer/balances", AUTH)
        assert status == 200 and {b["asset"] for b in balances["balances"]} == {"USD"}
    finally:
        await coordinator.stop()
        await execution.stop()

"""A replica started before the execution pair has an active waits for it, alive."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.environment.rabbitmq import RabbitMQCluster
from tests.integration.coordinator.harness import config, new_namespace
from tests.unit.bus.support import eventually
from trading_system.coordinator.service.app import CoordinatorService
from trading_system.storage import create_engine, raise_epoch

pytestmark = pytest.mark.integration


async def status(port: int, path: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status


async def test_a_replica_waits_for_the_first_election_serving_health(
    rabbitmq: RabbitMQCluster, postgres_dsn: str
) -> None:
    service = CoordinatorService(config(postgres_dsn, list(rabbitmq.urls), new_namespace(), "early"))
    starting = asyncio.create_task(service.start())
    db = create_engine(postgres_dsn)
    try:
        await eventually(lambda: service.http_port is not None, within=30, what="the HTTP server")
        assert service.http_port is not None
        assert await status(service.http_port, "/healthz") == 200  # alive: no restart wanted
        assert await status(service.http_port, "/readyz") == 503  # but not taking requests
        assert not starting.done()  # waiting, not exited

        await raise_epoch(db, "execution", 1, "execution-0")  # the execution pair elects
        await asyncio.wait_for(starting, 30)
        assert service.driver.fence.epoch == 1
        await eventually(lambda: _ready(service.http_port), within=30, what="ready after the election")
    finally:
        if not starting.done():
            starting.cancel()
        await service.stop()
        await db.dispose()


async def _ready(port: int | None) -> bool:
    return port is not None and await status(port, "/readyz") == 200

"""The execution service on SQLite and the in-memory bus, driven through aiohttp's test client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from tests.unit.bus.support import eventually as eventually  # shared bounded wait, re-exported
from trading_system.bus.config import BusMode, BusSettings
from trading_system.bus.envelope import Envelope
from trading_system.bus.facade import MessageBus
from trading_system.common.auth import TokenSet
from trading_system.execution.service.app import ExecutionConfig, ExecutionService, Role
from trading_system.matching.core import SymbolSpec
from trading_system.pipeline.messages import registry

API = "api-secret"
ADMIN = "admin-secret"
AUTH = {"Authorization": f"Bearer {API}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
SPECS = (SymbolSpec("BTC-USD", tick_size=5, lot_size=1), SymbolSpec("ETH-USD", tick_size=1, lot_size=10))


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    service: ExecutionService
    client: TestClient[Any, Any]
    clock: FakeClock
    registry: CollectorRegistry
    requests: list[Envelope[Any]] = field(default_factory=list)

    def placements(self) -> list[Any]:
        return [e.payload for e in self.requests if e.payload.message_type == "order.new"]

    def cancels(self) -> list[Any]:
        return [e.payload for e in self.requests if e.payload.message_type == "order.cancel"]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


def make_service(
    db_path: Path,
    role: Role,
    epoch: int,
    clock: FakeClock,
    *,
    holder: str = "h1",
    rate: float = 1000.0,
    burst: int = 1000,
) -> tuple[ExecutionService, CollectorRegistry]:
    registry_ = CollectorRegistry()
    bus = MessageBus(
        BusSettings(mode=BusMode.IN_MEMORY, service="test", depth_poll_interval=0),
        registry=registry(),
        metrics_registry=registry_,
    )
    config = ExecutionConfig(
        db_url=f"sqlite+aiosqlite:///{db_path}",
        role=role,
        epoch=epoch,
        holder=holder,
        specs=SPECS,
        rate=rate,
        burst=burst,
        parent_interval=0,  # the tests tick parents themselves, on the fake clock
        epoch_check_interval=0.05,
        refresh_interval=0.05,
    )
    service = ExecutionService(
        config, bus=bus, registry=registry_, clock=clock, tokens=TokenSet(api=(API,), admin=(ADMIN,))
    )
    return service, registry_


async def start_harness(service: ExecutionService, clock: FakeClock, registry_: CollectorRegistry) -> Harness:
    await service.start(serve_http=False)
    client: TestClient[Any, Any] = TestClient(TestServer(service.http.app))
    await client.start_server()
    harness = Harness(service, client, clock, registry_)

    async def sink(env: Envelope[Any]) -> None:
        harness.requests.append(env)

    await service.bus.subscribe(service.names.requests, sink)
    return harness


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest_asyncio.fixture(loop_scope="function")
async def harness(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Harness]:
    service, reg = make_service(tmp_path / "x.db", Role.ACTIVE, 1, clock)
    h = await start_harness(service, clock, reg)
    yield h
    await h.client.close()
    await service.stop()


def order_body(client_id: str = "c1", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "client_order_id": client_id,
        "account": "alice",
        "symbol": "BTC-USD",
        "side": "buy",
        "qty": 10,
        "price": 100,
    }
    body.update(overrides)
    return body

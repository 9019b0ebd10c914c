"""Helpers for the execution service on the real RabbitMQ cluster and PostgreSQL.

Every test uses its own namespace for exchange and queue names, so it never sees another
test's (or another service's) traffic on the shared broker.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest_asyncio
from prometheus_client import CollectorRegistry

from tests.environment.rabbitmq import RabbitMQCluster
from tests.unit.bus.support import eventually as shared_eventually
from trading_system.bus.config import BusMode, BusSettings
from trading_system.bus.envelope import Envelope
from trading_system.bus.facade import MessageBus
from trading_system.bus.topology import Topology
from trading_system.common.auth import TokenSet
from trading_system.execution.service.app import ExecutionConfig, ExecutionService, Role
from trading_system.pipeline.messages import Names, registry, topology

ROOT = Path(__file__).resolve().parents[3]
API = "it-api-token"
ADMIN = "it-admin-token"
AUTH = {"Authorization": f"Bearer {API}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


def new_namespace() -> str:
    return f"itx{uuid.uuid4().hex[:8]}"


def execution_topology(names: Names) -> Topology:
    wanted = {names.execution, names.outcomes, names.requests}
    full = topology(names)
    return Topology(full.exchanges, tuple(q for q in full.queues if q.name in wanted))


class Client:
    """The other side of the wire: sees the placements, sends events and outcomes."""

    def __init__(self, bus: MessageBus, names: Names) -> None:
        self.bus = bus
        self.names = names
        self.requests: list[Envelope[Any]] = []

    async def start(self, watch_requests: bool = True) -> None:
        await self.bus.declare(execution_topology(self.names))
        if not watch_requests:  # a real coordinator consumes them
            return

        async def sink(env: Envelope[Any]) -> None:
            self.requests.append(env)

        await self.bus.subscribe(self.names.requests, sink, prefetch=500)

    def placements(self) -> list[Any]:
        return [e.payload for e in self.requests if e.payload.message_type == "order.new"]


def rabbit_bus(urls: list[str], service: str, metrics: CollectorRegistry | None = None) -> MessageBus:
    return MessageBus(
        BusSettings(mode=BusMode.RABBITMQ, urls=tuple(urls), service=service, depth_poll_interval=0),
        registry=registry(),
        metrics_registry=metrics or CollectorRegistry(),
    )


@pytest_asyncio.fixture(loop_scope="function")
async def client_factory(
    rabbitmq: RabbitMQCluster,
) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    buses: list[MessageBus] = []
    namespaces: list[Names] = []

    async def make(names: Names, watch_requests: bool = True) -> Client:
        namespaces.append(names)
        bus = rabbit_bus(rabbitmq.urls, "it-client")
        await bus.start()
        buses.append(bus)
        client = Client(bus, names)
        await client.start(watch_requests)
        return client

    yield make
    for bus in buses:
        await bus.close()
    await delete_namespaces(rabbitmq.urls, namespaces)


async def delete_namespaces(urls: list[str], namespaces: list[Names]) -> None:
    """Remove the test's queues and exchange from the shared broker."""
    connection = await aio_pika.connect(urls[0])
    try:
        channel = await connection.channel()
        for names in namespaces:
            for queue in topology(names).plan().queues:
                await channel.queue_delete(queue.name)
            await channel.exchange_delete(names.exchange)
    finally:
        await connection.close()


def in_process(
    dsn: str, urls: list[str], namespace: str, role: Role, epoch: int, holder: str
) -> ExecutionService:
    metrics = CollectorRegistry()
    config = ExecutionConfig(
        db_url=dsn,
        role=role,
        epoch=epoch,
        http_host="127.0.0.1",
        http_port=0,
        holder=holder,
        namespace=namespace,
        epoch_check_interval=0.2,
        refresh_interval=0.2,
    )
    return ExecutionService(
        config,
        bus=rabbit_bus(urls, f"execution-{holder}", metrics),
        registry=metrics,
        tokens=TokenSet(api=(API,), admin=(ADMIN,)),
    )


def spawn(dsn: str, urls: list[str], namespace: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``trading-system execution serve`` as an active member, configured from the environment."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "services"),
        "TRADING_SYSTEM_DATABASE_URL": dsn,
        "TRADING_SYSTEM_RABBITMQ_URL": ",".join(urls),
        "TRADING_SYSTEM_API_TOKEN": API,
        "TRADING_SYSTEM_ADMIN_TOKEN": ADMIN,
    }
    args = [
        sys.executable,
        "-m",
        "trading_system.execution.service.cli",
        "execution",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--role",
        "active",
        "--epoch",
        "1",
        "--holder",
        "proc-a",
        "--namespace",
        namespace,
        "--bus-mode",
        "rabbitmq",
    ]
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)


async def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.json()


async def post_json(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


# The shared bounded wait, with the longer default these broker round trips need.
eventually = functools.partial(shared_eventually, within=20.0)


async def active_at(base: str) -> bool:
    try:
        status, body = await get_json(f"{base}/readyz")
    except aiohttp.ClientError:
        return False
    return status == 200 and body.get("role") == "active" and bool(body.get("consuming"))

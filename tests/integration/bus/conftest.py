"""Fixtures for the bus tests: buses on either transport, with their queues cleaned up.

The contract tests use the session cluster (``rabbitmq_cluster``) because they break
nothing; healing the cluster after every test would cost several seconds each. The
fault-injection tests request ``rabbitmq``, which heals after them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from tests.environment.rabbitmq import RabbitMQCluster
from trading_system.bus import (
    Binding,
    BusMode,
    BusSettings,
    Exchange,
    MessageBus,
    RetryPolicy,
    Topology,
    WorkQueue,
)
from trading_system.bus.transport_memory import InMemoryTransport

FAST_RETRY = RetryPolicy(max_attempts=4, initial_delay=0.2, multiplier=2.0, max_delay=5.0, jitter=0.1)


class BusFactory:
    """Makes buses for one test; all buses of a test share one broker (or one in-memory one)."""

    def __init__(self, kind: str, cluster: RabbitMQCluster | None) -> None:
        self.kind = kind
        self.cluster = cluster
        self.uid = uuid.uuid4().hex[:8]
        self.exchange = f"test.{self.uid}"
        self.buses: list[MessageBus] = []
        self.registries: dict[int, CollectorRegistry] = {}
        self.memory = InMemoryTransport() if kind == "in_memory" else None
        self._queues: set[str] = set()

    @property
    def urls(self) -> list[str]:
        return [] if self.cluster is None else self.cluster.urls

    async def bus(self, **settings: Any) -> MessageBus:
        values: dict[str, Any] = {
            "mode": BusMode(self.kind),
            "urls": tuple(self.urls),
            "service": f"test-{self.uid}-{len(self.buses)}",
            "default_exchange": self.exchange,
            "publish_timeout": 5.0,
            "reconnect_interval": 0.5,
            "connect_timeout": 3.0,
            "breaker_reset_timeout": 0.5,
            "depth_poll_interval": 0,
        }
        values.update(settings)
        registry = CollectorRegistry()
        bus = MessageBus(BusSettings(**values), metrics_registry=registry, transport=self.memory)
        await bus.start()
        self.buses.append(bus)
        self.registries[id(bus)] = registry
        return bus

    def registry(self, bus: MessageBus) -> CollectorRegistry:
        return self.registries[id(bus)]

    def metric(self, bus: MessageBus, name: str, **labels: str) -> float:
        return self.registry(bus).get_sample_value(name, labels) or 0.0

    async def declared(self, bus: MessageBus | None = None, **topology: Any) -> tuple[MessageBus, str]:
        """A bus (new unless given) with a fresh work queue declared; returns its name too."""
        bus = bus or await self.bus()
        declared = self.topology(**topology)
        await bus.declare(declared)
        return bus, declared.queues[0].name

    def topology(
        self,
        *,
        name: str = "work",
        sac: bool = False,
        delivery_limit: int = 3,
        retry: RetryPolicy = FAST_RETRY,
        max_length: int | None = None,
        routing_key: str | None = None,
    ) -> Topology:
        queue = f"t.{self.uid}.{name}"
        bindings = (Binding(self.exchange, routing_key),) if routing_key else ()
        work = WorkQueue(
            queue,
            bindings=bindings,
            single_active_consumer=sac,
            delivery_limit=delivery_limit,
            retry=retry,
            max_length=max_length,
        )
        topology = Topology(exchanges=(Exchange(self.exchange),), queues=(work,))
        self._queues.update(decl.name for decl in topology.plan().queues)
        return topology

    async def close(self) -> None:
        for bus in self.buses:
            await bus.close()
        if self.cluster is None:
            return
        connection = await aio_pika.connect(self.cluster.live_node().url, timeout=10)
        async with connection:
            channel = await connection.channel()
            for queue in sorted(self._queues):
                await channel.queue_delete(queue)
            await channel.exchange_delete(self.exchange)


@pytest.fixture(params=["in_memory", "rabbitmq"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture(loop_scope="function")
async def buses(transport_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    cluster = request.getfixturevalue("rabbitmq_cluster") if transport_kind == "rabbitmq" else None
    factory = BusFactory(transport_kind, cluster)
    yield factory
    await factory.close()


@pytest_asyncio.fixture(loop_scope="function")
async def rabbit_buses(rabbitmq: RabbitMQCluster) -> AsyncIterator[BusFactory]:
    """Buses on the real cluster for tests that kill or restart nodes (healed afterwards)."""
    factory = BusFactory("rabbitmq", rabbitmq)
    yield factory
    await factory.close()

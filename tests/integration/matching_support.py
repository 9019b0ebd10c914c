"""Client-side helpers for tests that drive matching engines over the real broker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from trading_system.bus.config import BusSettings
from trading_system.bus.envelope import Envelope
from trading_system.bus.facade import MessageBus
from trading_system.bus.topology import Binding, Exchange, Topology, WorkQueue
from trading_system.matching.service.messages import register


@contextlib.asynccontextmanager
async def matching_client(urls: Sequence[str]) -> AsyncIterator[MessageBus]:
    """A started bus that knows the matching service's messages."""
    bus = MessageBus(
        BusSettings(mode="rabbitmq", urls=tuple(urls), service="test-client", depth_poll_interval=0),
        metrics_registry=CollectorRegistry(),
    )
    register(bus.registry)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


async def subscribe_event_sink(client_bus: MessageBus, engine_id: str) -> list[tuple[int, int]]:
    """Collect (epoch, sequence) of every event message the engines publish."""
    sink_queue = f"test.matching.events.{engine_id}"
    await client_bus.declare(
        Topology(
            exchanges=(Exchange("ts.events"),),
            queues=(WorkQueue(sink_queue, bindings=(Binding("ts.events", f"matching.events.{engine_id}"),)),),
        )
    )
    seen: list[tuple[int, int]] = []

    async def sink(env: Envelope[Any]) -> None:
        seen.append((int(env.epoch or 0), int(env.sequence or 0)))

    await client_bus.subscribe(sink_queue, sink, prefetch=500)
    return seen

"""Client-side helpers for tests that drive matching engines over the real broker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from trading_system.bus.config import BusMode, BusSettings
from trading_system.bus.envelope import Envelope
from trading_system.bus.facade import MessageBus
from trading_system.bus.topology import Binding, Exchange, Topology, WorkQueue
from trading_system.matching.service.messages import register


async def start_matching_client(urls: Sequence[str], service: str = "test-client") -> MessageBus:
    """A started bus that knows the matching service's messages (the caller closes it)."""
    bus = MessageBus(
        BusSettings(mode=BusMode.RABBITMQ, urls=tuple(urls), service=service, depth_poll_interval=0),
        metrics_registry=CollectorRegistry(),
    )
    register(bus.registry)
    await bus.start()
    return bus


@contextlib.asynccontextmanager
async def matching_client(urls: Sequence[str]) -> AsyncIterator[MessageBus]:
    bus = await start_matching_client(urls)
    try:
        yield bus
    finally:
        await bus.close()


async def event_sink(
    bus: MessageBus,
    engine_id: str,
    handler: Callable[[Envelope[Any]], Awaitable[None]],
    prefix: str = "test.matching.events",
    prefetch: int = 500,
) -> str:
    """A queue of its own bound to engine ``engine_id``'s events, consumed by ``handler``."""
    queue = f"{prefix}.{engine_id}"
    await bus.declare(
        Topology(
            exchanges=(Exchange("ts.events"),),
            queues=(WorkQueue(queue, bindings=(Binding("ts.events", f"matching.events.{engine_id}"),)),),
        )
    )
    await bus.subscribe(queue, handler, prefetch=prefetch)
    return queue


async def subscribe_event_sink(client_bus: MessageBus, engine_id: str) -> list[tuple[int, int]]:
    """Collect (epoch, sequence) of every event message the engines publish."""
    seen: list[tuple[int, int]] = []

    async def sink(env: Envelope[Any]) -> None:
        seen.append((int(env.epoch or 0), int(env.sequence or 0)))

    await event_sink(client_bus, engine_id, sink)
    return seen

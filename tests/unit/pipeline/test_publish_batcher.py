"""The publish batcher: concurrent publishes share AMQP messages, each caller is answered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.unit.bus.support import eventually, order
from trading_system.bus import (
    BusMode,
    BusSettings,
    Envelope,
    MessageBus,
    Topology,
    UnroutableError,
    WorkQueue,
)
from trading_system.pipeline.publish_batcher import PublishBatcher

pytestmark = pytest.mark.unit


def new_bus() -> MessageBus:
    return MessageBus(
        BusSettings(mode=BusMode.IN_MEMORY, depth_poll_interval=0), metrics_registry=CollectorRegistry()
    )


async def test_concurrent_publishes_share_messages_and_arrive_in_order() -> None:
    async with new_bus() as bus:
        await bus.declare(Topology(queues=(WorkQueue("q"),)))
        batcher = PublishBatcher(bus, exchange="", routing_key="q", max_batch=8, writers=1)
        sent = await asyncio.gather(*(batcher.publish(order(i), transaction_id=f"t-{i}") for i in range(20)))
        assert [env.payload for env in sent] == [order(i) for i in range(20)]
        assert 1 < batcher.batches < 20 and batcher.messages == 20
        assert await bus.transport.queue_depth("q") == batcher.batches
        got: list[Envelope[Any]] = []

        async def collect(env: Envelope[Any]) -> None:
            got.append(env)

        await bus.subscribe("q", collect)
        await eventually(lambda: len(got) == 20)
        assert [env.payload.order_id for env in got] == [f"o-{i}" for i in range(20)]
        assert [env.transaction_id for env in got] == [f"t-{i}" for i in range(20)]
        await batcher.close()


async def test_a_lone_publish_goes_out_at_once() -> None:
    async with new_bus() as bus:
        await bus.declare(Topology(queues=(WorkQueue("q"),)))
        batcher = PublishBatcher(bus, exchange="", routing_key="q")
        await batcher.publish(order(1))
        assert (batcher.batches, await bus.transport.queue_depth("q")) == (1, 1)
        await batcher.close()


async def test_a_failed_publish_fails_every_caller_of_its_batch() -> None:
    async with new_bus() as bus:
        batcher = PublishBatcher(bus, exchange="", routing_key="nowhere", writers=1)
        results = await asyncio.gather(*(batcher.publish(order(i)) for i in range(5)), return_exceptions=True)
        assert all(isinstance(result, UnroutableError) for result in results)
        assert batcher.messages == 0
        await batcher.close()

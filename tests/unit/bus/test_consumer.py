"""Consumer edge cases on the in-memory broker: batch items failing on their own, and a
failure inside the bus itself."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.unit.bus.support import eventually, order
from trading_system.bus import (
    BusMode,
    BusSettings,
    Envelope,
    ErrorClassifier,
    MessageBus,
    PermanentError,
    RetryPolicy,
    Topology,
    TransientError,
    WorkQueue,
)
from trading_system.bus.consumer import ERROR_HEADER
from trading_system.bus.errors import ErrorKind

pytestmark = pytest.mark.unit


async def bus_with(queue: WorkQueue, classifier: ErrorClassifier | None = None) -> MessageBus:
    bus = MessageBus(
        BusSettings(mode=BusMode.IN_MEMORY, depth_poll_interval=0),
        metrics_registry=CollectorRegistry(),
        classifier=classifier,
    )
    await bus.start()
    await bus.declare(Topology(queues=(queue,)))
    return bus


async def depth_is(bus: MessageBus, queue: str, n: int) -> bool:
    return await bus.transport.queue_depth(queue) == n


async def test_failed_batch_items_leave_on_their_own() -> None:
    bus = await bus_with(WorkQueue("w", retry=RetryPolicy(max_attempts=3, initial_delay=0.05, jitter=0)))
    calls: dict[str, int] = {}

    async def handler(env: Envelope[Any]) -> None:
        oid = env.payload.order_id
        calls[oid] = calls.get(oid, 0) + 1
        if oid == "o-2":
            raise PermanentError("bad account")
        if oid == "o-3" and calls[oid] == 1:
            raise TransientError("try later")

    await bus.subscribe("w", handler)
    sent = await bus.publish_batch([order(1), order(2), order(3)], exchange="", routing_key="w")
    await eventually(lambda: calls.get("o-3") == 2, what="o-3 retried on its own")
    assert calls == {"o-1": 1, "o-2": 1, "o-3": 2}  # the batch was not redelivered
    dead = await bus.transport.get("w.dead")
    assert dead is not None and dead.message_id == sent[1].message_id
    assert "bad account" in dead.headers[ERROR_HEADER]
    assert await bus.transport.queue_depth("w") == 0
    await bus.close()


class BrokenClassifier(ErrorClassifier):
    def classify(self, exc: BaseException) -> ErrorKind:
        raise RuntimeError("bug in the bus")


async def test_a_bug_in_the_bus_requeues_and_the_delivery_limit_parks() -> None:
    bus = await bus_with(WorkQueue("w", delivery_limit=2), classifier=BrokenClassifier())
    calls = 0

    async def handler(env: Envelope[Any]) -> None:
        nonlocal calls
        calls += 1
        raise TransientError("whatever")

    await bus.subscribe("w", handler)
    await bus.publish(order(1), exchange="", routing_key="w")
    await eventually(lambda: depth_is(bus, "w.parking", 1), what="parked by the delivery limit")
    assert calls == 2
    await bus.close()

"""The in-memory broker's own rules (the shared behaviour is in the contract tests)."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.bus.support import eventually
from trading_system.bus import Binding, Exchange, ExchangeKind, PublishNackedError, Topology, WorkQueue
from trading_system.bus.errors import PublishError, UnroutableError
from trading_system.bus.transport import Delivery, Outgoing
from trading_system.bus.transport_memory import InMemoryTransport, topic_matches

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("order.*", "order.new", True),
        ("order.*", "order.new.v2", False),
        ("order.#", "order", True),
        ("order.#", "order.new.v2", True),
        ("#", "anything.at.all", True),
        ("*.new", "order.new", True),
        ("*.new", "new", False),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("md.bbo", "md.bbo", True),
    ],
)
def test_topic_matching_follows_amqp(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def message(body: bytes = b"{}", expiration: float | None = None) -> Outgoing:
    return Outgoing(body, "id", "t", "application/json", expiration=expiration)


async def broker(*queues: WorkQueue, exchanges: tuple[Exchange, ...] = ()) -> InMemoryTransport:
    transport = InMemoryTransport()
    await transport.connect()
    await transport.declare(Topology(exchanges, queues).plan())
    return transport


async def test_routing_by_exchange_kind() -> None:
    transport = await broker(
        WorkQueue("t", bindings=(Binding("topic", "a.*"),)),
        WorkQueue("d", bindings=(Binding("direct", "k"),)),
        WorkQueue("f", bindings=(Binding("fan", "ignored"),)),
        exchanges=(
            Exchange("topic"),
            Exchange("direct", ExchangeKind.DIRECT),
            Exchange("fan", ExchangeKind.FANOUT),
        ),
    )
    await transport.publish("topic", "a.b", message(), mandatory=True, confirm_timeout=1)
    await transport.publish("direct", "k", message(), mandatory=True, confirm_timeout=1)
    await transport.publish("fan", "whatever", message(), mandatory=True, confirm_timeout=1)
    assert [await transport.queue_depth(q) for q in "tdf"] == [1, 1, 1]
    with pytest.raises(UnroutableError):
        await transport.publish("direct", "other", message(), mandatory=True, confirm_timeout=1)
    await transport.publish("direct", "other", message(), mandatory=False, confirm_timeout=1)
    with pytest.raises(PublishError, match="does not exist"):
        await transport.publish("nope", "k", message(), mandatory=True, confirm_timeout=1)


async def test_per_message_ttl_dead_letters_back_to_the_work_queue() -> None:
    transport = await broker(WorkQueue("w"))
    await transport.publish("", "w.retry.1", message(expiration=0.05), mandatory=True, confirm_timeout=1)
    assert await transport.queue_depth("w") == 0
    await eventually(lambda: _depth(transport, "w", 1), within=2, what="expired into the work queue")
    delivery = await transport.get("w")
    assert delivery is not None
    assert delivery.headers["x-death"][0]["reason"] == "expired"
    assert delivery.headers["x-death"][0]["queue"] == "w.retry.1"


async def _depth(transport: InMemoryTransport, queue: str, n: int) -> bool:
    return await transport.queue_depth(queue) == n


async def test_delivery_limit_dead_letters_and_max_length_rejects() -> None:
    transport = await broker(WorkQueue("w", delivery_limit=1, max_length=1))
    await transport.publish("", "w", message(), mandatory=True, confirm_timeout=1)
    with pytest.raises(PublishNackedError, match="full"):
        await transport.publish("", "w", message(), mandatory=True, confirm_timeout=1)
    for count in (0, 1):
        delivery = await transport.get("w")
        assert delivery is not None and delivery.delivery_count == count
        await delivery.reject(requeue=True)
    assert await transport.queue_depth("w") == 0
    dead = await transport.get("w.dead")
    assert dead is not None and dead.headers["x-death"][0]["reason"] == "delivery_limit"


async def test_single_active_consumer_and_return_of_unsettled_deliveries() -> None:
    transport = await broker(WorkQueue("w", single_active_consumer=True))
    got: dict[str, list[Delivery]] = {"a": [], "b": []}

    def collect(name: str):  # type: ignore[no-untyped-def]
        async def callback(delivery: Delivery) -> None:
            got[name].append(delivery)

        return callback

    first = await transport.consume("w", collect("a"), prefetch=10)
    await transport.consume("w", collect("b"), prefetch=10)
    for _ in range(3):
        await transport.publish("", "w", message(), mandatory=True, confirm_timeout=1)
    await asyncio.sleep(0)
    assert (len(got["a"]), len(got["b"])) == (3, 0)
    await got["a"][0].ack()
    await first.cancel()  # two unsettled go back, counted, to the next consumer
    await asyncio.sleep(0)
    assert [d.delivery_count for d in got["b"]] == [1, 1]
    assert all(d.redelivered for d in got["b"])
    await got["a"][1].ack()  # settling after the cancel is a no-op, as on a closed channel
    await transport.close()

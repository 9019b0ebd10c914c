"""The bus on the real cluster while nodes die, restart and drop connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from io import StringIO
from typing import Any

import aio_pika
import pytest
from prometheus_client import CollectorRegistry

from tests.environment.rabbitmq import RabbitMQCluster
from tests.integration.bus.conftest import BusFactory
from tests.unit.bus.support import eventually, order
from trading_system.bus import (
    BusError,
    Envelope,
    MessageBus,
    PoisonMessageError,
    PublishError,
    current_delivery,
    parking,
)
from trading_system.bus.topology import parking_queue_name
from trading_system.bus.transport_rabbitmq import RabbitMQTransport

pytestmark = pytest.mark.integration


class Deliveries:
    """Every delivery a handler saw: message id -> redelivered flags, in arrival order."""

    def __init__(self, on_message: Callable[[str], None] | None = None) -> None:
        self.flags: dict[str, list[bool]] = defaultdict(list)
        self.arrivals: list[tuple[float, str]] = []
        self._on_message = on_message

    async def __call__(self, env: Envelope[Any]) -> None:
        info = current_delivery()
        assert info is not None
        self.flags[env.message_id].append(info.redelivered)
        self.arrivals.append((time.monotonic(), env.message_id))
        if self._on_message is not None:
            self._on_message(env.message_id)

    def duplicates_are_redeliveries(self) -> bool:
        return all(any(flags[1:]) for flags in self.flags.values() if len(flags) > 1)


def node_of(url: str | None, cluster: RabbitMQCluster) -> int:
    assert url is not None
    for node in cluster.nodes:
        if f":{node.amqp_port}/" in url:
            return node.index
    raise AssertionError(f"{url} is not a node of the cluster")


def transport(bus: MessageBus) -> RabbitMQTransport:
    assert isinstance(bus.transport, RabbitMQTransport)
    return bus.transport


def close_connections(cluster: RabbitMQCluster, name_prefix: str) -> int:
    """Force-close (as the broker does on failure) the connections whose name starts so."""
    out = cluster.ctl(
        cluster.live_node(), "list_connections", "pid", "client_properties", "--no-table-headers", "--quiet"
    )
    closed = 0
    for line in out.splitlines():
        pid, _, props = line.partition("\t")
        if f'{{"connection_name","{name_prefix}' in props:
            cluster.ctl(cluster.live_node(), "close_connection", pid.strip(), "test: connection killed")
            closed += 1
    return closed


async def test_confirmed_messages_survive_kill_of_the_queue_leader(
    rabbit_buses: BusFactory, rabbitmq: RabbitMQCluster
) -> None:
    buses = rabbit_buses
    producer = await buses.bus(publish_attempts=1, breaker_reset_timeout=0.2)
    consumer = await buses.bus()
    topology = buses.topology(delivery_limit=20)
    await producer.declare(topology)
    await consumer.declare(topology)
    queue = topology.queues[0].name
    seen = Deliveries()
    await consumer.subscribe(queue, seen, prefetch=50)
    leader = await asyncio.to_thread(rabbitmq.leader_index, queue)
    consumer_node = node_of(transport(consumer).consumer_url, rabbitmq)
    assert consumer_node != leader, "the consumer must sit on a node that survives"

    confirmed: list[str] = []
    unconfirmed = 0
    killed_at_count: int | None = None

    async def produce(chunk: int) -> None:
        # Publishing goes on through the kill until 1000 more are confirmed on the new
        # leader; a chunk that fails is not re-sent, so every id is published only once
        # and a duplicate delivery can only be the broker's redelivery.
        nonlocal unconfirmed
        i = 0
        while killed_at_count is None or len(confirmed) < killed_at_count + 1000:
            envelopes = [producer.envelope(order(n)) for n in range(i, i + chunk)]
            i += chunk
            try:
                await producer.publish_many(envelopes, exchange="", routing_key=queue)
                confirmed.extend(env.message_id for env in envelopes)
            except PublishError as exc:
                failed = {env.message_id for env, _ in getattr(exc, "failed", [])} or {
                    e.message_id for e in envelopes
                }
                confirmed.extend(env.message_id for env in envelopes if env.message_id not in failed)
                unconfirmed += len(failed)
                await asyncio.sleep(0.2)

    producing = asyncio.create_task(produce(100))
    await eventually(lambda: len(confirmed) >= 1000, within=30, what="1000 confirmed before the kill")
    killed_at_count = len(confirmed)
    await asyncio.to_thread(rabbitmq.kill, leader)
    await asyncio.wait_for(producing, 90)
    await eventually(
        lambda: set(confirmed) <= seen.flags.keys(), within=60, what="every confirmed message consumed"
    )

    assert seen.duplicates_are_redeliveries()
    # The consumer's connection never dropped: a reconnect would have moved it on.
    assert node_of(transport(consumer).consumer_url, rabbitmq) == consumer_node
    assert buses.metric(producer, "ts_bus_reconnects_total", transport="rabbitmq") >= 1
    assert await asyncio.to_thread(rabbitmq.leader_index, queue) != leader
    print(
        f"\nkill -9 of leader node {leader}: {len(confirmed)} confirmed, {unconfirmed} unconfirmed, "
        f"{len(seen.flags)} distinct consumed, "
        f"{sum(len(f) - 1 for f in seen.flags.values())} redeliveries"
    )


async def test_node_restart_client_reconnects_and_resumes_consuming(
    rabbit_buses: BusFactory, rabbitmq: RabbitMQCluster
) -> None:
    buses = rabbit_buses
    bus = await buses.bus()
    topology = buses.topology(routing_key="order.#")
    await bus.declare(topology)
    queue = topology.queues[0].name
    seen = Deliveries()
    await bus.subscribe(queue, seen)
    before = [env.message_id for env in await bus.publish_many([order(i) for i in range(20)])]
    await eventually(lambda: set(before) <= seen.flags.keys(), what="messages before the restart")

    victim = node_of(transport(bus).consumer_url, rabbitmq)
    during: list[str] = []

    async def keep_publishing(until: asyncio.Future[None]) -> None:
        while not until.done():
            with contextlib.suppress(BusError):
                during.append((await bus.publish(order(1000 + len(during)))).message_id)
            await asyncio.sleep(0.1)

    # Down for a few seconds, then started again: a launch right after the kill races
    # the old node's epmd registration on this shared machine.
    await asyncio.to_thread(rabbitmq.kill, victim)
    down = asyncio.create_task(asyncio.sleep(3))
    await keep_publishing(down)
    restarting = asyncio.create_task(asyncio.to_thread(rabbitmq.restart, victim))
    await keep_publishing(restarting)
    await restarting

    after = [env.message_id for env in await bus.publish_many([order(i) for i in range(50, 70)])]
    await eventually(
        lambda: set(before + during + after) <= seen.flags.keys(), within=30, what="all confirmed consumed"
    )
    assert during, "nothing could be published while the node restarted"
    assert node_of(transport(bus).consumer_url, rabbitmq) != victim
    assert buses.metric(bus, "ts_bus_reconnects_total", transport="rabbitmq") >= 1
    await eventually(lambda: bus.health().status == "ok", what="healthy again")


async def test_topology_is_declared_again_after_a_reconnect(
    rabbit_buses: BusFactory, rabbitmq: RabbitMQCluster
) -> None:
    buses = rabbit_buses
    bus = await buses.bus()
    topology = buses.topology(routing_key="order.#", delivery_limit=7)
    await bus.declare(topology)
    queue = topology.queues[0].name
    seen = Deliveries()
    await bus.subscribe(queue, seen)

    # The broker forgets the exchange and the queue (as after losing its definitions),
    # then the client's connections drop.
    async with await aio_pika.connect(rabbitmq.live_node().url) as admin:
        channel = await admin.channel()
        await channel.queue_delete(queue)
        await channel.exchange_delete(buses.exchange)
    assert await asyncio.to_thread(close_connections, rabbitmq, bus.settings.service) == 2

    async def routed() -> bool:
        try:
            await bus.publish(order(1))
        except BusError:
            return False
        return True

    await eventually(routed, within=30, interval=0.3, what="exchange, queue and binding declared again")
    await eventually(lambda: len(seen.flags) >= 1, within=15, what="consuming again")
    rows = json.loads(
        await asyncio.to_thread(
            rabbitmq.ctl,
            rabbitmq.live_node(),
            "list_queues",
            "name",
            "type",
            "arguments",
            "--formatter",
            "json",
        )
    )
    [row] = [r for r in rows if r["name"] == queue]
    assert row["type"] == "quorum"
    assert dict((k, v) for k, _, v in row["arguments"])["x-delivery-limit"] == 7


async def test_single_active_consumer_handover_when_its_connection_is_killed(
    rabbit_buses: BusFactory, rabbitmq: RabbitMQCluster, record_property: Callable[[str, object], None]
) -> None:
    buses = rabbit_buses
    producer, first_bus, second_bus = await buses.bus(), await buses.bus(), await buses.bus()
    topology = buses.topology(sac=True)
    for bus in (producer, first_bus, second_bus):
        await bus.declare(topology)
    queue = topology.queues[0].name
    first, second = Deliveries(), Deliveries()
    await first_bus.subscribe(queue, first)
    await second_bus.subscribe(queue, second)

    published: list[str] = []
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            with contextlib.suppress(BusError):
                published.append(
                    (await producer.publish(order(len(published)), exchange="", routing_key=queue)).message_id
                )
            await asyncio.sleep(0.01)

    producing = asyncio.create_task(produce())
    await eventually(lambda: len(first.flags) >= 20, what="the first consumer active")
    assert not second.flags

    killed_at = time.monotonic()
    assert await asyncio.to_thread(close_connections, rabbitmq, f"{first_bus.settings.service}-consume") == 1
    await eventually(lambda: bool(second.arrivals), within=30, what="the second consumer taking over")
    took_over = second.arrivals[0][0]
    # rabbitmqctl itself takes most of a second to start, so the gap between the last
    # message on the old consumer and the first on the new one is the handover time;
    # the time since the kill command started is its upper bound.
    last_on_first = max(t for t, _ in first.arrivals if t < took_over)
    handover, bound = took_over - last_on_first, took_over - killed_at
    await eventually(lambda: len(second.flags) >= 20, what="the second consumer keeps receiving")
    stop.set()
    await producing
    await eventually(
        lambda: set(published) <= first.flags.keys() | second.flags.keys(), within=30, what="nothing lost"
    )

    record_property("sac_handover_seconds", round(handover, 3))
    record_property("sac_handover_upper_bound_seconds", round(bound, 3))
    print(
        f"\nsingle-active-consumer handover: {handover * 1000:.0f} ms between the last message on the "
        f"killed consumer and the first on the other ({bound * 1000:.0f} ms since the kill command)"
    )
    assert handover < 5
    # The first consumer came back (robust reconnect) but only as the waiting one.
    await eventually(lambda: transport(first_bus).connected, what="first consumer reconnected")
    assert [t for t, _ in first.arrivals if t > took_over] == []
    both = Counter(list(first.flags) + list(second.flags))
    redelivered = {m for m, n in both.items() if n > 1}
    assert all(any(second.flags[m]) for m in redelivered)


async def test_parking_cli_lists_and_republishes(rabbit_buses: BusFactory, rabbitmq: RabbitMQCluster) -> None:
    buses = rabbit_buses
    bus = await buses.bus()
    topology = buses.topology()
    await bus.declare(topology)
    queue = topology.queues[0].name
    handled: list[str] = []
    failed_once: set[str] = set()

    async def handler(env: Envelope[Any]) -> None:
        if env.message_id not in failed_once:
            failed_once.add(env.message_id)
            raise PoisonMessageError("operator, please look")
        handled.append(env.message_id)

    await bus.subscribe(queue, handler)
    sent = [await bus.publish(order(i), exchange="", routing_key=queue) for i in range(2)]
    await eventually(_parked(bus, queue, 2), what="two parked messages")

    env = {**os.environ, "TRADING_SYSTEM_RABBITMQ_URLS": ",".join(rabbitmq.urls)}
    listing = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "trading_system.bus.parking", "list", queue, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    rows = [json.loads(line) for line in listing.stdout.splitlines() if line.startswith("{")]
    assert {row["message_id"] for row in rows} == {e.message_id for e in sent}
    assert {row["reason"] for row in rows} == {"poison"}

    out = StringIO()
    args = parking.build_parser().parse_args(
        ["--urls", ",".join(rabbitmq.urls), "republish", queue, "--id", sent[1].message_id]
    )
    assert await parking.run(args, out) == 0
    assert f"republished {sent[1].message_id}" in out.getvalue()
    await eventually(lambda: handled == [sent[1].message_id], what="republished message handled")
    # The tool's requeue of the message it left alone lands asynchronously on a quorum queue.
    await eventually(_parked(bus, queue, 1), what="the other message still parked")


def _parked(bus: MessageBus, queue: str, expected: int) -> Callable[[], Any]:
    async def check() -> bool:
        return await bus.transport.queue_depth(parking_queue_name(queue)) == expected

    return check


async def test_auto_mode_uses_the_cluster_when_it_is_reachable(rabbitmq_cluster: RabbitMQCluster) -> None:
    bus = MessageBus.from_env(
        mode="auto", urls=rabbitmq_cluster.urls, metrics_registry=CollectorRegistry(), depth_poll_interval=0
    )
    async with bus:
        health = bus.health()
        assert (health.status, health.transport, health.reasons) == ("ok", "rabbitmq", ())

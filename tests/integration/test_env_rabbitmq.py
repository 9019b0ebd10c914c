"""The RabbitMQ cluster is real: three clustered nodes, quorum queues, and fault injection."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest

from tests.environment.rabbitmq import RabbitMQCluster

pytestmark = pytest.mark.integration


async def _connect_to_any(urls: list[str]) -> aio_pika.abc.AbstractConnection:
    last: Exception | None = None
    for url in urls:
        try:
            return await aio_pika.connect(url, timeout=5)
        except Exception as exc:  # try the next node
            last = exc
    raise AssertionError(f"no node reachable: {last!r}")


async def _drain(channel: aio_pika.abc.AbstractChannel, queue_name: str, expected: int) -> list[str]:
    queue = await channel.get_queue(queue_name, ensure=False)
    bodies: list[str] = []
    async with queue.iterator(no_ack=False) as it:
        async for message in it:
            bodies.append(message.body.decode())
            await message.ack()
            if len(bodies) >= expected:
                break
    return bodies


async def test_cluster_has_three_running_nodes(rabbitmq: RabbitMQCluster) -> None:
    assert sorted(rabbitmq.running_nodes()) == sorted(node.name for node in rabbitmq.nodes)
    assert len(rabbitmq.urls) == 3


async def test_confirmed_messages_survive_kill_of_quorum_leader(rabbitmq: RabbitMQCluster) -> None:
    queue_name = f"smoke-{uuid.uuid4().hex[:8]}"
    connection = await _connect_to_any(rabbitmq.urls)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
        for i in range(200):
            await channel.default_exchange.publish(
                aio_pika.Message(f"m{i}".encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue_name,
            )
        info = rabbitmq.queue_info(queue_name)
        assert info["type"] == "quorum"
        assert len(info["members"]) == 3  # type: ignore[arg-type]
        leader = rabbitmq.leader_index(queue_name)

    rabbitmq.kill(leader)
    survivors = [node.url for node in rabbitmq.nodes if node.index != leader]
    connection = await _connect_to_any(survivors)
    async with connection:
        channel = await connection.channel()
        bodies = await asyncio.wait_for(_drain(channel, queue_name, 200), timeout=60)
    assert sorted(bodies, key=lambda b: int(b[1:])) == [f"m{i}" for i in range(200)]
    assert rabbitmq.leader_index(queue_name) != leader


async def test_killed_node_restarts_and_rejoins(rabbitmq: RabbitMQCluster) -> None:
    victim = rabbitmq.nodes[2]
    rabbitmq.kill(victim)
    assert victim.name not in rabbitmq.running_nodes(0)
    rabbitmq.restart(victim)
    assert victim.name in rabbitmq.running_nodes(0)
    connection = await aio_pika.connect(victim.url, timeout=5)
    await connection.close()


async def test_paused_node_stops_answering_until_resumed(rabbitmq: RabbitMQCluster) -> None:
    victim = rabbitmq.nodes[1]
    rabbitmq.pause(victim)
    with pytest.raises((asyncio.TimeoutError, aio_pika.exceptions.AMQPConnectionError, OSError)):
        await aio_pika.connect(victim.url, timeout=3)
    rabbitmq.resume(victim)
    connection = await aio_pika.connect(victim.url, timeout=10)
    await connection.close()

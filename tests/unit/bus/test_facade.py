"""The facade without a broker: mode selection, loud fallback, validation, health, sync use."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.unit.bus.support import eventually, order
from trading_system.bus import (
    BrokerUnavailableError,
    BusMode,
    BusSettings,
    ConfigurationError,
    Envelope,
    MessageBus,
    MessageValidationError,
    Topology,
    WorkQueue,
)
from trading_system.bus.messages import BusMessage

pytestmark = pytest.mark.unit


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"amqp://guest:guest@127.0.0.1:{port}/"


def new_bus(registry: CollectorRegistry | None = None, **settings: Any) -> MessageBus:
    values: dict[str, Any] = {"depth_poll_interval": 0, "connect_timeout": 1.0, **settings}
    return MessageBus(BusSettings(**values), metrics_registry=registry or CollectorRegistry())


async def test_in_memory_mode_is_healthy() -> None:
    bus = new_bus(mode="in_memory")
    assert bus.health().status == "down"  # not started
    async with bus:
        health = bus.health()
        assert (health.status, health.transport, health.connected) == ("ok", "in_memory", True)


async def test_auto_mode_falls_back_loudly(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    bus = new_bus(registry, mode="auto", urls=(closed_port_url(),))
    with caplog.at_level(logging.WARNING, logger="trading_system.bus.facade"):
        await bus.start()
    try:
        health = bus.health()
        assert health.status == "degraded" and health.ready
        assert health.transport == "in_memory"
        assert "no RabbitMQ broker reachable" in health.reasons[0]
        assert any("FELL BACK" in r.message and r.levelno == logging.WARNING for r in caplog.records)
        assert registry.get_sample_value("ts_bus_fallbacks_total") == 1
        assert registry.get_sample_value("ts_bus_degraded") == 1
    finally:
        await bus.close()


async def test_auto_mode_without_urls_also_falls_back() -> None:
    async with new_bus(mode="auto") as bus:
        assert bus.health().status == "degraded"


async def test_rabbitmq_mode_never_falls_back() -> None:
    with pytest.raises(BrokerUnavailableError, match="no RabbitMQ node reachable"):
        await new_bus(mode="rabbitmq", urls=(closed_port_url(), closed_port_url())).start()
    with pytest.raises(ConfigurationError, match="needs broker URLs"):
        await new_bus(mode="rabbitmq").start()


async def test_mode_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADING_SYSTEM_MESSAGE_BUS_MODE", "in_memory")
    bus = MessageBus.from_env(service="svc", metrics_registry=CollectorRegistry(), depth_poll_interval=0)
    assert bus.settings.mode is BusMode.IN_MEMORY
    assert (
        MessageBus.from_env(mode="auto", metrics_registry=CollectorRegistry()).settings.mode is BusMode.AUTO
    )


async def test_publishing_needs_a_catalog_type_and_subscribing_a_declared_queue() -> None:
    class Stray(BusMessage):
        message_type = "stray.thing"

    async with new_bus(mode="in_memory") as bus:
        with pytest.raises(MessageValidationError, match="not in this bus's catalog"):
            await bus.publish(Stray())
        with pytest.raises(ConfigurationError, match="not in the declared topology"):
            await bus.subscribe("undeclared", _noop)
        with pytest.raises(TypeError, match="cannot be given with a ready Envelope"):
            await bus.publish(bus.envelope(order(1)), epoch=3)


async def _noop(env: Envelope[Any]) -> None:
    return None


async def test_envelope_carries_causation_from_the_message_it_answers() -> None:
    async with new_bus(mode="in_memory", service="matching") as bus:
        cause = bus.envelope(order(1), correlation_id="corr-1", transaction_id="txn-1")
        reply = bus.envelope(order(2), caused_by=cause, epoch=4, sequence=9)
        assert (reply.correlation_id, reply.causation_id, reply.transaction_id) == (
            "corr-1",
            cause.message_id,
            "txn-1",
        )
        assert (reply.source, reply.epoch, reply.sequence) == ("matching", 4, 9)


def test_publish_sync_from_a_script_without_an_event_loop() -> None:
    bus = new_bus(mode="in_memory")
    seen: list[str] = []
    with bus:
        bus._blocking(lambda: bus.declare(Topology(queues=(WorkQueue("q"),))), 5)

        async def handler(env: Envelope[Any]) -> None:
            seen.append(env.message_id)

        bus._blocking(lambda: bus.subscribe("q", handler), 5)
        env = bus.publish_sync(order(1), exchange="", routing_key="q", timeout=5)
        assert bus._blocking(lambda: eventually(lambda: seen == [env.message_id]), 5) >= 0
    assert bus.health().status == "down"


async def test_publish_sync_refuses_to_block_the_bus_loop() -> None:
    async with new_bus(mode="in_memory") as bus:
        with pytest.raises(RuntimeError, match="use await publish"):
            bus.publish_sync(order(1))


async def test_publish_sync_from_another_thread_uses_the_running_bus() -> None:
    async with new_bus(mode="in_memory") as bus:
        await bus.declare(Topology(queues=(WorkQueue("q"),)))
        result: list[str] = []
        worker = threading.Thread(
            target=lambda: result.append(bus.publish_sync(order(1), exchange="", routing_key="q").message_id)
        )
        worker.start()
        await asyncio.to_thread(worker.join, 5)
        assert len(result) == 1
        assert await bus.transport.queue_depth("q") == 1

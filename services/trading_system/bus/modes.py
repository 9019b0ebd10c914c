"""Choosing the transport from the mode, including ``auto``'s loud fallback."""

from __future__ import annotations

import logging

from trading_system.bus.config import BusMode, BusSettings
from trading_system.bus.errors import BrokerUnavailableError, ConfigurationError
from trading_system.bus.metrics import BusMetrics
from trading_system.bus.transport import Transport
from trading_system.bus.transport_memory import InMemoryTransport

log = logging.getLogger(__name__)


async def open_transport(settings: BusSettings, metrics: BusMetrics) -> tuple[Transport, str | None]:
    """A connected transport, and why the bus is degraded (None when it is not).

    ``rabbitmq`` raises when no node answers; ``auto`` falls back to in-memory and says
    so at WARNING, in ``ts_bus_fallbacks_total`` and ``ts_bus_degraded``.
    """
    mode, urls = settings.mode, settings.urls
    if mode is BusMode.IN_MEMORY:
        transport: Transport = InMemoryTransport()
        await transport.connect()
        return transport, None
    if mode is BusMode.RABBITMQ and not urls:
        raise ConfigurationError(
            "rabbitmq mode needs broker URLs (argument urls= or TRADING_SYSTEM_RABBITMQ_URLS)"
        )
    try:
        return await _rabbitmq(settings), None
    except BrokerUnavailableError as exc:
        if mode is BusMode.RABBITMQ:
            raise
        reason = f"no RabbitMQ broker reachable ({exc}); using the in-memory transport"
    log.warning(
        "message bus in auto mode FELL BACK to in-memory: %s. Messages live only in this "
        "process and are lost when it stops.",
        reason,
    )
    metrics.fallbacks().inc()
    metrics.degraded().set(1)
    transport = InMemoryTransport()
    await transport.connect()
    return transport, reason


async def _rabbitmq(settings: BusSettings) -> Transport:
    # Imported here so in-memory users (the demo, unit tests) never load aio-pika.
    from trading_system.bus.transport_rabbitmq import RabbitMQTransport

    if not settings.urls:
        raise BrokerUnavailableError("no RabbitMQ URLs configured")
    transport = RabbitMQTransport(
        settings.urls,
        connection_name=settings.service,
        connect_timeout=settings.connect_timeout,
        reconnect_interval=settings.reconnect_interval,
        heartbeat=settings.heartbeat,
    )
    await transport.connect()
    return transport

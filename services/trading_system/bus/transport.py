"""What a transport must provide: the broker primitives the bus is built from.

Transports move bytes; they know nothing of envelopes, retries or breakers. That logic
lives once in the facade and the consumer, so the RabbitMQ and in-memory transports can
only differ in how they move bytes, and the same contract tests hold for both.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from trading_system.bus.topology import TopologyPlan

DELIVERY_COUNT_HEADER = "x-delivery-count"


@dataclass(slots=True)
class Outgoing:
    """One AMQP message as the bus hands it to a transport."""

    body: bytes
    message_id: str
    message_type: str
    content_type: str
    correlation_id: str | None = None
    headers: dict[str, Any] | None = None
    expiration: float | None = None
    """Per-message TTL in seconds (delay queues)."""


class Delivery(abc.ABC):
    """A message handed to a consumer; it stays unacknowledged until settled once."""

    queue: str
    body: bytes
    content_type: str | None
    message_id: str | None
    message_type: str | None
    correlation_id: str | None
    headers: Mapping[str, Any]
    redelivered: bool
    settled: bool = False
    """Acked or rejected already (by this process)."""

    @property
    def delivery_count(self) -> int:
        """How often it was delivered before and not settled (the quorum queue's count)."""
        value = self.headers.get(DELIVERY_COUNT_HEADER, 0)
        return value if isinstance(value, int) else 0

    @abc.abstractmethod
    async def ack(self) -> None: ...

    @abc.abstractmethod
    async def reject(self, requeue: bool) -> None:
        """Requeue it, or (``requeue=False``) dead-letter it through the queue's DLX."""


DeliveryCallback = Callable[[Delivery], Coroutine[Any, Any, None]]


class ConsumerHandle(abc.ABC):
    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop deliveries; unsettled ones go back to the queue."""


class Transport(abc.ABC):
    name: str

    def __init__(self) -> None:
        self.reconnect_callbacks: list[Callable[[], None]] = []
        """Called after every successful reconnection (not after the first connect)."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool: ...

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def declare(self, plan: TopologyPlan) -> None:
        """Declare (idempotently) and remember, so it is declared again after a reconnect."""

    @abc.abstractmethod
    async def publish(
        self, exchange: str, routing_key: str, message: Outgoing, *, mandatory: bool, confirm_timeout: float
    ) -> None:
        """Return once the broker confirmed it; raise a ``PublishError`` subclass otherwise."""

    async def reset_publisher(self) -> None:
        """Start publishing on fresh broker-side state (the breaker's half-open trial)."""
        return None

    @abc.abstractmethod
    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> ConsumerHandle: ...

    @abc.abstractmethod
    async def get(self, queue: str) -> Delivery | None:
        """One message without a consumer (basic.get, manual ack), or None if empty."""

    @abc.abstractmethod
    async def queue_depth(self, queue: str) -> int: ...

    def _notify_reconnected(self) -> None:
        for callback in list(self.reconnect_callbacks):
            callback()

"""The message bus: typed, versioned messages over RabbitMQ quorum queues (or in memory).

Start with ``MessageBus`` (facade.py) and docs/messaging.md. The catalog of message types
is in ``trading_system.bus.catalog``.
"""

from __future__ import annotations

from trading_system.bus.breaker import BreakerState, CircuitBreaker
from trading_system.bus.config import BusMode, BusSettings
from trading_system.bus.consumer import (
    ConsumeOptions,
    DeliveryInfo,
    Handler,
    Subscription,
    current_delivery,
)
from trading_system.bus.dedup import Deduplicator
from trading_system.bus.envelope import Envelope, new_message_id
from trading_system.bus.epoch import EpochGate, Verdict
from trading_system.bus.errors import (
    BrokerUnavailableError,
    BusError,
    CircuitOpenError,
    ConfigurationError,
    DeliveryLostError,
    ErrorClassifier,
    ErrorKind,
    MessageDecodeError,
    MessageValidationError,
    PermanentError,
    PoisonMessageError,
    PublishError,
    PublishManyError,
    PublishNackedError,
    PublishTimeoutError,
    TransientError,
    UnroutableError,
)
from trading_system.bus.facade import MessageBus
from trading_system.bus.health import BusHealth
from trading_system.bus.messages import BusMessage, MessageRegistry
from trading_system.bus.metrics import BusMetrics
from trading_system.bus.parking import ParkingTool
from trading_system.bus.retry import RetryPolicy
from trading_system.bus.topology import Binding, Exchange, ExchangeKind, Topology, WorkQueue

__all__ = [
    "Binding",
    "BreakerState",
    "BrokerUnavailableError",
    "BusError",
    "BusHealth",
    "BusMessage",
    "BusMetrics",
    "BusMode",
    "BusSettings",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigurationError",
    "ConsumeOptions",
    "Deduplicator",
    "DeliveryInfo",
    "DeliveryLostError",
    "Envelope",
    "EpochGate",
    "ErrorClassifier",
    "ErrorKind",
    "Exchange",
    "ExchangeKind",
    "Handler",
    "MessageBus",
    "MessageDecodeError",
    "MessageRegistry",
    "MessageValidationError",
    "ParkingTool",
    "PermanentError",
    "PoisonMessageError",
    "PublishError",
    "PublishManyError",
    "PublishNackedError",
    "PublishTimeoutError",
    "RetryPolicy",
    "Subscription",
    "Topology",
    "TransientError",
    "UnroutableError",
    "Verdict",
    "WorkQueue",
    "current_delivery",
    "new_message_id",
]

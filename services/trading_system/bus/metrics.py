"""Prometheus metrics of the bus.

Every bus in a process shares one ``BusMetrics`` per registry (prometheus-client refuses
to register a metric name twice), so ``BusMetrics.for_registry`` hands out one instance
per registry. Tests pass a fresh ``CollectorRegistry`` and read values from it.

Label children are cached in plain dicts: ``Counter.labels()`` validates its arguments on
every call, which is measurable at thousands of messages per second.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Hashable
from typing import Generic, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from trading_system.bus.breaker import BreakerState

PREFIX = "ts_bus"
BREAKER_STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

T = TypeVar("T", Counter, Gauge, Histogram)


class _Children(Generic[T]):
    """``metric.labels(*values)`` memoised by the label values."""

    __slots__ = ("_cache", "_metric")
    _metric: T

    def __init__(self, metric: T) -> None:
        self._metric = metric
        self._cache: dict[Hashable, T] = {}

    def __call__(self, *values: str) -> T:
        child = self._cache.get(values)
        if child is None:
            # An unlabelled metric is its own (only) child.
            child = self._cache[values] = self._metric.labels(*values) if values else self._metric
        return child


class BusMetrics:
    _instances: weakref.WeakKeyDictionary[CollectorRegistry, BusMetrics] = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None = None) -> BusMetrics:
        registry = REGISTRY if registry is None else registry
        with cls._lock:
            metrics = cls._instances.get(registry)
            if metrics is None:
                metrics = cls._instances[registry] = cls(registry)
            return metrics

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...]) -> _Children[Counter]:
            return _Children(Counter(f"{PREFIX}_{name}", doc, labels, registry=registry))

        def gauge(name: str, doc: str, labels: tuple[str, ...]) -> _Children[Gauge]:
            return _Children(Gauge(f"{PREFIX}_{name}", doc, labels, registry=registry))

        self.registry = registry
        self.published = counter("published", "Logical messages handed to the broker", ("message_type",))
        self.confirmed = counter("confirmed", "Logical messages confirmed by the broker", ("message_type",))
        self.nacked = counter(
            "nacked", "Logical messages refused by the broker (basic.nack)", ("message_type",)
        )
        self.returned = counter("returned", "Logical messages returned as unroutable", ("message_type",))
        self.publish_failures = counter("publish_failures", "Publishes that failed, by reason", ("reason",))
        self.consumed = counter("consumed", "Logical messages delivered to the bus", ("queue",))
        self.acked = counter("acked", "Deliveries acknowledged after processing", ("queue",))
        self.redelivered = counter("redelivered", "Deliveries flagged as redelivered", ("queue",))
        self.requeued = counter("requeued", "Deliveries returned to their queue (unknown errors)", ("queue",))
        self.retried = counter("retried", "Messages sent to a delay queue for a retry", ("queue",))
        self.dead_lettered = counter(
            "dead_lettered", "Messages dead-lettered (permanent errors)", ("queue", "reason")
        )
        self.parked = counter("parked", "Messages moved to a parking queue", ("queue", "reason"))
        self.dropped = counter(
            "dropped", "Messages skipped as duplicates or from a fenced epoch", ("queue", "reason")
        )
        self.reconnects = counter("reconnects", "Reconnections to the broker", ("transport",))
        self.fallbacks = counter("fallbacks", "Falls back from RabbitMQ to in-memory (auto mode)", ())
        self.breaker_transitions = counter("breaker_transitions", "Circuit breaker state changes", ("to",))
        self.breaker_state = gauge("breaker_state", "Breaker state: 0 closed, 1 open, 2 half-open", ())
        self.connected = gauge("connected", "1 while connected to the broker", ("transport",))
        self.degraded = gauge("degraded", "1 while the bus runs degraded (e.g. auto fallback)", ())
        self.queue_depth = gauge("queue_depth", "Messages ready in a queue", ("queue", "kind"))
        self.publish_latency = _Children(
            Histogram(
                f"{PREFIX}_publish_latency_seconds",
                "Time from publish to broker confirm",
                (),
                buckets=LATENCY_BUCKETS,
                registry=registry,
            )
        )
        self.handler_latency = _Children(
            Histogram(
                f"{PREFIX}_handler_seconds",
                "Time a consumer handler took per message",
                ("queue",),
                buckets=LATENCY_BUCKETS,
                registry=registry,
            )
        )

    def set_breaker_state(self, state: BreakerState) -> None:
        self.breaker_state().set(BREAKER_STATE_VALUE[state])
        self.breaker_transitions(state.value).inc()

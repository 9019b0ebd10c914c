"""Reliable publishing of ready AMQP messages: breaker, bounded retries, confirms, metrics.

The facade turns typed messages into ``Outgoing`` bytes; this module gets them confirmed.
Connection loss and confirm timeouts are retried (same message id, so a consumer can
dedup the copy a lost confirm may leave behind); a nack is not, because the broker said
no. Every attempt passes the circuit breaker, and the breaker's single half-open trial
goes out on a fresh channel (see ``RabbitMQTransport.reset_publisher``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from prometheus_client import Counter

from trading_system.bus.breaker import BreakerState, CircuitBreaker
from trading_system.bus.config import BusSettings
from trading_system.bus.errors import (
    CircuitOpenError,
    PublishError,
    PublishNackedError,
    PublishTimeoutError,
    UnroutableError,
)
from trading_system.bus.metrics import BusMetrics
from trading_system.bus.transport import Outgoing, Transport

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, settings: BusSettings, metrics: BusMetrics, breaker: CircuitBreaker) -> None:
        self._settings = settings
        self._metrics = metrics
        self._breaker = breaker
        self.transport: Transport | None = None

    async def send(
        self,
        exchange: str,
        routing_key: str,
        out: Outgoing,
        types: Mapping[str, int],
        mandatory: bool,
        *,
        counted: bool = False,
    ) -> None:
        """Publish ``out`` and return once confirmed. ``types`` counts the logical messages
        in it by type; ``counted`` means the caller counts published/confirmed in bulk."""
        transport, m, breaker, settings = self.transport, self._metrics, self._breaker, self._settings
        assert transport is not None, "publisher used before the bus started"
        if not counted:
            count(m.published, types)
        for attempt in range(1, settings.publish_attempts + 1):
            try:
                breaker.allow()
            except CircuitOpenError:
                m.publish_failures("breaker_open").inc()
                raise
            started = time.perf_counter()
            try:
                if breaker.state is BreakerState.HALF_OPEN:
                    await transport.reset_publisher()  # this call is the single trial
                await transport.publish(
                    exchange, routing_key, out, mandatory=mandatory, confirm_timeout=settings.publish_timeout
                )
            except UnroutableError:
                breaker.record_success()  # the broker answered: it is healthy
                count(m.returned, types)
                raise
            except PublishNackedError as exc:
                breaker.record_failure(exc)
                count(m.nacked, types)
                m.publish_failures("nacked").inc()
                raise
            except PublishError as exc:
                breaker.record_failure(exc)
                m.publish_failures("timeout" if isinstance(exc, PublishTimeoutError) else "connection").inc()
                if attempt == settings.publish_attempts:
                    raise
                log.warning(
                    "publish attempt %d/%d of %s failed: %s",
                    attempt,
                    settings.publish_attempts,
                    out.message_id,
                    exc,
                )
                await asyncio.sleep(settings.reconnect_interval * attempt)
                continue
            except BaseException:
                breaker.release()
                raise
            breaker.record_success()
            m.publish_latency().observe(time.perf_counter() - started)
            if not counted:
                count(m.confirmed, types)
            return

    async def send_many(
        self, items: Sequence[tuple[str, str, Outgoing, str]], mandatory: bool
    ) -> list[BaseException | None]:
        """Pipelined: up to ``max_in_flight`` unconfirmed at once, written in order.

        ``items`` are (exchange, routing key, message, message type); the result has the
        error of each item, or None where it was confirmed.
        """
        types = Tally(message_type for *_, message_type in items)
        count(self._metrics.published, types)

        def send(item: tuple[str, str, Outgoing, str]) -> Coroutine[Any, Any, None]:
            exchange, routing_key, out, message_type = item
            return self.send(exchange, routing_key, out, {message_type: 1}, mandatory, counted=True)

        limit = self._settings.max_in_flight
        if len(items) <= limit:
            results = await asyncio.gather(*(send(item) for item in items), return_exceptions=True)
        else:
            window = asyncio.Semaphore(limit)

            async def bounded(item: tuple[str, str, Outgoing, str]) -> None:
                async with window:
                    await send(item)

            results = await asyncio.gather(*(bounded(item) for item in items), return_exceptions=True)
        errors = [r if isinstance(r, BaseException) else None for r in results]
        types.subtract(item[3] for item, error in zip(items, errors, strict=True) if error is not None)
        count(self._metrics.confirmed, types)
        return errors


def count(family: Callable[[str], Counter], types: Mapping[str, int]) -> None:
    for message_type, n in types.items():
        if n:
            family(message_type).inc(n)

"""``MessageBus``: the one API services use to publish and consume typed messages.

    bus = MessageBus.from_env(service="execution")
    await bus.start()
    await bus.declare(topology)
    await bus.publish(OrderNew(...), transaction_id=txn)
    await bus.subscribe("matching.commands", handle)
    bus.health()

The transport is chosen by mode (argument or ``TRADING_SYSTEM_MESSAGE_BUS_MODE``). In
``auto`` mode an unreachable broker makes the bus fall back to the in-memory transport,
loudly: a warning, ``ts_bus_fallbacks_total``, ``ts_bus_degraded`` = 1, and ``health()``
reports degraded. ``rabbitmq`` mode never falls back: a trading system must not quietly
keep its messages in one process's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter as Tally
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from trading_system.bus.breaker import BreakerState, CircuitBreaker
from trading_system.bus.catalog import default_registry
from trading_system.bus.codec import BATCH_CONTENT_TYPE, ENVELOPE_CONTENT_TYPE, Codec
from trading_system.bus.config import BusMode, BusSettings
from trading_system.bus.consumer import ConsumeOptions, Handler, Subscription
from trading_system.bus.envelope import Envelope, new_message_id
from trading_system.bus.errors import (
    BusError,
    ConfigurationError,
    ErrorClassifier,
    MessageValidationError,
    PublishManyError,
)
from trading_system.bus.health import BusHealth, assess
from trading_system.bus.messages import BusMessage, MessageRegistry, describe_validation_error
from trading_system.bus.metrics import BusMetrics
from trading_system.bus.modes import open_transport
from trading_system.bus.publisher import Publisher
from trading_system.bus.sync import LoopThread, running_loop
from trading_system.bus.topology import Exchange, QueueRole, Topology
from trading_system.bus.transport import Outgoing, Transport

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["BusHealth", "MessageBus", "PublishManyError"]


class MessageBus:
    def __init__(
        self,
        settings: BusSettings | None = None,
        *,
        registry: MessageRegistry | None = None,
        metrics_registry: CollectorRegistry | None = None,
        transport: Transport | None = None,
        classifier: ErrorClassifier | None = None,
    ) -> None:
        self.settings = settings or BusSettings()
        self.registry = registry or default_registry()
        self.codec = Codec(self.registry)
        self.metrics = BusMetrics.for_registry(metrics_registry)
        self.classifier = classifier or ErrorClassifier()
        self.breaker = CircuitBreaker(
            self.settings.breaker_failure_threshold,
            self.settings.breaker_reset_timeout,
            on_change=self._breaker_changed,
        )
        self.metrics.breaker_state().set(0)
        self.publisher = Publisher(self.settings, self.metrics, self.breaker)
        self._given_transport = transport
        self._transport: Transport | None = None
        self._fallback_reason: str | None = None
        self._topology = Topology()
        self._subscriptions: list[Subscription] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: LoopThread | None = None
        self._depth_task: asyncio.Task[None] | None = None

    @classmethod
    def from_env(
        cls,
        *,
        mode: BusMode | str | None = None,
        urls: Sequence[str] | str | None = None,
        service: str | None = None,
        registry: MessageRegistry | None = None,
        metrics_registry: CollectorRegistry | None = None,
        **settings: Any,
    ) -> MessageBus:
        """Settings from the environment; arguments given here win over it."""
        resolved = BusSettings.from_env(mode=mode, urls=urls, service=service, **settings)
        return cls(resolved, registry=registry, metrics_registry=metrics_registry)

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise BusError("the bus is not started (await bus.start())")
        return self._transport

    @property
    def transport_name(self) -> str | None:
        return None if self._transport is None else self._transport.name

    async def start(self) -> None:
        if self._transport is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self._given_transport is not None:
            transport = self._given_transport
            await transport.connect()
        else:
            transport, self._fallback_reason = await open_transport(self.settings, self.metrics)
        transport.reconnect_callbacks.append(self._reconnected)
        self._transport = self.publisher.transport = transport
        self.metrics.connected(transport.name).set_function(lambda: 1.0 if transport.connected else 0.0)
        await self.declare(Topology(exchanges=(Exchange(self.settings.default_exchange),)))
        if self.settings.depth_poll_interval > 0:
            self._depth_task = asyncio.create_task(self._poll_depths(), name="bus-queue-depths")

    def _reconnected(self) -> None:
        self.metrics.reconnects(self.transport.name).inc()

    def _breaker_changed(self, previous: BreakerState, state: BreakerState) -> None:
        level = logging.WARNING if state is BreakerState.OPEN else logging.INFO
        log.log(level, "publish circuit breaker %s -> %s", previous, state)
        self.metrics.set_breaker_state(state)

    async def close(self) -> None:
        if self._depth_task is not None:
            self._depth_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._depth_task
            self._depth_task = None
        for subscription in self._subscriptions:
            await subscription.cancel()
        self._subscriptions.clear()
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- topology -----------------------------------------------------------------------

    async def declare(self, topology: Topology) -> None:
        """Declare exchanges and work queues (with their delay, dead-letter and parking
        queues); the transport declares them again by itself after a reconnect."""
        await self.transport.declare(topology.plan())
        self._topology = self._topology.merge(topology)

    @property
    def topology(self) -> Topology:
        return self._topology

    # -- publishing ---------------------------------------------------------------------

    def envelope(
        self,
        message: BusMessage,
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        transaction_id: str | None = None,
        caused_by: Envelope[BusMessage] | None = None,
        epoch: int | None = None,
        sequence: int | None = None,
        message_id: str | None = None,
    ) -> Envelope[BusMessage]:
        """Wrap ``message`` for publishing; ``caused_by`` carries correlation and transaction on."""
        self._check_publishable(message)
        if caused_by is not None:
            correlation_id = correlation_id or caused_by.correlation_id or caused_by.message_id
            causation_id = causation_id or caused_by.message_id
            transaction_id = transaction_id or caused_by.transaction_id
        return Envelope(
            message,
            message_id=message_id or new_message_id(),
            source=self.settings.service,
            correlation_id=correlation_id,
            causation_id=causation_id,
            transaction_id=transaction_id,
            epoch=epoch,
            sequence=sequence,
        )

    def _check_publishable(self, message: BusMessage) -> None:
        cls = type(message)
        if cls not in self.registry:
            raise MessageValidationError(
                f"{cls.__qualname__} ({getattr(cls, 'message_type', '?')}) is not in this bus's catalog"
            )
        if self.settings.validate_on_publish:
            # Catches instances built with model_construct() or otherwise bypassing
            # validation; off by default because a normally built message is valid.
            try:
                cls.model_validate(message.model_dump(warnings=False))
            except ValidationError as exc:
                raise MessageValidationError(describe_validation_error(cls, exc)) from exc

    def _as_envelope(self, item: BusMessage | Envelope[BusMessage]) -> Envelope[BusMessage]:
        if isinstance(item, Envelope):
            self._check_publishable(item.payload)
            return item
        return self.envelope(item)

    async def publish(
        self,
        message: BusMessage | Envelope[BusMessage],
        *,
        exchange: str | None = None,
        routing_key: str | None = None,
        mandatory: bool = True,
        **meta: Any,
    ) -> Envelope[BusMessage]:
        """Publish one message and return once the broker confirmed it.

        ``meta`` are the envelope fields of ``envelope()`` (correlation_id,
        transaction_id, caused_by, epoch, sequence, ...). ``mandatory`` makes a message
        no queue is bound for an ``UnroutableError`` rather than silently dropped.
        """
        if isinstance(message, BusMessage):
            env = self.envelope(message, **meta)
        elif meta:
            raise TypeError(f"envelope fields {sorted(meta)} cannot be given with a ready Envelope")
        else:
            env = self._as_envelope(message)
        message_type = env.payload.message_type
        await self.publisher.send(
            self._exchange(exchange),
            routing_key or message_type,
            self._outgoing(env),
            {message_type: 1},
            mandatory,
        )
        return env

    async def publish_data(
        self, message_type: str, data: Mapping[str, Any], *, version: int | None = None, **kwargs: Any
    ) -> Envelope[BusMessage]:
        """Validate untrusted data against the catalog, then publish it. A schema problem
        raises ``MessageValidationError`` naming the type, version and failing fields."""
        return await self.publish(self.registry.validate(message_type, data, version), **kwargs)

    async def publish_many(
        self,
        messages: Iterable[BusMessage | Envelope[BusMessage]],
        *,
        exchange: str | None = None,
        routing_key: str | None = None,
        mandatory: bool = True,
    ) -> list[Envelope[BusMessage]]:
        """Publish with pipelined confirms: up to ``max_in_flight`` unconfirmed at once,
        written in order. Raises ``PublishManyError`` listing the unconfirmed ones."""
        envelopes = [self._as_envelope(m) for m in messages]
        target = self._exchange(exchange)
        items = [
            (target, routing_key or env.payload.message_type, self._outgoing(env), env.payload.message_type)
            for env in envelopes
        ]
        errors = await self.publisher.send_many(items, mandatory)
        failed = [(env, error) for env, error in zip(envelopes, errors, strict=True) if error is not None]
        if failed:
            raise PublishManyError(failed, len(envelopes))
        return envelopes

    async def publish_batch(
        self,
        messages: Sequence[BusMessage | Envelope[BusMessage]],
        *,
        exchange: str | None = None,
        routing_key: str | None = None,
        mandatory: bool = True,
    ) -> list[Envelope[BusMessage]]:
        """Publish several logical messages as ONE AMQP message (one confirm, one quorum
        write, one ack). Consumers see them one by one, in order; a failed item is
        retried, dead-lettered or parked on its own."""
        if not messages:
            return []
        if len(messages) > self.settings.max_batch_size:
            raise ConfigurationError(f"batch of {len(messages)} exceeds max_batch_size")
        envelopes = [self._as_envelope(m) for m in messages]
        types = Tally(env.payload.message_type for env in envelopes)
        if routing_key is None:
            if len(types) > 1:
                raise ConfigurationError(f"a batch of mixed types {sorted(types)} needs a routing_key")
            routing_key = envelopes[0].payload.message_type
        out = Outgoing(
            self.codec.encode_batch(envelopes),
            new_message_id(),
            envelopes[0].payload.message_type,
            BATCH_CONTENT_TYPE,
            envelopes[0].correlation_id,
        )
        await self.publisher.send(self._exchange(exchange), routing_key, out, types, mandatory)
        return envelopes

    def _exchange(self, exchange: str | None) -> str:
        return self.settings.default_exchange if exchange is None else exchange

    def _outgoing(self, env: Envelope[BusMessage]) -> Outgoing:
        return Outgoing(
            self.codec.encode(env),
            env.message_id,
            env.payload.message_type,
            ENVELOPE_CONTENT_TYPE,
            env.correlation_id,
        )

    # -- consuming ----------------------------------------------------------------------

    async def subscribe(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int | None = None,
        concurrency: int = 1,
        handler_timeout: float | None = None,
        **options: Any,
    ) -> Subscription:
        """Consume a declared work queue; ``options`` are the other ``ConsumeOptions``
        (dedup, epoch_gate, stream_key)."""
        try:
            work = self._topology.queue(queue)
        except KeyError:
            raise ConfigurationError(
                f"queue {queue!r} is not in the declared topology; declare it first so its "
                "retry, dead-letter and parking queues exist"
            ) from None
        subscription = Subscription(
            work=work,
            handler=handler,
            transport=self.transport,
            codec=self.codec,
            classifier=self.classifier,
            metrics=self.metrics,
            options=ConsumeOptions(
                prefetch=prefetch or self.settings.prefetch,
                concurrency=concurrency,
                handler_timeout=handler_timeout or self.settings.handler_timeout,
                **options,
            ),
            publish_timeout=self.settings.publish_timeout,
        )
        await subscription.start()
        self._subscriptions.append(subscription)
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        await subscription.cancel()
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    # -- health and depth ---------------------------------------------------------------

    def health(self) -> BusHealth:
        return assess(self.settings.mode.value, self._transport, self.breaker, self._fallback_reason)

    async def queue_depths(self, roles: Iterable[QueueRole] = tuple(QueueRole)) -> dict[str, int]:
        """Ready messages per declared queue of the given roles; also sets the depth gauge."""
        wanted = set(roles)
        depths: dict[str, int] = {}
        for decl in self._topology.plan().queues:
            if decl.role in wanted:
                depths[decl.name] = depth = await self.transport.queue_depth(decl.name)
                self.metrics.queue_depth(decl.name, decl.role.value).set(depth)
        return depths

    async def _poll_depths(self) -> None:
        while True:
            await asyncio.sleep(self.settings.depth_poll_interval)
            try:
                await self.queue_depths((QueueRole.WORK, QueueRole.DEAD, QueueRole.PARKING))
            except Exception as exc:  # a failed poll must not end the polling
                log.debug("queue depth poll failed: %r", exc)

    # -- synchronous wrapper --------------------------------------------------------------

    def publish_sync(
        self, message: BusMessage, *, timeout: float | None = None, **kwargs: Any
    ) -> Envelope[BusMessage]:
        """``publish`` for synchronous code (scripts). Starts the bus on a private loop
        thread on first use; from inside the bus's own event loop use ``await publish``."""
        return self._blocking(lambda: self.publish(message, **kwargs), timeout)

    def close_sync(self, timeout: float | None = 30.0) -> None:
        if self._loop_thread is None:
            return
        with contextlib.suppress(Exception):
            self._loop_thread.run(self.close, timeout)
        self._loop_thread.stop()
        self._loop_thread = None

    def __enter__(self) -> Self:
        self._blocking(self._noop, None)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close_sync()

    async def _noop(self) -> None:
        return None

    def _blocking(self, factory: Callable[[], Coroutine[Any, Any, T]], timeout: float | None) -> T:
        here = running_loop()
        if here is not None and here is self._loop:
            raise RuntimeError("publish_sync() called on the bus's own event loop; use await publish()")
        if self._loop is not None and self._loop_thread is None:
            # Started by async code on another thread's loop: hand the call to it.
            return asyncio.run_coroutine_threadsafe(factory(), self._loop).result(timeout)
        if self._loop_thread is None:
            self._loop_thread = LoopThread()
            self._loop_thread.run(self.start, self.settings.connect_timeout * 4)

        return self._loop_thread.run(factory, timeout)

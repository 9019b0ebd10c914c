"""The in-memory transport: a small broker inside the process, for the demo and tests.

It models exactly the RabbitMQ behaviour the bus relies on, from the same declaration
arguments: topic/direct/fanout routing, the default exchange, manual acks with prefetch,
requeue with a delivery count (``x-delivery-count``) and ``x-delivery-limit``,
dead-lettering on reject / expiry / delivery limit with an ``x-death`` record, per-message
TTL, ``x-max-length`` with reject-publish, and single-active-consumer. A "confirm" is the
message being queued. Nothing survives the process, which is why ``auto`` mode reports
degraded health when it falls back to this transport.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from trading_system.bus.errors import PublishError, PublishNackedError, UnroutableError
from trading_system.bus.topology import ExchangeKind, QueueBinding, TopologyPlan
from trading_system.bus.transport import (
    DELIVERY_COUNT_HEADER,
    ConsumerHandle,
    Delivery,
    DeliveryCallback,
    Outgoing,
    Transport,
)


@dataclass(slots=True)
class _Message:
    body: bytes
    content_type: str | None
    message_id: str | None
    message_type: str | None
    correlation_id: str | None
    headers: dict[str, Any]
    expiration: float | None = None
    delivery_count: int = 0
    redelivered: bool = False
    timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, out: Outgoing) -> _Message:
        return cls(
            out.body,
            out.content_type,
            out.message_id,
            out.message_type,
            out.correlation_id,
            dict(out.headers or {}),
            out.expiration,
        )

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def copy(self, headers: dict[str, Any], expiration: float | None = None) -> _Message:
        """A new message with this body and identity (what a dead-letter or a route makes)."""
        return _Message(
            self.body,
            self.content_type,
            self.message_id,
            self.message_type,
            self.correlation_id,
            headers,
            expiration,
        )


@dataclass(eq=False)
class _Queue:
    name: str
    arguments: Mapping[str, Any]
    ready: deque[_Message] = field(default_factory=deque)
    consumers: list[_Consumer] = field(default_factory=list)
    round_robin: int = 0

    @property
    def delivery_limit(self) -> int | None:
        value = self.arguments.get("x-delivery-limit")
        return int(value) if value is not None else None

    @property
    def dead_letter_key(self) -> str | None:
        if "x-dead-letter-exchange" not in self.arguments:
            return None
        return str(self.arguments.get("x-dead-letter-routing-key", self.name))

    @property
    def single_active(self) -> bool:
        return bool(self.arguments.get("x-single-active-consumer"))

    @property
    def max_length(self) -> int | None:
        value = self.arguments.get("x-max-length")
        return int(value) if value is not None else None


class MemoryDelivery(Delivery):
    def __init__(
        self, broker: InMemoryTransport, queue: _Queue, message: _Message, consumer: _Consumer | None
    ):
        self._broker = broker
        self._queue = queue
        self._message = message
        self._consumer = consumer
        self.settled = False
        self.seq = next(broker._tags)
        self.queue = queue.name
        self.body = message.body
        self.content_type = message.content_type
        self.message_id = message.message_id
        self.message_type = message.message_type
        self.correlation_id = message.correlation_id
        self.headers = {**message.headers, DELIVERY_COUNT_HEADER: message.delivery_count}
        self.redelivered = message.redelivered

    def _settle(self) -> bool:
        # A delivery whose consumer was cancelled has already gone back to the queue;
        # settling it again is a no-op, as acking on a closed channel achieves nothing.
        if self.settled:
            return False
        self.settled = True
        if self._consumer is not None:
            self._consumer.unsettled.discard(self)
        return True

    async def ack(self) -> None:
        if self._settle():
            self._broker._dispatch(self._queue)

    async def reject(self, requeue: bool) -> None:
        if not self._settle():
            return
        if requeue:
            self._broker._return(self._queue, self._message)
        else:
            self._broker._dead_letter(self._queue, self._message, "rejected")
        self._broker._dispatch(self._queue)


class _Consumer(ConsumerHandle):
    def __init__(self, broker: InMemoryTransport, queue: _Queue, callback: DeliveryCallback, prefetch: int):
        self._broker = broker
        self.queue = queue
        self.callback = callback
        self.prefetch = prefetch
        self.unsettled: set[MemoryDelivery] = set()

    @property
    def has_capacity(self) -> bool:
        return len(self.unsettled) < self.prefetch

    async def cancel(self) -> None:
        self._broker._remove_consumer(self)


@functools.lru_cache(maxsize=4096)
def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: dot-separated words, ``*`` is one word, ``#`` zero or more."""
    words = pattern.split(".")
    keys = routing_key.split(".") if routing_key else []
    # reachable[j]: the pattern prefix matched so far can end right before keys[j].
    reachable = [True] + [False] * len(keys)
    for word in words:
        nxt = [False] * (len(keys) + 1)
        for j, ok in enumerate(reachable):
            if not ok:
                continue
            if word == "#":
                for k in range(j, len(keys) + 1):
                    nxt[k] = True
                break
            if j < len(keys) and (word == "*" or word == keys[j]):
                nxt[j + 1] = True
        reachable = nxt
    return reachable[len(keys)]


class InMemoryTransport(Transport):
    name = "in_memory"

    def __init__(self) -> None:
        super().__init__()
        self._queues: dict[str, _Queue] = {}
        self._exchanges: dict[str, ExchangeKind] = {}
        self._bindings: dict[str, list[QueueBinding]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._connected = False
        self._tags = itertools.count(1)

    @property
    def connected(self) -> bool:
        return self._connected

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        self._connected = False
        for queue in self._queues.values():
            for consumer in list(queue.consumers):
                self._remove_consumer(consumer)
            for message in queue.ready:
                message.stop_timer()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def declare(self, plan: TopologyPlan) -> None:
        for exchange in plan.exchanges:
            self._exchanges.setdefault(exchange.name, exchange.kind)
            self._bindings.setdefault(exchange.name, [])
        for decl in plan.queues:
            if decl.name not in self._queues:
                self._queues[decl.name] = _Queue(decl.name, dict(decl.arguments))
        for binding in plan.bindings:
            entries = self._bindings.setdefault(binding.exchange, [])
            if binding not in entries:
                entries.append(binding)

    # -- publishing ---------------------------------------------------------------------

    def _route(self, exchange: str, routing_key: str) -> list[_Queue]:
        if exchange == "":
            queue = self._queues.get(routing_key)
            return [] if queue is None else [queue]
        kind = self._exchanges.get(exchange)
        if kind is None:
            raise PublishError(f"exchange {exchange!r} does not exist (NOT_FOUND)")
        names: dict[str, None] = {}
        for binding in self._bindings.get(exchange, []):
            if (
                kind is ExchangeKind.FANOUT
                or (kind is ExchangeKind.DIRECT and binding.routing_key == routing_key)
                or (kind is ExchangeKind.TOPIC and topic_matches(binding.routing_key, routing_key))
            ):
                names[binding.queue] = None
        return [self._queues[name] for name in names if name in self._queues]

    async def publish(
        self, exchange: str, routing_key: str, message: Outgoing, *, mandatory: bool, confirm_timeout: float
    ) -> None:
        if not self._connected:
            raise PublishError("in-memory transport is closed")
        targets = self._route(exchange, routing_key)
        if not targets:
            if mandatory:
                raise UnroutableError(
                    f"unroutable: no queue bound for {routing_key!r} on exchange {exchange!r} "
                    f"(message {message.message_id})"
                )
            return
        for queue in targets:
            limit = queue.max_length
            if limit is not None and len(queue.ready) >= limit:
                raise PublishNackedError(f"queue {queue.name} is full (x-max-length={limit}, reject-publish)")
        for queue in targets:
            self._enqueue(queue, _Message.of(message))

    # -- the queue machinery ------------------------------------------------------------

    def _enqueue(self, queue: _Queue, message: _Message, *, front: bool = False) -> None:
        if front:
            queue.ready.appendleft(message)
        else:
            queue.ready.append(message)
        if message.expiration is not None and message.timer is None:
            loop = asyncio.get_running_loop()
            message.timer = loop.call_later(max(0.0, message.expiration), self._expire, queue, message)
        self._dispatch(queue)

    def _expire(self, queue: _Queue, message: _Message) -> None:
        message.timer = None
        try:
            queue.ready.remove(message)
        except ValueError:
            return  # delivered meanwhile
        self._dead_letter(queue, message, "expired")

    def _return(self, queue: _Queue, message: _Message) -> None:
        message.delivery_count += 1
        message.redelivered = True
        limit = queue.delivery_limit
        if limit is not None and message.delivery_count > limit:
            self._dead_letter(queue, message, "delivery_limit")
        else:
            self._enqueue(queue, message, front=True)

    def _dead_letter(self, queue: _Queue, message: _Message, reason: str) -> None:
        message.stop_timer()
        target_name = queue.dead_letter_key
        target = None if target_name is None else self._queues.get(target_name)
        if target is None:
            return  # RabbitMQ drops it too when there is nowhere to dead-letter to
        headers = dict(message.headers)
        headers.pop(DELIVERY_COUNT_HEADER, None)
        death: dict[str, Any] = {
            "count": 1,
            "reason": reason,
            "queue": queue.name,
            "time": datetime.now(UTC),
            "exchange": "",
            "routing-keys": [queue.name],
        }
        if message.expiration is not None:
            death["original-expiration"] = str(round(message.expiration * 1000))
        headers["x-death"] = [death, *headers.get("x-death", [])]
        headers.setdefault("x-first-death-reason", reason)
        headers.setdefault("x-first-death-queue", queue.name)
        headers.setdefault("x-first-death-exchange", "")
        self._enqueue(target, message.copy(headers))

    def _dispatch(self, queue: _Queue) -> None:
        while queue.ready and queue.consumers:
            consumer = self._next_consumer(queue)
            if consumer is None:
                return
            message = queue.ready.popleft()
            message.stop_timer()
            delivery = MemoryDelivery(self, queue, message, consumer)
            consumer.unsettled.add(delivery)
            task = asyncio.get_running_loop().create_task(consumer.callback(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _next_consumer(self, queue: _Queue) -> _Consumer | None:
        if queue.single_active:
            active = queue.consumers[0]
            return active if active.has_capacity else None
        count = len(queue.consumers)
        for offset in range(count):
            candidate = queue.consumers[(queue.round_robin + offset) % count]
            if candidate.has_capacity:
                queue.round_robin = (queue.round_robin + offset + 1) % count
                return candidate
        return None

    def _remove_consumer(self, consumer: _Consumer) -> None:
        queue = consumer.queue
        if consumer in queue.consumers:
            queue.consumers.remove(consumer)
        # Unsettled deliveries of a cancelled consumer go back, counted as failed ones,
        # like a quorum queue does when a consumer's channel closes.
        for delivery in sorted(consumer.unsettled, key=lambda d: -d.seq):
            delivery.settled = True
            self._return(queue, delivery._message)
        consumer.unsettled.clear()
        self._dispatch(queue)

    # -- consuming ----------------------------------------------------------------------

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            raise KeyError(f"queue {name!r} does not exist")
        return queue

    async def consume(self, queue: str, callback: DeliveryCallback, *, prefetch: int) -> ConsumerHandle:
        target = self._queue(queue)
        consumer = _Consumer(self, target, callback, prefetch)
        target.consumers.append(consumer)
        self._dispatch(target)
        return consumer

    async def get(self, queue: str) -> Delivery | None:
        target = self._queue(queue)
        if not target.ready:
            return None
        message = target.ready.popleft()
        message.stop_timer()
        return MemoryDelivery(self, target, message, None)

    async def queue_depth(self, queue: str) -> int:
        return len(self._queue(queue).ready)

"""The broker topology, described once and expanded into concrete declarations.

A service describes what it needs (exchanges, work queues and their bindings, retry
policy, delivery limit, single-active-consumer); ``Topology.plan()`` expands every work
queue ``Q`` into the queues that make failure handling work:

``Q``               quorum work queue; a rejected message, or one delivered more than
                    ``delivery_limit`` times, is dead-lettered to ``Q.dead``
``Q.retry.<n>``     delay queue for retry number n; per-message TTL, dead-lettered back
                    to ``Q`` when it expires
``Q.dead``          dead-letter queue: permanent errors and the broker's delivery-limit
``Q.parking``       parking queue: retries exhausted, poison; inspected and re-published
                    with ``python -m trading_system.bus.parking``

Both transports declare from the same plan, so the in-memory broker and RabbitMQ agree on
names and arguments. Dead-lettering uses the default exchange with an explicit routing
key: a retry must go back to the one queue that failed, not to every queue bound to the
original exchange.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from trading_system.bus.retry import RetryPolicy

DEFAULT_EXCHANGE = "ts.events"


class ExchangeKind(enum.StrEnum):
    DIRECT = "direct"
    TOPIC = "topic"
    FANOUT = "fanout"


class QueueRole(enum.StrEnum):
    WORK = "work"
    RETRY = "retry"
    DEAD = "dead"
    PARKING = "parking"


@dataclass(frozen=True, slots=True)
class Exchange:
    name: str
    kind: ExchangeKind = ExchangeKind.TOPIC


@dataclass(frozen=True, slots=True)
class Binding:
    exchange: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class WorkQueue:
    """A queue consumers read from, with everything its failure handling needs.

    ``delivery_limit`` is how many times a message may be delivered without being settled
    (consumer crashed, handler timed out, unknown error) before it is parked.
    ``max_length`` with reject-publish makes publishers see nacks instead of the queue
    growing without bound.
    """

    name: str
    bindings: tuple[Binding, ...] = ()
    single_active_consumer: bool = False
    delivery_limit: int = 5
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_length: int | None = None
    replicas: int | None = None

    def __post_init__(self) -> None:
        if not self.name or self.name.startswith("amq."):
            raise ValueError(f"invalid queue name {self.name!r}")
        if self.delivery_limit < 1:
            raise ValueError("delivery_limit must be at least 1")


@dataclass(frozen=True, slots=True)
class QueueDeclaration:
    name: str
    role: QueueRole
    work_queue: str
    arguments: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, slots=True)
class QueueBinding:
    queue: str
    exchange: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class TopologyPlan:
    exchanges: tuple[Exchange, ...]
    queues: tuple[QueueDeclaration, ...]
    bindings: tuple[QueueBinding, ...]


def retry_queue_name(queue: str, tier: int) -> str:
    return f"{queue}.retry.{tier}"


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}.dead"


def parking_queue_name(queue: str) -> str:
    return f"{queue}.parking"


# x-overflow=reject-publish is what RabbitMQ requires for at-least-once dead-lettering:
# with drop-head a full target could silently lose the dead-lettered message.
_QUORUM = {"x-queue-type": "quorum"}
_SAFE_DEAD_LETTERING = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


@dataclass(frozen=True)
class Topology:
    exchanges: tuple[Exchange, ...] = ()
    queues: tuple[WorkQueue, ...] = ()

    def __post_init__(self) -> None:
        names = [q.name for q in self.queues]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate work queue in topology: {names}")
        known = {e.name for e in self.exchanges} | {""}
        for queue in self.queues:
            for binding in queue.bindings:
                if binding.exchange not in known:
                    raise ValueError(f"{queue.name} binds to undeclared exchange {binding.exchange!r}")

    def merge(self, other: Topology) -> Topology:
        exchanges = {e.name: e for e in (*self.exchanges, *other.exchanges)}
        queues = {q.name: q for q in (*self.queues, *other.queues)}
        return Topology(tuple(exchanges.values()), tuple(queues.values()))

    def queue(self, name: str) -> WorkQueue:
        for queue in self.queues:
            if queue.name == name:
                return queue
        raise KeyError(f"work queue {name!r} is not in the topology")

    def plan(self) -> TopologyPlan:
        queues: list[QueueDeclaration] = []
        bindings: list[QueueBinding] = []
        for work in self.queues:
            queues.extend(_expand(work))
            bindings.extend(QueueBinding(work.name, b.exchange, b.routing_key) for b in work.bindings)
        return TopologyPlan(self.exchanges, tuple(queues), tuple(bindings))


def _expand(work: WorkQueue) -> Iterable[QueueDeclaration]:
    base: dict[str, Any] = dict(_QUORUM)
    if work.replicas is not None:
        base["x-quorum-initial-group-size"] = work.replicas
    args: dict[str, Any] = {
        **base,
        **_SAFE_DEAD_LETTERING,
        # The broker delivers a message up to delivery_limit + 1 times. The consumer parks
        # it on that last delivery (x-delivery-count == delivery_limit) without running
        # the handler; the broker dead-letters it only if the consumer dies there too.
        "x-delivery-limit": work.delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue_name(work.name),
    }
    if work.single_active_consumer:
        args["x-single-active-consumer"] = True
    if work.max_length is not None:
        args["x-max-length"] = work.max_length
    yield QueueDeclaration(work.name, QueueRole.WORK, work.name, args)
    for tier in range(1, work.retry.tiers + 1):
        yield QueueDeclaration(
            retry_queue_name(work.name, tier),
            QueueRole.RETRY,
            work.name,
            {
                **base,
                **_SAFE_DEAD_LETTERING,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": work.name,
            },
        )
    yield QueueDeclaration(dead_letter_queue_name(work.name), QueueRole.DEAD, work.name, dict(base))
    yield QueueDeclaration(parking_queue_name(work.name), QueueRole.PARKING, work.name, dict(base))

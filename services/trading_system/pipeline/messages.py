"""What the in-process pipeline puts on the bus besides the catalog, and its topology.

Commands travel as catalog messages (``order.new``, ``order.cancel``) to one ordered
queue the venue consumes (the matching service's active member, or the demo's in-process
``VenueAdapter``). The venue answers each command with ONE ``matching.events`` message
(``matching.service.messages.MatchingEvents``) carrying the engine's event tuples in
sequence order; the coordinator, settlement and execution each read their own copy.

Between the execution service and the coordinator replicas (the deployed pipeline, where
they are separate processes): execution publishes a placement request as a catalog
``order.new`` with routing key ``coordinator.place`` (a cancel as ``order.cancel`` with
``coordinator.cancel``) to the shared ``coordinator.requests`` queue, which all coordinator
replicas consume; each transaction's end is announced as a catalog ``txn.outcome`` with
routing key ``txn.outcome``, which execution reads from ``execution.outcomes``.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

from trading_system.bus import Binding, Exchange, MessageBus, Topology, WorkQueue
from trading_system.bus.catalog import default_registry
from trading_system.bus.messages import MessageRegistry
from trading_system.matching.service.messages import MatchingEvents

EXCHANGE = "ts.events"
COMMANDS_QUEUE = "matching.commands"
COORDINATOR_QUEUE = "coordinator.events"
SETTLEMENT_QUEUE = "settlement.events"
EXECUTION_QUEUE = "execution.events"
REQUESTS_QUEUE = "coordinator.requests"
OUTCOMES_QUEUE = "execution.outcomes"
EVENTS_KEY = "matching.events"
# The embedded venue publishes on EVENTS_KEY, a matching service on EVENTS_KEY.<engine id>.
EVENTS_BINDING = "matching.events.#"
PLACE_KEY = "coordinator.place"
CANCEL_KEY = "coordinator.cancel"
OUTCOME_KEY = "txn.outcome"


def registry() -> MessageRegistry:
    reg = default_registry()
    reg.register(MatchingEvents)
    return reg


__all__ = ["EVENTS_BINDING", "EVENTS_KEY", "MatchingEvents", "Names", "make_bus", "registry", "topology"]


@dataclass(frozen=True, slots=True)
class Names:
    """Exchange and queue names; a namespace keeps a demo off a shared broker's traffic."""

    exchange: str = EXCHANGE
    commands: str = COMMANDS_QUEUE
    coordinator: str = COORDINATOR_QUEUE
    settlement: str = SETTLEMENT_QUEUE
    execution: str = EXECUTION_QUEUE
    requests: str = REQUESTS_QUEUE
    outcomes: str = OUTCOMES_QUEUE

    @classmethod
    def namespaced(cls, namespace: str) -> Names:
        if not namespace:
            return cls()
        return cls(*(f"{namespace}.{name}" for name in astuple(cls())))


DEFAULT_NAMES = Names()


def topology(names: Names = DEFAULT_NAMES) -> Topology:
    commands = tuple(Binding(names.exchange, key) for key in ("order.new", "order.cancel"))
    events = (Binding(names.exchange, EVENTS_BINDING),)
    return Topology(
        exchanges=(Exchange(names.exchange),),
        queues=(
            WorkQueue(names.commands, commands, single_active_consumer=True),
            WorkQueue(names.coordinator, events),
            WorkQueue(names.settlement, events),
            WorkQueue(names.execution, events),
            WorkQueue(names.requests, tuple(Binding(names.exchange, k) for k in (PLACE_KEY, CANCEL_KEY))),
            WorkQueue(names.outcomes, (Binding(names.exchange, OUTCOME_KEY),)),
        ),
    )


def make_bus(url: str | None, service: str = "demo") -> MessageBus:
    """In-memory bus unless ``url`` names a RabbitMQ broker (then no silent fallback)."""
    if url:
        urls = [u.strip() for u in url.split(",") if u.strip()]  # several nodes: comma-separated
        return MessageBus.from_env(mode="rabbitmq", urls=urls, service=service, registry=registry())
    return MessageBus.from_env(mode="in_memory", service=service, registry=registry())

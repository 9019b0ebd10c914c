"""Bus messages of the matching service (registered on the service's own registry)."""

from __future__ import annotations

from typing import Any

from trading_system.bus.messages import BusMessage, MessageRegistry

COMMAND_ROUTING_KEY = "matching.command"
EVENTS_ROUTING_KEY = "matching.events"
# The coordinator's catalog orders, taken by a member configured as the pipeline's venue.
ORDER_ROUTING_KEYS = ("order.new", "order.cancel")


class MatchingCommand(BusMessage):
    """One core command as plain data (``codec.command_to_dict``)."""

    message_type = "matching.command"
    version = 1

    engine_id: str
    command: dict[str, Any]


class MatchingCommandBatch(BusMessage):
    """Several core commands in order, for producers that batch: one AMQP message, one
    handler call, the commands submitted in this order (see docs/matching.md)."""

    message_type = "matching.commands"
    version = 1

    engine_id: str
    commands: list[dict[str, Any]]


class MatchingEvents(BusMessage):
    """The events one command produced, in engine sequence order: what every consumer of
    the venue reads (coordinator, settlement, execution), from the matching service and
    from the embedded demo's in-process venue alike.

    ``events`` are the core's event tuples (``matching.core.decode_event`` names their
    fields; enums travel as their integer values). ``epoch`` and ``seq`` are the
    publisher's epoch and the journal sequence of the command (also on the envelope);
    the message id is ``<venue>:<seq>`` whatever the epoch, so a consumer deduplicating
    by message id drops what a promoted member republishes. The embedded venue has no
    journal: it sends epoch 0 and its own counter.
    """

    message_type = "matching.events"
    version = 1

    venue: str
    events: tuple[tuple[Any, ...], ...]
    epoch: int = 0
    seq: int = 0
    command_id: str = ""


def register(registry: MessageRegistry) -> MessageRegistry:
    for cls in (MatchingCommand, MatchingCommandBatch, MatchingEvents):
        if cls not in registry:
            registry.register(cls)
    return registry

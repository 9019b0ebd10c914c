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
    """The events of one journaled command, stamped ``(epoch, seq)`` (also on the envelope)."""

    message_type = "matching.events"
    version = 1

    engine_id: str
    epoch: int
    seq: int
    command_id: str
    events: list[dict[str, Any]]


def register(registry: MessageRegistry) -> MessageRegistry:
    for cls in (MatchingCommand, MatchingCommandBatch, MatchingEvents):
        if cls not in registry:
            registry.register(cls)
    return registry

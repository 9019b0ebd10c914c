"""The venue adapter: bus commands in, matching engine, one ``matching.events`` out.

The conversion between catalog messages and engine commands is pure
(:func:`to_engine_command`); :class:`VenueAdapter` only adds the bus. It keeps no journal
(the embedded demo has no standby to replay one), so its logical clock is a counter.
"""

from __future__ import annotations

from typing import Any

from trading_system.bus import Envelope, MessageBus, PermanentError
from trading_system.matching.core import Cancel, MatchingEngine, NewOrder, SymbolSpec
from trading_system.matching.service.codec import CommandDecodeError
from trading_system.matching.service.orders import (
    ABORT_CANCEL_PREFIX,
    CANCEL_PREFIX,
    NEW_PREFIX,
    command_from_order,
)
from trading_system.pipeline.messages import DEFAULT_NAMES, EVENTS_KEY, MatchingEvents, Names

__all__ = [
    "ABORT_CANCEL_PREFIX",
    "CANCEL_PREFIX",
    "NEW_PREFIX",
    "VenueAdapter",
    "to_engine_command",
    "trade_id",
]


def to_engine_command(message: object, message_id: str, ts: int) -> NewOrder | Cancel:
    """The engine command for a catalog order message (see ``matching.service.orders``)."""
    try:
        return command_from_order(message, message_id, ts)
    except CommandDecodeError as exc:
        raise PermanentError(str(exc)) from exc


class VenueAdapter:
    """Consumes the command queue in order and publishes each command's events."""

    def __init__(
        self, bus: MessageBus, specs: list[SymbolSpec], venue: str = "venue-1", names: Names = DEFAULT_NAMES
    ) -> None:
        self.bus = bus
        self.names = names
        self.venue = venue
        self.engine = MatchingEngine(specs)
        self.commands = 0
        self.batches_published = 0
        self._ts = 0

    async def start(self) -> None:
        await self.bus.subscribe(self.names.commands, self.handle)

    async def handle(self, envelope: Envelope[Any]) -> None:
        self._ts += 1
        command = to_engine_command(envelope.payload, envelope.message_id, self._ts)
        events = self.engine.process(command)
        self.commands += 1
        if events:
            message = MatchingEvents(venue=self.venue, events=tuple(tuple(e) for e in events))
            exchange = self.names.exchange
            await self.bus.publish(message, exchange=exchange, routing_key=EVENTS_KEY, caused_by=envelope)
            self.batches_published += 1


def trade_id(venue: str, symbol: str, seq: int) -> str:
    """Venue-unique trade id: the engine's sequence number prefixed by venue and symbol."""
    return f"{venue}:{symbol}:{seq}"

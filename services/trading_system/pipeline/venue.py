"""The venue adapter: bus commands in, matching engine, one ``matching.events`` out.

The conversion between catalog messages and engine commands is pure
(:func:`to_engine_command`); :class:`VenueAdapter` only adds the bus. It keeps no journal
(the embedded demo has no standby to replay one), so its logical clock is a counter.
"""

from __future__ import annotations

from typing import Any

from trading_system.bus import Envelope, MessageBus, PermanentError
from trading_system.bus.catalog import OrderCancel, OrderNew
from trading_system.bus.catalog.common import OrderType as WireOrderType
from trading_system.bus.catalog.common import Side as WireSide
from trading_system.bus.catalog.common import TimeInForce as WireTif
from trading_system.matching.core import (
    Cancel,
    MatchingEngine,
    NewOrder,
    OrderType,
    Side,
    SymbolSpec,
    TimeInForce,
)
from trading_system.pipeline.messages import DEFAULT_NAMES, EVENTS_KEY, MatchingEvents, Names

NEW_PREFIX = "new:"
CANCEL_PREFIX = "cancel:"

_SIDES = {WireSide.BUY: Side.BUY, WireSide.SELL: Side.SELL}
_TYPES = {WireOrderType.LIMIT: OrderType.LIMIT, WireOrderType.MARKET: OrderType.MARKET}
_TIFS = {WireTif.GTC: TimeInForce.GTC, WireTif.IOC: TimeInForce.IOC, WireTif.FOK: TimeInForce.FOK}


def to_engine_command(message: object, message_id: str, ts: int) -> NewOrder | Cancel:
    """The engine command for a catalog order message (integer units on both sides)."""
    if isinstance(message, OrderNew):
        if message.order_type not in _TYPES or message.time_in_force not in _TIFS:
            raise PermanentError(f"unsupported order {message.order_type}/{message.time_in_force}")
        return NewOrder(
            cmd_id=NEW_PREFIX + message.order_id,
            ts=ts,
            symbol=message.symbol,
            order_id=message.order_id,
            account=message.account,
            side=_SIDES[message.side],
            qty=int(message.qty),
            price=int(message.price or 0),
            order_type=_TYPES[message.order_type],
            tif=_TIFS[message.time_in_force],
            post_only=message.post_only,
        )
    if isinstance(message, OrderCancel):
        return Cancel(
            cmd_id=CANCEL_PREFIX + message_id,
            ts=ts,
            symbol=message.symbol,
            order_id=message.order_id,
            account=message.account,
        )
    raise PermanentError(f"the venue does not take {type(message).__name__}")


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

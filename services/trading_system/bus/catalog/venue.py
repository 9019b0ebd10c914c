"""The exchange/venue side: trading status and the venue's answers to orders sent to it."""

from __future__ import annotations

import enum

from trading_system.bus.catalog.common import Identifier, Reason, Symbol
from trading_system.bus.messages import BusMessage


class VenueState(enum.StrEnum):
    OPEN = "open"
    HALTED = "halted"
    CLOSED = "closed"


class VenueStatus(BusMessage):
    message_type = "venue.status"
    venue: Identifier
    state: VenueState
    symbols: tuple[Symbol, ...] = ()
    reason: Reason = ""


class VenueOrderAck(BusMessage):
    message_type = "venue.order_ack"
    venue: Identifier
    order_id: Identifier
    venue_order_id: Identifier


class VenueOrderReject(BusMessage):
    message_type = "venue.order_reject"
    venue: Identifier
    order_id: Identifier
    reason_code: Identifier
    reason: Reason = ""


class VenueCancelAck(BusMessage):
    message_type = "venue.cancel_ack"
    venue: Identifier
    order_id: Identifier
    venue_order_id: Identifier | None = None


MESSAGES: tuple[type[BusMessage], ...] = (VenueStatus, VenueOrderAck, VenueOrderReject, VenueCancelAck)

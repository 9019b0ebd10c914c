"""Catalog order messages (``order.new``, ``order.cancel``) as matching engine commands.

The coordinator speaks the bus catalog; the engine takes core commands. The conversion
happens once, before the journal, so a replay never depends on it. Prices and
quantities are integers in the symbol's units on both sides.
"""

from __future__ import annotations

from trading_system.bus.catalog import OrderCancel, OrderNew
from trading_system.bus.catalog.common import OrderType as WireOrderType
from trading_system.bus.catalog.common import Side as WireSide
from trading_system.bus.catalog.common import TimeInForce as WireTif
from trading_system.matching.core import Cancel, NewOrder, OrderType, Side, TimeInForce
from trading_system.matching.service.codec import CommandDecodeError

NEW_PREFIX = "new:"
CANCEL_PREFIX = "cancel:"
# The message id of a coordinator's compensating cancel starts with this, so its command
# id (CANCEL_PREFIX + message id) tells settlement an aborted order is gone.
ABORT_CANCEL_PREFIX = "abort-"

_SIDES = {WireSide.BUY: Side.BUY, WireSide.SELL: Side.SELL}
_TYPES = {WireOrderType.LIMIT: OrderType.LIMIT, WireOrderType.MARKET: OrderType.MARKET}
_TIFS = {WireTif.GTC: TimeInForce.GTC, WireTif.IOC: TimeInForce.IOC, WireTif.FOK: TimeInForce.FOK}


def command_from_order(message: object, message_id: str, ts: int) -> NewOrder | Cancel:
    """The engine command for a catalog order message.

    ``cmd_id`` is derived from the order id (a new order) or the bus message id (a
    cancel), so a redelivered message is the same command and the journal ignores it.
    """
    if isinstance(message, OrderNew):
        if message.order_type not in _TYPES or message.time_in_force not in _TIFS:
            raise CommandDecodeError(f"unsupported order {message.order_type}/{message.time_in_force}")
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
    raise CommandDecodeError(f"the matching engine does not take {type(message).__name__}")

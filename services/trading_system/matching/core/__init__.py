"""Pure, deterministic price-time matching core (no I/O).

Other services import from here; the submodules are implementation detail.

``BUILD`` says whether the mypyc-compiled modules were imported ("compiled", built by
scripts/build_accelerated.py) or the plain sources ("pure-python"); both emit the same
events for the same commands.
"""

from trading_system.matching.core import engine as _engine
from trading_system.matching.core.engine import MatchingEngine
from trading_system.matching.core.types import (
    EVENT_RECORDS,
    AcceptedEvent,
    AddSymbol,
    AdvanceTime,
    BboEvent,
    BookTop,
    Cancel,
    CancelledEvent,
    CancelReason,
    Command,
    CommandId,
    DepthLevel,
    DepthSnapshot,
    Event,
    EventKind,
    EventRecord,
    ExpiredEvent,
    MassCancel,
    NewOrder,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RejectedEvent,
    RejectReason,
    Replace,
    ReplacedEvent,
    Side,
    StpMode,
    SymbolAddedEvent,
    SymbolSpec,
    TimeInForce,
    TradeEvent,
    TriggeredEvent,
    decode_event,
    event_to_dict,
    order_updates,
)

BUILD = "pure-python" if _engine.__file__ is None or _engine.__file__.endswith(".py") else "compiled"

__all__ = [
    "BUILD",
    "EVENT_RECORDS",
    "AcceptedEvent",
    "AddSymbol",
    "AdvanceTime",
    "BboEvent",
    "BookTop",
    "Cancel",
    "CancelReason",
    "CancelledEvent",
    "Command",
    "CommandId",
    "DepthLevel",
    "DepthSnapshot",
    "Event",
    "EventKind",
    "EventRecord",
    "ExpiredEvent",
    "MassCancel",
    "MatchingEngine",
    "NewOrder",
    "OrderStatus",
    "OrderType",
    "OrderUpdate",
    "RejectReason",
    "RejectedEvent",
    "Replace",
    "ReplacedEvent",
    "Side",
    "StpMode",
    "SymbolAddedEvent",
    "SymbolSpec",
    "TimeInForce",
    "TradeEvent",
    "TriggeredEvent",
    "decode_event",
    "event_to_dict",
    "order_updates",
]

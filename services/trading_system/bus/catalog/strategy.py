"""Strategy output: a trading signal for a symbol."""

from __future__ import annotations

import enum

from pydantic import Field

from trading_system.bus.catalog.common import Identifier, Quantity, Reason, Symbol
from trading_system.bus.messages import BusMessage


class Direction(enum.StrEnum):
    LONG = "long"
    SHORT = "short"
    FLAT = "flat"


class StrategySignal(BusMessage):
    message_type = "strategy.signal"
    strategy_id: Identifier
    symbol: Symbol
    direction: Direction
    strength: float = Field(ge=-1.0, le=1.0, allow_inf_nan=False)
    target_qty: Quantity | None = None
    reason: Reason = ""


MESSAGES: tuple[type[BusMessage], ...] = (StrategySignal,)

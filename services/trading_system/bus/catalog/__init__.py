"""The message catalog, grouped by subsystem; ``CATALOG`` registers every type below."""

from __future__ import annotations

from trading_system.bus.catalog import (
    component,
    market_data,
    orders,
    position,
    risk,
    strategy,
    system,
    transaction,
    venue,
)
from trading_system.bus.catalog.component import ComponentHeartbeat, ComponentStatus
from trading_system.bus.catalog.market_data import BestBidOffer, DepthSnapshot, PriceLevel, TradePrint
from trading_system.bus.catalog.orders import (
    OrderAccepted,
    OrderCancel,
    OrderCancelled,
    OrderExpired,
    OrderFill,
    OrderNew,
    OrderRejected,
    OrderReplace,
)
from trading_system.bus.catalog.position import BalanceUpdate, PositionUpdate
from trading_system.bus.catalog.risk import RiskExposure, RiskLimitBreach
from trading_system.bus.catalog.strategy import StrategySignal
from trading_system.bus.catalog.system import SystemErrorReport, SystemShutdown, SystemStartup
from trading_system.bus.catalog.transaction import (
    TxnAbort,
    TxnAck,
    TxnCanCommit,
    TxnDoCommit,
    TxnOutcome,
    TxnPreCommit,
    TxnVote,
)
from trading_system.bus.catalog.venue import VenueCancelAck, VenueOrderAck, VenueOrderReject, VenueStatus
from trading_system.bus.messages import BusMessage, MessageRegistry

SUBSYSTEMS: dict[str, tuple[type[BusMessage], ...]] = {
    "system": system.MESSAGES,
    "component": component.MESSAGES,
    "market_data": market_data.MESSAGES,
    "strategy": strategy.MESSAGES,
    "order": orders.MESSAGES,
    "venue": venue.MESSAGES,
    "position": position.MESSAGES,
    "risk": risk.MESSAGES,
    "transaction": transaction.MESSAGES,
}


def default_registry() -> MessageRegistry:
    """A fresh registry with the whole catalog; services may register more types on it."""
    return MessageRegistry(cls for group in SUBSYSTEMS.values() for cls in group)


CATALOG = default_registry()

__all__ = [
    "CATALOG",
    "SUBSYSTEMS",
    "BalanceUpdate",
    "BestBidOffer",
    "ComponentHeartbeat",
    "ComponentStatus",
    "DepthSnapshot",
    "OrderAccepted",
    "OrderCancel",
    "OrderCancelled",
    "OrderExpired",
    "OrderFill",
    "OrderNew",
    "OrderRejected",
    "OrderReplace",
    "PositionUpdate",
    "PriceLevel",
    "RiskExposure",
    "RiskLimitBreach",
    "StrategySignal",
    "SystemErrorReport",
    "SystemShutdown",
    "SystemStartup",
    "TradePrint",
    "TxnAbort",
    "TxnAck",
    "TxnCanCommit",
    "TxnDoCommit",
    "TxnOutcome",
    "TxnPreCommit",
    "TxnVote",
    "VenueCancelAck",
    "VenueOrderAck",
    "VenueOrderReject",
    "VenueStatus",
    "default_registry",
]

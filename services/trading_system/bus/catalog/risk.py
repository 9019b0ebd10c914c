"""Risk: limit breaches and exposure reports."""

from __future__ import annotations

import enum

from trading_system.bus.catalog.common import Amount, Asset, Identifier, Reason
from trading_system.bus.messages import BusMessage


class BreachAction(enum.StrEnum):
    WARN = "warn"
    REJECT = "reject"
    HALT = "halt"


class RiskLimitBreach(BusMessage):
    message_type = "risk.limit_breach"
    account: Identifier
    limit: Identifier
    limit_value: Amount
    observed_value: Amount
    action: BreachAction
    detail: Reason = ""


class RiskExposure(BusMessage):
    message_type = "risk.exposure"
    account: Identifier
    currency: Asset
    gross: Amount
    net: Amount


MESSAGES: tuple[type[BusMessage], ...] = (RiskLimitBreach, RiskExposure)

"""System lifecycle: a service instance started, is shutting down, or hit an error."""

from __future__ import annotations

import enum

from trading_system.bus.catalog.common import Identifier, Reason
from trading_system.bus.messages import BusMessage


class Severity(enum.StrEnum):
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class SystemStartup(BusMessage):
    message_type = "system.startup"
    service: Identifier
    instance: Identifier
    software_version: Identifier


class SystemShutdown(BusMessage):
    message_type = "system.shutdown"
    service: Identifier
    instance: Identifier
    reason: Reason = ""


class SystemErrorReport(BusMessage):
    message_type = "system.error"
    service: Identifier
    instance: Identifier
    severity: Severity
    error: Reason
    detail: Reason = ""


MESSAGES: tuple[type[BusMessage], ...] = (SystemStartup, SystemShutdown, SystemErrorReport)

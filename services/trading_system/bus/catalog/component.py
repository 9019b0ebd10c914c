"""Component health: status changes and periodic heartbeats of pair members and replicas."""

from __future__ import annotations

import enum

from pydantic import Field

from trading_system.bus.catalog.common import Identifier, Reason
from trading_system.bus.messages import BusMessage


class ComponentRole(enum.StrEnum):
    ACTIVE = "active"
    STANDBY = "standby"
    FENCED = "fenced"
    REPLICA = "replica"


class ComponentState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"
    STOPPING = "stopping"


class ComponentStatus(BusMessage):
    message_type = "component.status"
    component: Identifier
    instance: Identifier
    role: ComponentRole
    state: ComponentState
    detail: Reason = ""


class ComponentHeartbeat(BusMessage):
    message_type = "component.heartbeat"
    component: Identifier
    instance: Identifier
    role: ComponentRole
    uptime_seconds: float = Field(ge=0)


MESSAGES: tuple[type[BusMessage], ...] = (ComponentStatus, ComponentHeartbeat)

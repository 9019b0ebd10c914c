"""What the failover decision asks its executor (the operator or the local supervisor) to do.

Executor contract, which is what makes a failover resumable:

1. persist ``Decision.state`` durably before executing any action; this is how
   ``RaiseEpoch`` is "recorded before anything else", because the raised epoch and the
   step are part of that state;
2. execute the actions in order and stop at the first one that fails;
3. every action is idempotent, because after a crash the next round may ask for the
   same action again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from trading_system.ha.state import PairState, Reason


class EventType(enum.StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


@dataclass(frozen=True, slots=True)
class RaiseEpoch:
    """The pair's epoch is now ``epoch``; it is already part of the state to persist."""

    epoch: int


@dataclass(frozen=True, slots=True)
class FenceMember:
    """Take the member out of service: role label ``fenced`` (so the Service drops it), demote call."""

    name: str


@dataclass(frozen=True, slots=True)
class DeleteMember:
    name: str


@dataclass(frozen=True, slots=True)
class PromoteMember:
    """Authenticated admin call: the member writes ``epoch`` to its fencing row, catches up, serves."""

    name: str
    epoch: int


@dataclass(frozen=True, slots=True)
class SwitchService:
    """Route the pair's Service to ``name`` (the ``role=active`` label in Kubernetes)."""

    name: str


@dataclass(frozen=True, slots=True)
class CreateStandby:
    """Create the member ``name`` as a standby, unless it already exists."""

    name: str


@dataclass(frozen=True, slots=True)
class RecordEvent:
    """A Kubernetes Event, a log line and a metric: something worth telling a human."""

    reason: Reason
    message: str
    type: EventType = EventType.NORMAL


@dataclass(frozen=True, slots=True)
class Wait:
    """Something should happen but may not yet; nothing to execute, the reason is for logs."""

    reason: Reason
    message: str


Action: TypeAlias = (
    RaiseEpoch
    | FenceMember
    | DeleteMember
    | PromoteMember
    | SwitchService
    | CreateStandby
    | RecordEvent
    | Wait
)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one probe round. No actions means nothing to do."""

    state: PairState
    actions: tuple[Action, ...] = ()

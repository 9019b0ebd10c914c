"""Failover decision for the active/standby pairs (matching, execution).

Pure logic, no Kubernetes and no I/O: the operator and the local process supervisor both
feed it observations and execute the actions it returns. See ``docs/failover.md``.
"""

from trading_system.ha.actions import (
    Action,
    CreateStandby,
    Decision,
    DeleteMember,
    EventType,
    FenceMember,
    PromoteMember,
    RaiseEpoch,
    RecordEvent,
    SwitchService,
    Wait,
)
from trading_system.ha.decision import decide
from trading_system.ha.model import (
    FailoverMode,
    FailoverPolicy,
    MemberObservation,
    Observation,
    Role,
    SwitchoverRequest,
)
from trading_system.ha.state import (
    FailoverAttempt,
    FailoverKind,
    FailoverProgress,
    FailoverRecord,
    Health,
    Outcome,
    PairState,
    Phase,
    Reason,
    significant,
)

__all__ = [
    "Action",
    "CreateStandby",
    "Decision",
    "DeleteMember",
    "EventType",
    "FailoverAttempt",
    "FailoverKind",
    "FailoverMode",
    "FailoverPolicy",
    "FailoverProgress",
    "FailoverRecord",
    "FenceMember",
    "Health",
    "MemberObservation",
    "Observation",
    "Outcome",
    "PairState",
    "Phase",
    "PromoteMember",
    "RaiseEpoch",
    "Reason",
    "RecordEvent",
    "Role",
    "SwitchService",
    "SwitchoverRequest",
    "Wait",
    "decide",
    "significant",
]

"""The state the failover decision carries from one probe round to the next.

The operator stores it in the resource status and the local supervisor in a file, so
every field is plain data and ``PairState.from_dict(state.to_dict())`` gives the same
state back after a trip through JSON.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Phase(enum.StrEnum):
    """The last durable step of a failover; the decision drives the step after it.

    IDLE -> EPOCH_RAISED -> OLD_FENCED -> PROMOTED -> SERVICE_SWITCHED -> IDLE, where the
    final step creates the replacement standby and records the failover as completed.
    """

    IDLE = "idle"
    EPOCH_RAISED = "epoch_raised"
    OLD_FENCED = "old_fenced"
    PROMOTED = "promoted"
    SERVICE_SWITCHED = "service_switched"


class FailoverKind(enum.StrEnum):
    ELECTION = "election"  # there is no active at all (first start, or an abandoned failover)
    FAILOVER = "failover"  # the active failed its probes
    SWITCHOVER = "switchover"  # a human asked for it


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    ABANDONED = "abandoned"


class Health(enum.StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILING_OVER = "failing_over"


class Reason(enum.StrEnum):
    """Machine-readable reasons, CamelCase as Kubernetes Events and conditions expect."""

    HEALTHY = "Healthy"
    NO_ACTIVE = "NoActive"
    STANDBY_MISSING = "StandbyMissing"
    STANDBY_UNHEALTHY = "StandbyUnhealthy"
    STANDBY_LAGGING = "StandbyLagging"
    MANUAL_FAILOVER_REQUIRED = "ManualFailoverRequired"
    COOLDOWN = "FailoverCooldown"
    EPOCH_CONFLICT = "EpochConflict"
    STRAY_ACTIVE = "StrayActiveFenced"
    ELECTING = "Electing"
    FAILING_OVER = "FailingOver"
    SWITCHING_OVER = "SwitchingOver"
    FAILOVER_STARTED = "FailoverStarted"
    FAILOVER_COMPLETED = "FailoverCompleted"
    FAILOVER_ABANDONED = "FailoverAbandoned"
    FENCE_TIMEOUT = "FenceTimeout"
    SWITCHOVER_REJECTED = "SwitchoverRejected"
    SWITCHOVER_IGNORED = "SwitchoverIgnored"


@dataclass(frozen=True, slots=True)
class FailoverAttempt:
    """What every failover has, whether under way or finished."""

    kind: FailoverKind
    source: str | None
    target: str
    epoch: int
    reason: str
    started_at: float

    @staticmethod
    def _parse(data: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "kind": FailoverKind(data["kind"]),
            "source": _optional_str(data["source"]),
            "target": str(data["target"]),
            "epoch": int(data["epoch"]),
            "reason": str(data["reason"]),
            "started_at": float(data["started_at"]),
        }


@dataclass(frozen=True, slots=True)
class FailoverRecord(FailoverAttempt):
    """One finished failover, for the status history."""

    ended_at: float
    outcome: Outcome

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FailoverRecord:
        return cls(**cls._parse(data), ended_at=float(data["ended_at"]), outcome=Outcome(data["outcome"]))


@dataclass(frozen=True, slots=True)
class FailoverProgress(FailoverAttempt):
    """A failover under way. ``step`` is what is durably done; ``epoch`` is the raised epoch."""

    step: Phase
    step_started_at: float

    def finished(self, at: float, outcome: Outcome) -> FailoverRecord:
        shared = {field.name: getattr(self, field.name) for field in dataclasses.fields(FailoverAttempt)}
        return FailoverRecord(**shared, ended_at=at, outcome=outcome)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FailoverProgress:
        return cls(
            **cls._parse(data), step=Phase(data["step"]), step_started_at=float(data["step_started_at"])
        )


@dataclass(frozen=True, slots=True)
class PairState:
    """What the decision knows about one pair between probe rounds.

    ``active`` and ``standby`` are the members the decision placed in those roles;
    ``fenced`` lists members that must be (or are being) removed. New members are named
    ``f"{prefix}-{next_index}"`` so that a repeated ``CreateStandby`` names the same
    member and creating it stays idempotent. ``highest_seen_epoch`` remembers an epoch a
    member reported above ours, so the next raise goes past it.
    """

    prefix: str
    epoch: int = 0
    active: str | None = None
    standby: str | None = None
    fenced: tuple[str, ...] = ()
    next_index: int = 0
    failures: int = 0
    failover: FailoverProgress | None = None
    highest_seen_epoch: int = 0
    handled_switchover: str | None = None
    last_failover_at: float | None = None
    failover_count: int = 0
    history: tuple[FailoverRecord, ...] = ()
    health: Health = Health.DEGRADED
    reason: Reason = Reason.NO_ACTIVE
    message: str = "no active member yet"
    last_observed_at: float | None = None

    @classmethod
    def initial(cls, prefix: str) -> PairState:
        return cls(prefix=prefix)

    @property
    def phase(self) -> Phase:
        return Phase.IDLE if self.failover is None else self.failover.step

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (enums are ``str`` subclasses, so JSON keeps their values)."""
        data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairState:
        failover = data["failover"]
        return cls(
            prefix=str(data["prefix"]),
            epoch=int(data["epoch"]),
            active=_optional_str(data["active"]),
            standby=_optional_str(data["standby"]),
            fenced=tuple(str(name) for name in data["fenced"]),
            next_index=int(data["next_index"]),
            failures=int(data["failures"]),
            failover=None if failover is None else FailoverProgress.from_dict(failover),
            highest_seen_epoch=int(data["highest_seen_epoch"]),
            handled_switchover=_optional_str(data["handled_switchover"]),
            last_failover_at=_optional_float(data["last_failover_at"]),
            failover_count=int(data["failover_count"]),
            history=tuple(FailoverRecord.from_dict(record) for record in data["history"]),
            health=Health(data["health"]),
            reason=Reason(data["reason"]),
            message=str(data["message"]),
            last_observed_at=_optional_float(data["last_observed_at"]),
        )


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def significant(state: PairState) -> dict[str, Any]:
    """The part of the state worth a write when no action forces one.

    The probe clock and the failure counter change every round; persisting them would
    write the resource status (or the supervisor's file) every probe period. A restart
    that loses them at most re-counts a few failed rounds.
    """
    return dataclasses.replace(state, last_observed_at=None, failures=0).to_dict()

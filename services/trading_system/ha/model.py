"""Inputs of the failover decision: what one probe round saw, and the policy to apply."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.StrEnum):
    """The role a pair member reports about itself (and the label the operator gives it)."""

    ACTIVE = "active"
    STANDBY = "standby"
    FENCED = "fenced"


class FailoverMode(enum.StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class MemberObservation:
    """One pair member as seen by one probe round.

    ``role``, ``epoch`` and ``lag`` are what the member says about itself, so they are
    ``None`` whenever it could not be asked. ``lag`` counts journal entries the member
    has not applied yet; entries, not seconds, because an idle journal would make a
    time-based lag grow on a standby that is perfectly current.
    """

    name: str
    exists: bool
    ready: bool = False
    healthz_ok: bool = False
    readyz_ok: bool = False
    role: Role | None = None
    epoch: int | None = None
    lag: int | None = None

    @classmethod
    def absent(cls, name: str) -> MemberObservation:
        return cls(name=name, exists=False)

    @property
    def probes_ok(self) -> bool:
        return self.exists and self.ready and self.healthz_ok and self.readyz_ok


@dataclass(frozen=True, slots=True)
class SwitchoverRequest:
    """A planned switchover asked for by a human (the operator reads it from an annotation).

    ``request_id`` identifies the request so that one request is carried out once even
    though the annotation stays in place across many probe rounds.
    """

    request_id: str
    target: str | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything one probe round saw about a pair.

    ``now`` is wall-clock seconds, not a monotonic clock: the state that timeouts and
    the cooldown are measured against outlives the process that wrote it.
    ``service_target`` is the member the pair's Service currently routes to, if any.
    """

    now: float
    members: tuple[MemberObservation, ...] = ()
    service_target: str | None = None
    switchover: SwitchoverRequest | None = None

    def __post_init__(self) -> None:
        names = [member.name for member in self.members]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate member names in one observation: {sorted(names)}")

    def member(self, name: str) -> MemberObservation:
        """The observation of ``name``; a member nobody reported is treated as gone."""
        for member in self.members:
            if member.name == name:
                return member
        return MemberObservation.absent(name)


@dataclass(frozen=True, slots=True)
class FailoverPolicy:
    """How eagerly to fail over.

    ``fence_timeout_seconds`` bounds how long the old active may take to disappear: the
    epoch fence in PostgreSQL already stops it from writing, so waiting longer for a pod
    on an unreachable node would only prolong the outage. ``promote_timeout_seconds``
    bounds how long a standby may take to confirm its promotion before another member
    is tried under a fresh epoch.
    """

    mode: FailoverMode = FailoverMode.AUTOMATIC
    failure_threshold: int = 3
    max_promotion_lag: int = 1000
    cooldown_seconds: float = 60.0
    fence_timeout_seconds: float = 30.0
    promote_timeout_seconds: float = 60.0
    history_limit: int = 10

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.max_promotion_lag < 0:
            raise ValueError("max_promotion_lag must not be negative")
        if self.history_limit < 1:
            raise ValueError("history_limit must be at least 1")
        durations = (self.cooldown_seconds, self.fence_timeout_seconds, self.promote_timeout_seconds)
        if any(seconds < 0 for seconds in durations):
            raise ValueError("cooldown and timeouts must not be negative")

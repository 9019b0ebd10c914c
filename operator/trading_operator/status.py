"""Status of a TradingSystem, computed from observations by pure functions.

Conditions follow the Kubernetes API conventions: one entry per type, ``lastTransitionTime``
moves only when ``status`` changes, and each carries the generation it was computed for,
so ``kubectl wait --for=condition=Ready`` and GitOps tools can trust them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trading_system.ha import FailoverRecord, Health, PairState

READY = "Ready"
RABBITMQ_READY = "RabbitMQReady"
MATCHING_READY = "MatchingReady"
EXECUTION_READY = "ExecutionReady"
COORDINATOR_READY = "CoordinatorReady"
DATABASE_READY = "DatabaseReady"
DEGRADED = "Degraded"
FAILING_OVER = "FailingOver"
PAUSED = "Paused"
RECONCILED = "Reconciled"

PAIR_CONDITIONS = {"matching": MATCHING_READY, "execution": EXECUTION_READY}


def timestamp(seconds: float) -> str:
    """RFC 3339 in UTC with second precision, as ``metav1.Time`` serialises."""
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class ComponentCheck:
    """One component's readiness as observed this round."""

    ready: bool
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class RabbitMQObservation:
    desired: int
    replicas: int
    ready_replicas: int
    management_checked: bool = False
    running_nodes: int | None = None
    alarms: tuple[str, ...] = ()
    quorum_status: str = "unknown"
    error: str | None = None

    def check(self) -> ComponentCheck:
        if self.replicas < self.desired:
            return ComponentCheck(False, "Scaling", f"{self.replicas} of {self.desired} nodes exist")
        if self.replicas > self.desired:
            return ComponentCheck(
                False, "ScalingDown", f"{self.replicas} nodes, scaling down to {self.desired}"
            )
        if self.ready_replicas < self.replicas:
            return ComponentCheck(
                False, "NodesNotReady", f"{self.ready_replicas}/{self.replicas} nodes ready"
            )
        if not self.management_checked:
            return ComponentCheck(True, "NodesReady", f"{self.ready_replicas}/{self.replicas} nodes ready")
        if self.error is not None:
            return ComponentCheck(False, "ManagementCheckFailed", self.error)
        if self.running_nodes is not None and self.running_nodes < self.desired:
            return ComponentCheck(
                False, "NodesNotRunning", f"{self.running_nodes}/{self.desired} nodes running"
            )
        if self.alarms:
            return ComponentCheck(False, "Alarms", "resource alarms: " + ", ".join(self.alarms))
        if self.quorum_status != "ok":
            return ComponentCheck(False, "QuorumCritical", self.quorum_status)
        return ComponentCheck(True, "Healthy", f"{self.replicas} nodes running, no alarms, quorum queues ok")

    def to_status(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "replicas": self.replicas,
            "readyReplicas": self.ready_replicas,
            "targetReplicas": self.desired,
            "quorumStatus": self.quorum_status if self.management_checked else "unchecked",
            "alarms": list(self.alarms),
        }
        if self.running_nodes is not None:
            result["runningNodes"] = self.running_nodes
        return result


@dataclass(frozen=True, slots=True)
class WorkloadObservation:
    """A Deployment (coordinator, dev PostgreSQL) as the API server reports it."""

    exists: bool
    desired: int
    ready: int
    updated: int

    def check(self, noun: str) -> ComponentCheck:
        if not self.exists:
            return ComponentCheck(False, "NotCreated", f"the {noun} does not exist yet")
        if self.ready < self.desired:
            return ComponentCheck(
                False, "ReplicasNotReady", f"{self.ready}/{self.desired} {noun} replicas ready"
            )
        if self.updated < self.desired:
            return ComponentCheck(
                False, "RollingOut", f"{self.updated}/{self.desired} {noun} replicas updated"
            )
        return ComponentCheck(True, "ReplicasReady", f"{self.ready}/{self.desired} {noun} replicas ready")


@dataclass(frozen=True, slots=True)
class Observed:
    """Everything one round saw, the input of ``compute_status``."""

    generation: int
    now: float
    paused: bool
    rabbitmq: RabbitMQObservation
    coordinator: WorkloadObservation
    database: ComponentCheck
    pairs: Mapping[str, PairState]
    reconcile_error: str | None = None
    children_created: bool = True
    extra_messages: Sequence[str] = field(default_factory=tuple)


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    *,
    generation: int,
    now: float,
) -> list[dict[str, Any]]:
    """Return ``conditions`` with ``type_`` set; the transition time survives an unchanged status."""
    value = "Unknown" if status is None else ("True" if status else "False")
    result = [dict(c) for c in conditions if c.get("type") != type_]
    previous = next((c for c in conditions if c.get("type") == type_), None)
    since = previous["lastTransitionTime"] if previous and previous.get("status") == value else timestamp(now)
    result.append(
        {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
            "observedGeneration": generation,
        }
    )
    return result


def _pair_check(pair: str, state: PairState) -> ComponentCheck:
    if state.health is Health.HEALTHY:
        return ComponentCheck(True, state.reason.value, state.message)
    # A pair with a healthy active but no standby still serves; only a missing active is NotReady.
    serving = state.active is not None and state.failover is None and state.failures == 0
    return ComponentCheck(serving, state.reason.value, state.message)


def history_entry(record: FailoverRecord) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": record.kind.value,
        "to": record.target,
        "epoch": record.epoch,
        "reason": record.reason,
        "startedAt": timestamp(record.started_at),
        "endedAt": timestamp(record.ended_at),
        "durationSeconds": round(record.ended_at - record.started_at, 3),
        "outcome": record.outcome.value,
    }
    if record.source is not None:
        entry["from"] = record.source
    return entry


def pair_status(state: PairState) -> dict[str, Any]:
    """The human-facing pair status plus the decision state it resumes from."""
    result: dict[str, Any] = {
        "epoch": state.epoch,
        "health": state.health.value,
        "reason": state.reason.value,
        "message": state.message,
        "failingOver": state.failover is not None,
        "failoverCount": state.failover_count,
        "history": [history_entry(r) for r in state.history],
        "decisionState": json.dumps(state.to_dict(), sort_keys=True, separators=(",", ":")),
    }
    if state.active is not None:
        result["active"] = state.active
    if state.standby is not None:
        result["standby"] = state.standby
    if state.failover is not None:
        result["failoverStep"] = state.failover.step.value
    if state.history:
        last = state.history[-1]
        result["lastFailoverTime"] = timestamp(last.ended_at)
        result["lastFailoverReason"] = last.reason
    return result


def load_pair_state(status: Mapping[str, Any] | None, pair: str, prefix: str) -> PairState:
    """The persisted decision state of ``pair``, or a fresh one for a new resource."""
    pairs = (status or {}).get("pairs") or {}
    raw = (pairs.get(pair) or {}).get("decisionState")
    if not raw:
        return PairState.initial(prefix)
    return PairState.from_dict(json.loads(raw))


def compute_status(observed: Observed, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    previous = previous or {}
    conditions: list[dict[str, Any]] = list(previous.get("conditions") or [])
    gen, now = observed.generation, observed.now

    def put(type_: str, status: bool | None, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, status, reason, message, generation=gen, now=now)

    checks: dict[str, ComponentCheck] = {
        RABBITMQ_READY: observed.rabbitmq.check(),
        COORDINATOR_READY: observed.coordinator.check("coordinator"),
        DATABASE_READY: observed.database,
    }
    for pair, state in observed.pairs.items():
        checks[PAIR_CONDITIONS[pair]] = _pair_check(pair, state)
    for type_, check in checks.items():
        put(type_, check.ready, check.reason, check.message)

    failing_over = [p for p, s in observed.pairs.items() if s.failover is not None]
    put(
        FAILING_OVER,
        bool(failing_over),
        "FailoverInProgress" if failing_over else "NoFailover",
        ", ".join(f"{p}: {observed.pairs[p].message}" for p in failing_over) or "no failover in progress",
    )
    not_ready = [t for t, c in checks.items() if not c.ready]
    degraded_pairs = [p for p, s in observed.pairs.items() if s.health is Health.DEGRADED]
    problems = [f"{t}: {checks[t].message}" for t in not_ready]
    problems += [
        f"{p}: {observed.pairs[p].message}" for p in degraded_pairs if PAIR_CONDITIONS[p] not in not_ready
    ]
    if observed.reconcile_error:
        problems.append(f"reconcile: {observed.reconcile_error}")
    ready = not not_ready and not failing_over
    phase = _phase(observed, ready, bool(failing_over), bool(problems), previous.get("phase"))
    # Degraded means "was up, lost something": a system still being created is not degraded.
    put(
        DEGRADED,
        bool(problems) and phase != "Creating",
        "ComponentsUnhealthy" if problems else "AllHealthy",
        "; ".join(problems) or "every component is healthy",
    )
    put(
        RECONCILED,
        observed.reconcile_error is None,
        "ReconcileFailed" if observed.reconcile_error else "ChildrenUpToDate",
        observed.reconcile_error or "every child matches the spec",
    )
    put(
        PAUSED,
        observed.paused,
        "PausedBySpec" if observed.paused else "Reconciling",
        "changes are suspended; status is still reported"
        if observed.paused
        else "the operator is reconciling",
    )
    put(
        READY,
        ready,
        "AllComponentsReady" if ready else "ComponentsNotReady",
        "every component is ready"
        if ready
        else "not ready: " + ", ".join(not_ready + [FAILING_OVER] * bool(failing_over)),
    )

    message = "; ".join(problems) if problems else "every component is ready"
    order = [READY, RABBITMQ_READY, DATABASE_READY, MATCHING_READY, EXECUTION_READY, COORDINATOR_READY]
    order += [DEGRADED, FAILING_OVER, RECONCILED, PAUSED]
    conditions.sort(key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))
    return {
        "phase": phase,
        "message": message,
        "observedGeneration": gen,
        "conditions": conditions,
        "rabbitmq": observed.rabbitmq.to_status(),
        "coordinator": {
            "replicas": observed.coordinator.desired,
            "readyReplicas": observed.coordinator.ready,
        },
        "pairs": {pair: pair_status(state) for pair, state in observed.pairs.items()},
    }


def _phase(observed: Observed, ready: bool, failing_over: bool, problems: bool, previous: str | None) -> str:
    if observed.paused:
        return "Paused"
    if failing_over:
        return "FailingOver"
    if ready and not problems:
        return "Ready"
    if observed.reconcile_error:
        return "Error"
    # Until it has been whole once, a new system is still being created, not degraded (a pair
    # serves before its standby exists, which is part of creation).
    if previous in (None, "Creating") or not any(s.active for s in observed.pairs.values()):
        return "Creating"
    return "Degraded"


def status_changed(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Whether writing ``new`` would change anything the operator owns."""
    old = old or {}
    return any(new.get(key) != old.get(key) for key in new)

"""Status and conditions computed from observations, following the API conventions."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from trading_operator.status import (
    ComponentCheck,
    Observed,
    RabbitMQObservation,
    WorkloadObservation,
    compute_status,
    load_pair_state,
    pair_status,
    set_condition,
    status_changed,
)
from trading_system.ha import (
    FailoverKind,
    FailoverProgress,
    FailoverRecord,
    Health,
    Outcome,
    PairState,
    Phase,
    Reason,
)

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0
HEALTHY_PAIR = PairState(
    prefix="ts-matching",
    epoch=1,
    active="ts-matching-0",
    standby="ts-matching-1",
    next_index=2,
    health=Health.HEALTHY,
    reason=Reason.HEALTHY,
    message="active ts-matching-0, standby ts-matching-1, epoch 1",
)


def observed(**overrides: object) -> Observed:
    base = Observed(
        generation=3,
        now=T0,
        paused=False,
        rabbitmq=RabbitMQObservation(desired=3, replicas=3, ready_replicas=3),
        coordinator=WorkloadObservation(True, 2, 2, 2),
        database=ComponentCheck(True, "DevInstanceReady", "ok"),
        pairs={"matching": HEALTHY_PAIR, "execution": replace(HEALTHY_PAIR, prefix="ts-execution")},
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_all_healthy_is_ready() -> None:
    status = compute_status(observed(), None)
    assert status["phase"] == "Ready" and status["observedGeneration"] == 3
    c = conditions(status)
    for type_ in (
        "Ready",
        "RabbitMQReady",
        "MatchingReady",
        "ExecutionReady",
        "CoordinatorReady",
        "DatabaseReady",
    ):
        assert c[type_]["status"] == "True", type_
    assert c["Degraded"]["status"] == "False" and c["FailingOver"]["status"] == "False"
    assert all(cond["observedGeneration"] == 3 for cond in c.values())


def test_transition_time_moves_only_when_status_changes() -> None:
    first = set_condition([], "Ready", True, "A", "a", generation=1, now=T0)
    same = set_condition(first, "Ready", True, "B", "b", generation=2, now=T0 + 60)
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert same[0]["reason"] == "B" and same[0]["observedGeneration"] == 2
    flipped = set_condition(same, "Ready", False, "C", "c", generation=2, now=T0 + 120)
    assert flipped[0]["lastTransitionTime"] != first[0]["lastTransitionTime"]
    assert flipped[0]["status"] == "False"


def test_a_failover_in_progress() -> None:
    progress = FailoverProgress(
        kind=FailoverKind.FAILOVER,
        source="ts-matching-0",
        target="ts-matching-1",
        epoch=2,
        reason="active failed",
        started_at=T0,
        step=Phase.OLD_FENCED,
        step_started_at=T0,
    )
    pair = replace(
        HEALTHY_PAIR, epoch=2, active=None, standby=None, failover=progress, health=Health.FAILING_OVER
    )
    status = compute_status(observed(pairs={"matching": pair, "execution": HEALTHY_PAIR}), None)
    c = conditions(status)
    assert status["phase"] == "FailingOver"
    assert c["FailingOver"]["status"] == "True" and c["Ready"]["status"] == "False"
    assert c["MatchingReady"]["status"] == "False"
    assert status["pairs"]["matching"]["failoverStep"] == "old_fenced"


def test_a_pair_without_standby_serves_but_is_degraded() -> None:
    pair = replace(
        HEALTHY_PAIR,
        standby=None,
        health=Health.DEGRADED,
        reason=Reason.STANDBY_MISSING,
        message="no standby",
    )
    status = compute_status(observed(pairs={"matching": pair, "execution": HEALTHY_PAIR}), {"phase": "Ready"})
    c = conditions(status)
    assert c["MatchingReady"]["status"] == "True" and c["Ready"]["status"] == "True"
    assert c["Degraded"]["status"] == "True" and "no standby" in c["Degraded"]["message"]
    assert status["phase"] == "Degraded"
    # While first being created the same picture is still creation, not degradation.
    creating = compute_status(observed(pairs={"matching": pair, "execution": HEALTHY_PAIR}), None)
    assert creating["phase"] == "Creating" and conditions(creating)["Degraded"]["status"] == "False"


def test_a_new_resource_is_creating_not_degraded() -> None:
    fresh = PairState.initial("ts-matching")
    status = compute_status(
        observed(
            pairs={"matching": fresh, "execution": fresh},
            coordinator=WorkloadObservation(False, 2, 0, 0),
            children_created=False,
        ),
        None,
    )
    assert status["phase"] == "Creating"
    assert conditions(status)["Degraded"]["status"] == "False"


def test_rabbitmq_checks() -> None:
    healthy = RabbitMQObservation(3, 3, 3, management_checked=True, running_nodes=3, quorum_status="ok")
    assert healthy.check().ready
    assert not replace(healthy, alarms=("memory on rabbit@0",)).check().ready
    assert replace(healthy, quorum_status="quorum-critical: q: 1/3").check().reason == "QuorumCritical"
    assert replace(healthy, replicas=4).check().reason == "ScalingDown"
    assert replace(healthy, ready_replicas=2).check().reason == "NodesNotReady"
    assert replace(healthy, error="unreachable").check().reason == "ManagementCheckFailed"


def test_paused_and_errors_show_in_phase_and_conditions() -> None:
    paused = compute_status(observed(paused=True), None)
    assert paused["phase"] == "Paused" and conditions(paused)["Paused"]["status"] == "True"
    failing = compute_status(
        observed(reconcile_error="forbidden", coordinator=WorkloadObservation(True, 2, 0, 0)),
        {"phase": "Ready"},
    )
    assert conditions(failing)["Reconciled"]["status"] == "False"
    assert failing["phase"] == "Error"


def test_pair_status_round_trips_the_decision_state() -> None:
    record = FailoverRecord(FailoverKind.FAILOVER, "a", "b", 2, "why", T0, T0 + 3.25, Outcome.COMPLETED)
    state = replace(HEALTHY_PAIR, history=(record,), failover_count=1)
    status = pair_status(state)
    assert status["history"][0]["durationSeconds"] == 3.25 and status["history"][0]["from"] == "a"
    assert status["lastFailoverTime"] == "2027-01-15T08:00:03Z"
    loaded = load_pair_state({"pairs": {"matching": status}}, "matching", "ts-matching")
    assert loaded == state
    assert load_pair_state(None, "matching", "ts-matching") == PairState.initial("ts-matching")
    json.dumps(status)


def test_status_changed_compares_owned_keys_only() -> None:
    status = compute_status(observed(), None)
    assert not status_changed(status, {**status, "kopf": {"x": 1}})
    assert status_changed(status, {**status, "phase": "Degraded"})

"""Small pure pieces of the controller and the failover executor."""

from __future__ import annotations

from dataclasses import replace

import pytest

from trading_operator import api
from trading_operator.controller import is_paused, next_rabbitmq_replicas, slim
from trading_operator.failover import policy_of, service_target, switchover_request
from trading_operator.probes import quorum_status
from trading_operator.spec import TradingSystemSpec
from trading_system.ha import FailoverMode, PairState, SwitchoverRequest, significant

pytestmark = pytest.mark.unit

SPEC = TradingSystemSpec.parse(
    {"symbols": [{"name": "A", "tickSize": "1", "lotSize": "1"}], "database": {"dev": True}}
)


def pod(role: str) -> dict[str, object]:
    return {"metadata": {"labels": {api.LABEL_ROLE: role}}}


@pytest.mark.parametrize(
    ("desired", "current", "ready", "quorum", "expected"),
    [
        (3, None, False, False, 3),  # first creation
        (5, 3, False, False, 5),  # growing never risks quorum
        (3, 5, True, True, 4),  # one node at a time
        (3, 4, False, True, 4),  # a node is not ready: wait
        (3, 4, True, False, 4),  # a queue would lose quorum: wait
        (3, 3, True, True, 3),
    ],
)
def test_rabbitmq_scaling_steps(
    desired: int, current: int | None, ready: bool, quorum: bool, expected: int
) -> None:
    assert next_rabbitmq_replicas(desired, current, all_ready=ready, quorum_ok=quorum) == expected


def test_service_target_needs_exactly_one_active() -> None:
    assert service_target({"a": pod("active"), "b": pod("standby")}) == "a"
    assert service_target({"a": pod("active"), "b": pod("active")}) is None
    assert service_target({"a": pod("fenced")}) is None


def test_switchover_request_from_annotations() -> None:
    prefix = api.ANNOTATION_SWITCHOVER_PREFIX
    assert switchover_request({}, "matching") is None
    assert switchover_request({f"{prefix}matching": "r1"}, "matching") == SwitchoverRequest("r1")
    both = {f"{prefix}execution": "r2", f"{prefix}execution-target": "ts-execution-4"}
    assert switchover_request(both, "execution") == SwitchoverRequest("r2", "ts-execution-4")
    assert switchover_request(both, "matching") is None


def test_probe_bookkeeping_alone_is_not_worth_a_write() -> None:
    state = PairState.initial("p")
    assert significant(replace(state, failures=2, last_observed_at=5.0)) == significant(state)
    assert significant(replace(state, epoch=1)) != significant(state)


def test_policy_and_pause() -> None:
    policy = policy_of(SPEC.failover)
    assert policy.mode is FailoverMode.AUTOMATIC and policy.failure_threshold == 3
    assert is_paused(SPEC, {api.ANNOTATION_PAUSED: "true"}) and not is_paused(SPEC, {})


def test_quorum_status() -> None:
    members = ["a", "b", "c"]
    ok = {"name": "q", "type": "quorum", "leader": "a", "members": members, "online": members}
    assert quorum_status([ok, {"name": "c", "type": "classic"}]) == "ok"
    assert "q: 2/3 members online" in quorum_status([{**ok, "online": ["a", "b"]}])
    assert "q: no leader" in quorum_status([{**ok, "leader": None}])


def test_slim_drops_bulk_and_secret_values() -> None:
    secret = {"kind": "Secret", "metadata": {"name": "s", "managedFields": [{}]}, "data": {"k": "dg=="}}
    assert slim(secret) == {"kind": "Secret", "metadata": {"name": "s"}}

"""Failover with real HTTP processes on the pods' IPs: automatic, manual, and resumed."""

from __future__ import annotations

import json
import time

import pytest

from tests.environment.kubernetes import ControlPlane
from tests.environment.processes import wait_until
from tests.k8s.operator.conftest import OperatorProcess, apply, is_ready, pair_status, trading_system
from tests.k8s.operator.fakes import Fleet
from trading_operator import api
from trading_operator.k8s_io import Kube

pytestmark = pytest.mark.k8s


def roles(kube: Kube, namespace: str, pair: str) -> dict[str, str]:
    pods = kube.list("v1", "Pod", namespace, f"{api.LABEL_PAIR}={pair}")
    return {
        p["metadata"]["name"]: p["metadata"]["labels"][api.LABEL_ROLE]
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
    }


def events(plane: ControlPlane, namespace: str) -> list[dict[str, object]]:
    items = json.loads(plane.kubectl("get", "events", "-n", namespace, "-o", "json"))["items"]
    return [e for e in items if e["involvedObject"]["kind"] == api.KIND]


def settled(kube: Kube, namespace: str, pair: str, active: str) -> bool:
    """The pair is whole again: ``active`` serves, a fresh standby exists, nothing else remains."""
    status = pair_status(kube, namespace, pair)
    current = roles(kube, namespace, pair)
    return (
        status.get("active") == active
        and not status.get("failingOver")
        and sorted(current.values()) == ["active", "standby"]
        and current.get(active) == "active"
    )


@pytest.mark.parametrize("failure", ["process-killed", "pod-not-ready"])
def test_automatic_failover_promotes_the_standby_once(
    k8s_cluster: ControlPlane,
    k8s_namespace: str,
    kube: Kube,
    operator: OperatorProcess,
    fleet: Fleet,
    failure: str,
) -> None:
    pair = "matching" if failure == "process-killed" else "execution"
    apply(k8s_cluster, trading_system(k8s_namespace))
    wait_until(lambda: is_ready(kube, k8s_namespace), 90, "phase Ready")
    before = pair_status(kube, k8s_namespace, pair)
    old, standby, epoch = before["active"], before["standby"], before["epoch"]

    started = time.time()
    if failure == "process-killed":
        fleet.kill(old)
    else:
        k8s_cluster.set_pod_ready(k8s_namespace, old, ready=False)
    wait_until(lambda: bool(fleet.member(standby).promotions), 30, "the standby's promotion")
    promoted_after = fleet.member(standby).promotions[0][0] - started
    wait_until(lambda: roles(kube, k8s_namespace, pair).get(standby) == "active", 30, "the Service switch")
    switched_after = time.time() - started
    wait_until(lambda: settled(kube, k8s_namespace, pair, standby), 30, "a new standby")
    print(
        f"\n{pair} ({failure}): promote call after {promoted_after:.2f}s, "
        f"Service switched after {switched_after:.2f}s"
    )

    # Bound: failureThreshold (2) x probePeriodSeconds (1) plus the steps; generous for 2 cores.
    assert promoted_after < 8.0
    assert [e for _, e in fleet.member(standby).promotions] == [epoch + 1]
    after = pair_status(kube, k8s_namespace, pair)
    assert after["epoch"] == epoch + 1, "the epoch is raised exactly once"
    assert after["failoverCount"] == before["failoverCount"] + 1
    record = after["history"][-1]
    assert (record["kind"], record["from"], record["to"], record["outcome"]) == (
        "failover",
        old,
        standby,
        "completed",
    )
    assert old not in roles(kube, k8s_namespace, pair), "the old active is removed"
    reasons = [e["reason"] for e in events(k8s_cluster, k8s_namespace)]
    assert "FailoverStarted" in reasons and "FailoverCompleted" in reasons
    labels = {"namespace": k8s_namespace, "pair": pair, "kind": "failover", "outcome": "completed"}
    assert operator.metric("trading_operator_failovers_total", **labels) == 1
    assert operator.metric("trading_operator_pair_epoch", namespace=k8s_namespace, pair=pair) == epoch + 1
    wait_until(lambda: is_ready(kube, k8s_namespace), 30, "Ready again")


def test_manual_switchover_by_annotation(
    k8s_cluster: ControlPlane, k8s_namespace: str, kube: Kube, operator: OperatorProcess, fleet: Fleet
) -> None:
    apply(k8s_cluster, trading_system(k8s_namespace, failover={"mode": "manual"}))
    wait_until(lambda: is_ready(kube, k8s_namespace), 90, "phase Ready")
    before = pair_status(kube, k8s_namespace, "matching")
    old, standby = before["active"], before["standby"]

    started = time.time()
    k8s_cluster.kubectl(
        "annotate",
        "ts",
        "ts",
        "-n",
        k8s_namespace,
        f"{api.ANNOTATION_SWITCHOVER_PREFIX}matching=maintenance-1",
    )
    wait_until(lambda: settled(kube, k8s_namespace, "matching", standby), 30, "the switchover")
    print(f"\nswitchover completed in {time.time() - started:.2f}s")
    after = pair_status(kube, k8s_namespace, "matching")
    assert after["epoch"] == before["epoch"] + 1
    assert after["history"][-1]["kind"] == "switchover"
    assert fleet.member(old).demotions, "the old active was told to step down"

    # The same request id is carried out once, however long the annotation stays.
    rounds = operator.metric("trading_operator_reconciles_total", namespace=k8s_namespace)
    wait_until(
        lambda: operator.metric("trading_operator_reconciles_total", namespace=k8s_namespace) >= rounds + 3,
        30,
        "three more rounds",
    )
    assert pair_status(kube, k8s_namespace, "matching")["epoch"] == before["epoch"] + 1


def test_an_operator_killed_mid_failover_completes_it_once_after_restart(
    k8s_cluster: ControlPlane, k8s_namespace: str, kube: Kube, operator: OperatorProcess, fleet: Fleet
) -> None:
    apply(k8s_cluster, trading_system(k8s_namespace, failover={"promoteTimeoutSeconds": 120}))
    wait_until(lambda: is_ready(kube, k8s_namespace), 90, "phase Ready")
    before = pair_status(kube, k8s_namespace, "matching")
    old, standby, epoch = before["active"], before["standby"], before["epoch"]

    fleet.member(standby).refuse_promotion = True
    fleet.kill(old)
    # The epoch is raised and recorded, the old active fenced; the promotion keeps failing.
    wait_until(
        lambda: pair_status(kube, k8s_namespace, "matching").get("failoverStep") == "old_fenced",
        30,
        "the failover to stop at the promotion step",
    )
    operator.kill()
    assert pair_status(kube, k8s_namespace, "matching")["epoch"] == epoch + 1

    fleet.member(standby).refuse_promotion = False
    restarted = time.time()
    operator.start()
    wait_until(lambda: settled(kube, k8s_namespace, "matching", standby), 30, "the resumed failover")
    print(f"\nresumed failover completed {time.time() - restarted:.2f}s after the operator restarted")
    after = pair_status(kube, k8s_namespace, "matching")
    assert after["epoch"] == epoch + 1, "a resumed failover does not raise the epoch again"
    assert {e for _, e in fleet.member(standby).promotions} == {epoch + 1}
    assert after["failoverCount"] == before["failoverCount"] + 1
    assert [r["outcome"] for r in after["history"] if r["kind"] == "failover"] == ["completed"]


def test_a_changed_pod_spec_rolls_standby_first_then_switches_over(
    k8s_cluster: ControlPlane, k8s_namespace: str, kube: Kube, operator: OperatorProcess, fleet: Fleet
) -> None:
    apply(k8s_cluster, trading_system(k8s_namespace))
    wait_until(lambda: is_ready(kube, k8s_namespace), 90, "phase Ready")
    before = {pair: pair_status(kube, k8s_namespace, pair) for pair in api.PAIRS}

    k8s_cluster.kubectl(
        "patch",
        "ts",
        "ts",
        "-n",
        k8s_namespace,
        "--type=merge",
        "-p",
        '{"spec": {"image": {"tag": "0.2.0"}}}',
    )

    def rolled() -> bool:
        pods = kube.list("v1", "Pod", k8s_namespace, api.LABEL_PAIR)
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        images = {p["spec"]["containers"][0]["image"] for p in live}
        return (
            len(live) == 4
            and images == {"ghcr.io/trading-system/trading-system:0.2.0"}
            and is_ready(kube, k8s_namespace)
        )

    started = time.time()
    wait_until(rolled, 60, "every member on the new image")
    print(f"\nboth pairs rolled onto the new image in {time.time() - started:.2f}s")
    for pair in api.PAIRS:
        after = pair_status(kube, k8s_namespace, pair)
        assert after["epoch"] == before[pair]["epoch"] + 1, "one switchover per pair"
        assert after["history"][-1]["kind"] == "switchover"
        assert after["active"] == before[pair]["standby"], "the replaced standby took over"

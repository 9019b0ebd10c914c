"""The operator against the real control plane: children, status, drift, pause, deletion."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.environment.kubernetes import ControlPlane
from tests.environment.processes import wait_until
from tests.k8s.operator.conftest import (
    SAMPLE,
    OperatorProcess,
    apply,
    condition,
    get_ts,
    is_ready,
    load_sample,
    trading_system,
)
from tests.k8s.operator.fakes import Fleet
from trading_operator import api
from trading_operator.k8s_io import Kube

pytestmark = pytest.mark.k8s

MANAGED = f"{api.LABEL_MANAGED_BY}={api.MANAGED_BY}"


def children(kube: Kube, namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for api_version, kind in [
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "Service"),
        ("v1", "ServiceAccount"),
        ("v1", "Pod"),
        ("apps/v1", "StatefulSet"),
        ("apps/v1", "Deployment"),
        ("policy/v1", "PodDisruptionBudget"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ]:
        for obj in kube.list(api_version, kind, namespace, MANAGED):
            found[(kind, obj["metadata"]["name"])] = obj
    return found


EXPECTED = {
    ("ConfigMap", "{n}-config"),
    ("ConfigMap", "{n}-rabbitmq-config"),
    ("Secret", "{n}-rabbitmq-erlang-cookie"),
    ("Secret", "{n}-rabbitmq-admin"),
    ("Secret", "{n}-admin-token"),
    ("Secret", "{n}-api-token"),
    ("Secret", "{n}-postgres"),
    ("Service", "{n}-rabbitmq"),
    ("Service", "{n}-rabbitmq-nodes"),
    ("Service", "{n}-matching"),
    ("Service", "{n}-execution"),
    ("Service", "{n}-coordinator"),
    ("Service", "{n}-postgres"),
    ("ServiceAccount", "{n}-rabbitmq"),
    ("ServiceAccount", "{n}-matching"),
    ("ServiceAccount", "{n}-execution"),
    ("ServiceAccount", "{n}-coordinator"),
    ("Role", "{n}-rabbitmq"),
    ("RoleBinding", "{n}-rabbitmq"),
    ("StatefulSet", "{n}-rabbitmq"),
    ("Deployment", "{n}-coordinator"),
    ("Deployment", "{n}-postgres"),
    ("PodDisruptionBudget", "{n}-rabbitmq"),
    ("PodDisruptionBudget", "{n}-matching"),
    ("PodDisruptionBudget", "{n}-execution"),
    ("PodDisruptionBudget", "{n}-coordinator"),
    ("NetworkPolicy", "{n}-default-deny"),
    ("NetworkPolicy", "{n}-rabbitmq"),
    ("NetworkPolicy", "{n}-matching"),
    ("NetworkPolicy", "{n}-execution"),
    ("NetworkPolicy", "{n}-coordinator"),
    ("NetworkPolicy", "{n}-postgres"),
}


def expected(name: str) -> set[tuple[str, str]]:
    return {(kind, pattern.format(n=name)) for kind, pattern in EXPECTED}


def provide_volumes(plane: ControlPlane, namespace: str, claims: list[str], size: str) -> list[str]:
    """Pre-bound hostPath PVs: nothing provisions volumes on this control plane."""
    names = []
    for claim in claims:
        name = f"{namespace}-{claim}"
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"test-namespace": namespace}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "",
                "hostPath": {"path": f"/tmp/kwok-pv/{name}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
        apply(plane, pv)
        names.append(name)
    return names


def test_sample_creates_every_child_and_becomes_ready(
    k8s_cluster: ControlPlane, k8s_namespace: str, kube: Kube, operator: OperatorProcess, fleet: Fleet
) -> None:
    sample = load_sample()
    name = sample["metadata"]["name"]
    replicas = sample["spec"]["rabbitmq"]["replicas"]
    pvs = provide_volumes(
        k8s_cluster,
        k8s_namespace,
        [f"data-{name}-rabbitmq-{i}" for i in range(replicas)],
        sample["spec"]["rabbitmq"]["storage"]["size"],
    )
    try:
        started = time.monotonic()
        k8s_cluster.kubectl("apply", "-n", k8s_namespace, "-f", str(SAMPLE))
        wait_until(lambda: expected(name) <= set(children(kube, k8s_namespace)), 60, "every child")
        created = time.monotonic() - started
        wait_until(lambda: is_ready(kube, k8s_namespace, name), 120, "phase Ready")
        ready = time.monotonic() - started
        print(f"\nsample: all children created in {created:.2f}s, Ready in {ready:.2f}s")

        found = children(kube, k8s_namespace)
        sts = found[("StatefulSet", f"{name}-rabbitmq")]["spec"]
        assert sts["replicas"] == 3 and sts["podManagementPolicy"] == "Parallel"
        assert sts["serviceName"] == f"{name}-rabbitmq-nodes"
        assert sts["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
        container = sts["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["tcpSocket"]["port"] == "amqp"
        assert "await_online_quorum_plus_one" in json.dumps(container["lifecycle"])
        headless = found[("Service", f"{name}-rabbitmq-nodes")]["spec"]
        assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
        config = found[("ConfigMap", f"{name}-rabbitmq-config")]["data"]["operator.conf"]
        assert "rabbit_peer_discovery_k8s" in config and "default_queue_type = quorum" in config
        matching_svc = found[("Service", f"{name}-matching")]["spec"]["selector"]
        assert matching_svc[api.LABEL_ROLE] == api.ROLE_ACTIVE
        coordinator = found[("Deployment", f"{name}-coordinator")]["spec"]
        assert coordinator["replicas"] == 2
        for (kind, child), obj in found.items():
            ref = obj["metadata"]["ownerReferences"][0]
            # Workload pods belong to their ReplicaSet or StatefulSet; everything else to us.
            if ref["kind"] in ("ReplicaSet", "StatefulSet") and kind == "Pod":
                continue
            assert (ref["kind"], ref["name"], ref["controller"]) == (api.KIND, name, True), child

        # One active and one standby per pair, and the Service label follows the active.
        for pair in api.PAIRS:
            members = [
                o
                for (k, _), o in found.items()
                if k == "Pod" and o["metadata"]["labels"].get(api.LABEL_PAIR) == pair
            ]
            roles = sorted(o["metadata"]["labels"][api.LABEL_ROLE] for o in members)
            assert roles == ["active", "standby"], roles

        ts = get_ts(kube, k8s_namespace, name)
        status = ts["status"]
        assert status["observedGeneration"] == ts["metadata"]["generation"]
        types = {c["type"]: c for c in status["conditions"]}
        for type_ in ("Ready", "RabbitMQReady", "MatchingReady", "ExecutionReady", "CoordinatorReady"):
            assert types[type_]["status"] == "True", types[type_]
        assert types["Degraded"]["status"] == "False" and types["FailingOver"]["status"] == "False"
        for c in status["conditions"]:
            assert {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"} <= set(
                c
            )
        assert status["pairs"]["matching"]["epoch"] == 1
        assert status["rabbitmq"]["quorumStatus"] == "ok"

        table = k8s_cluster.kubectl("get", "ts", name, "-n", k8s_namespace)
        header, row = table.splitlines()[:2]
        assert header.split() == ["NAME", "PHASE", "READY", "MATCHING", "EPOCH", "AGE"]
        assert row.split()[:5] == [name, "Ready", "True", status["pairs"]["matching"]["active"], "1"]
        events = k8s_cluster.kubectl("get", "events", "-n", k8s_namespace, "-o", "json")
        reasons = {
            e["reason"] for e in json.loads(events)["items"] if e["involvedObject"]["kind"] == api.KIND
        }
        assert {"PhaseReady", "FailoverCompleted"} <= reasons, reasons
    finally:
        k8s_cluster.kubectl("delete", "ts", "--all", "-n", k8s_namespace, "--timeout=60s")
        for pv in pvs:
            k8s_cluster.kubectl("delete", "pv", pv, "--wait=false", "--ignore-not-found")


def _resource_versions(kube: Kube, namespace: str) -> dict[tuple[str, str], str]:
    return {key: obj["metadata"]["resourceVersion"] for key, obj in children(kube, namespace).items()}


def test_drift_is_corrected_and_an_unchanged_resource_is_never_written(
    k8s_cluster: ControlPlane, k8s_namespace: str, kube: Kube, operator: OperatorProcess, fleet: Fleet
) -> None:
    apply(k8s_cluster, trading_system(k8s_namespace))
    wait_until(lambda: is_ready(kube, k8s_namespace), 90, "phase Ready")

    # Level-triggered: rounds keep running, and rounds over an unchanged resource write nothing.
    before = _resource_versions(kube, k8s_namespace)
    ts_version = get_ts(kube, k8s_namespace)["metadata"]["resourceVersion"]
    applies = operator.metric("trading_operator_child_applies_total", namespace=k8s_namespace)
    rounds = operator.metric("trading_operator_reconciles_total", namespace=k8s_namespace)
    wait_until(
        lambda: operator.metric("trading_operator_reconciles_total", namespace=k8s_namespace) >= rounds + 5,
        30,
        "five more reconcile rounds",
    )
    assert _resource_versions(kube, k8s_namespace) == before
    assert get_ts(kube, k8s_namespace)["metadata"]["resourceVersion"] == ts_version
    assert operator.metric("trading_operator_child_applies_total", namespace=k8s_namespace) == applies

    # Deleted children come back; edited fields are put back.
    k8s_cluster.kubectl("delete", "service", "ts-matching", "-n", k8s_namespace)
    k8s_cluster.kubectl("delete", "configmap", "ts-config", "-n", k8s_namespace)
    k8s_cluster.kubectl("scale", "statefulset", "ts-rabbitmq", "--replicas=1", "-n", k8s_namespace)
    k8s_cluster.kubectl(
        "patch", "networkpolicy", "ts-execution", "-n", k8s_namespace, "--type=json",
        "-p", '[{"op": "remove", "path": "/spec/ingress"}]',
    )  # fmt: skip
    started = time.monotonic()

    def restored() -> bool:
        found = children(kube, k8s_namespace)
        svc = found.get(("Service", "ts-matching"))
        sts = found[("StatefulSet", "ts-rabbitmq")]
        policy = found[("NetworkPolicy", "ts-execution")]
        return (
            svc is not None
            and svc["spec"]["selector"].get(api.LABEL_ROLE) == api.ROLE_ACTIVE
            and ("ConfigMap", "ts-config") in found
            and sts["spec"]["replicas"] == 3
            and bool(policy["spec"].get("ingress"))
        )

    wait_until(restored, 30, "the operator to restore the deleted and edited children")
    print(f"\ndrift corrected in {time.monotonic() - started:.2f}s")


def test_pause_stops_changes_but_keeps_reporting(
    k8s_cluster: ControlPlane, k8s_namespace: str, kube: Kube, operator: OperatorProcess, fleet: Fleet
) -> None:
    apply(k8s_cluster, trading_system(k8s_namespace))
    wait_until(lambda: is_ready(kube, k8s_namespace), 90, "phase Ready")
    k8s_cluster.kubectl("annotate", "ts", "ts", "-n", k8s_namespace, f"{api.ANNOTATION_PAUSED}=true")
    wait_until(lambda: get_ts(kube, k8s_namespace)["status"]["phase"] == "Paused", 30, "phase Paused")
    assert condition(get_ts(kube, k8s_namespace), "Paused") == "True"

    k8s_cluster.kubectl("delete", "service", "ts-coordinator", "-n", k8s_namespace)
    active = get_ts(kube, k8s_namespace)["status"]["pairs"]["matching"]["active"]
    fleet.kill(active)  # and no failover while paused
    rounds = operator.metric("trading_operator_reconciles_total", namespace=k8s_namespace)
    wait_until(
        lambda: operator.metric("trading_operator_reconciles_total", namespace=k8s_namespace) >= rounds + 5,
        30,
        "five paused rounds",
    )
    assert ("Service", "ts-coordinator") not in children(kube, k8s_namespace)
    ts = get_ts(kube, k8s_namespace)
    assert ts["status"]["pairs"]["matching"]["active"] == active
    assert ts["status"]["pairs"]["matching"]["epoch"] == 1
    # Still reporting: the dead active shows up in the status while paused.
    wait_until(
        lambda: get_ts(kube, k8s_namespace)["status"]["pairs"]["matching"]["health"] != "healthy",
        30,
        "the paused status to report the dead active",
    )

    k8s_cluster.kubectl("annotate", "ts", "ts", "-n", k8s_namespace, f"{api.ANNOTATION_PAUSED}-")
    wait_until(lambda: ("Service", "ts-coordinator") in children(kube, k8s_namespace), 30, "Service restored")
    wait_until(
        lambda: (
            get_ts(kube, k8s_namespace)["status"]["pairs"]["matching"].get("active") not in (None, active)
        ),
        30,
        "the failover held back by the pause",
    )


def test_deleting_the_resource_removes_every_child(
    k8s_cluster: ControlPlane, k8s_namespace: str, kube: Kube, operator: OperatorProcess, fleet: Fleet
) -> None:
    apply(k8s_cluster, trading_system(k8s_namespace))
    wait_until(lambda: is_ready(kube, k8s_namespace), 90, "phase Ready")
    assert api.FINALIZER in get_ts(kube, k8s_namespace)["metadata"]["finalizers"]
    started = time.monotonic()
    k8s_cluster.kubectl("delete", "ts", "ts", "-n", k8s_namespace, "--timeout=60s")
    wait_until(lambda: not children(kube, k8s_namespace), 60, "every child gone")
    print(f"\nTradingSystem and all children deleted in {time.monotonic() - started:.2f}s")

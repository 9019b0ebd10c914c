"""The whole system on real pods (tests/pods/system.py installs it): the operator from the
chart, `helm test`, and the sample TradingSystem Ready: a RabbitMQ quorum cluster clustered
by the k8s peer-discovery plugin over the headless Service's DNS names, on volumes; the dev
PostgreSQL; the matching and execution pairs and the coordinators, all Ready through the
kubelet's own probes. Runs on this machine's node and on kind (tests/pods/cluster.py)."""

from __future__ import annotations

import contextlib
import json

import pytest

from tests.environment.processes import EnvironmentFailure, wait_until
from tests.pods.system import NAMESPACE, RABBITMQ_REPLICAS, DemoSystem

pytestmark = pytest.mark.pods


def test_helm_install_and_a_tradingsystem_become_ready_on_real_pods(demo_system: DemoSystem) -> None:
    system = demo_system
    cluster = system.cluster
    print(f"on {cluster.name}: timings {system.timings}\nconditions True after: {system.conditions_after}")
    print("status.pairs:", json.dumps(system.ts()["status"].get("pairs"), indent=1))
    print(cluster.kubectl("get", "pods,pvc", "-n", NAMESPACE, "-o", "wide"))

    pods = system.pods()
    for p in pods:  # why a container restarted on the way to Ready (its previous run's end)
        for c in p["status"].get("containerStatuses", []):
            if c["restartCount"]:
                name = p["metadata"]["name"]
                last = c.get("lastState", {}).get("terminated", {})
                print(
                    f"--- {name}/{c['name']}: {c['restartCount']} restarts, last exit {last.get('exitCode')}"
                )
                with contextlib.suppress(EnvironmentFailure):
                    print(
                        cluster.kubectl(
                            "logs", "-n", NAMESPACE, name, "-c", c["name"], "--previous", "--tail=12"
                        )
                    )
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    for wanted in (cluster.images.rabbitmq, cluster.images.postgres):
        assert wanted is None or wanted in images, images
    # Each RabbitMQ node on a bound volume of its own.
    claims = json.loads(cluster.kubectl("get", "pvc", "-n", NAMESPACE, "-o", "json"))["items"]
    assert sorted(c["status"]["phase"] for c in claims) == ["Bound"] * RABBITMQ_REPLICAS, claims
    # One RabbitMQ cluster of three nodes, not three single-node clusters.
    out = cluster.kubectl(
        "exec",
        "-n",
        NAMESPACE,
        "demo-rabbitmq-0",
        "-c",
        "rabbitmq",
        "--",
        "rabbitmq-diagnostics",
        "-q",
        "cluster_status",
        "--formatter",
        "json",
        timeout=120,
    )
    status = json.loads(out)
    assert len(status["running_nodes"]) == RABBITMQ_REPLICAS, status
    # Ready may come before the standbys are (the operator's definition); every pod follows.
    wait_until(system.serving, 300, "every pod of the TradingSystem Ready", interval=1)

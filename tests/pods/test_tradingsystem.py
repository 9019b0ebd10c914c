"""The whole system on real pods: `helm install` the chart (the operator, from the project
image built by scripts/build_images.py) and `helm test` it, apply the sample TradingSystem
with the local images, and wait for Ready: a RabbitMQ quorum cluster (trixie's 4.0.5,
clustered by the k8s peer-discovery plugin over the headless Service's DNS names), the dev
PostgreSQL, the matching and execution pairs and the coordinators, all Ready through the
kubelet's own probes. The same helm flags as the kind workflow (.github/workflows/e2e-kind.yml)."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pytest
import yaml

from tests.environment.kubernetes import REPO_ROOT
from tests.environment.node import PROJECT_IMAGE, KubeletNode
from tests.environment.processes import EnvironmentFailure, wait_until

pytestmark = pytest.mark.pods

NAMESPACE = "demo"
OPERATOR_NAMESPACE = "trading-system"
RABBITMQ_IMAGE = "localhost/trading-system/rabbitmq:4.0"
POSTGRES_IMAGE = "localhost/trading-system/postgres:17"


def small(cpu: str, memory: str, limit: str) -> dict[str, Any]:
    """Requests that fit the whole system on one 2-core node (the defaults ask for ~4.5 cores)."""
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": limit}}


def sample() -> dict[str, Any]:
    ts: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "manifests" / "samples" / "tradingsystem.yaml").read_text()
    )
    repository, tag = PROJECT_IMAGE.split(":")
    spec = ts["spec"]
    spec["image"] = {"repository": repository, "tag": tag, "pullPolicy": "Never"}
    spec["rabbitmq"].update(image=RABBITMQ_IMAGE, resources=small("100m", "256Mi", "1Gi"))
    spec["rabbitmq"]["storage"] = {"emptyDir": True}  # no volume provisioner on this node
    spec["database"]["devImage"] = POSTGRES_IMAGE
    for part in ("matching", "execution"):
        spec[part] = {"resources": small("50m", "128Mi", "512Mi")}
    spec["coordinator"]["resources"] = small("50m", "128Mi", "512Mi")
    return ts


def condition(ts: dict[str, Any], kind: str) -> str:
    for c in ts.get("status", {}).get("conditions", []):
        if c.get("type") == kind:
            return str(c.get("status"))
    return "Unknown"


def test_helm_install_and_a_tradingsystem_become_ready_on_real_pods(real_node: KubeletNode) -> None:
    node = real_node
    plane = node.plane
    repository, tag = PROJECT_IMAGE.split(":")
    timings: dict[str, float] = {}

    start = time.monotonic()
    plane.helm(
        "install",
        "ts",
        str(REPO_ROOT / "charts" / "trading-system"),
        "-n",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--set",
        f"image.repository={repository}",
        "--set",
        f"image.tag={tag}",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "peering.lifetime=15",
        "--wait",
        "--timeout",
        "5m",
        timeout=360,
    )
    timings["helm install --wait"] = time.monotonic() - start
    # The chart's test pod: `trading-operator selftest` against the API server and the
    # operator's metrics Service by DNS name.
    start = time.monotonic()
    print(plane.helm("test", "ts", "-n", OPERATOR_NAMESPACE, "--timeout", "3m", timeout=240))
    timings["helm test"] = time.monotonic() - start

    plane.kubectl("create", "namespace", NAMESPACE)
    start = time.monotonic()
    plane.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(sample()))

    seen: dict[str, float] = {}

    def ready() -> bool:
        ts = json.loads(plane.kubectl("get", "tradingsystem", "demo", "-n", NAMESPACE, "-o", "json"))
        for c in ts.get("status", {}).get("conditions", []):
            if c.get("status") == "True" and c["type"] not in seen:
                seen[c["type"]] = time.monotonic() - start
        return condition(ts, "Ready") == "True"

    try:
        wait_until(ready, 900, "the TradingSystem Ready", interval=2)
    except EnvironmentFailure:
        print(plane.kubectl("get", "tradingsystem,pods", "-A", "-o", "wide"))
        print(plane.kubectl("get", "tradingsystem", "demo", "-n", NAMESPACE, "-o", "yaml"))
        print(plane.kubectl("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp"))
        print(
            plane.kubectl(
                "logs", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/name=trading-operator", "--tail=80"
            )
        )
        raise
    timings["TradingSystem applied -> Ready"] = time.monotonic() - start
    print(f"timings: {timings}\nconditions True after: {seen}")
    ts = json.loads(plane.kubectl("get", "tradingsystem", "demo", "-n", NAMESPACE, "-o", "json"))
    print("status.pairs:", json.dumps(ts["status"].get("pairs"), indent=1))
    print(plane.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide"))

    pods = json.loads(plane.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json"))["items"]
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
                        plane.kubectl(
                            "logs", "-n", NAMESPACE, name, "-c", c["name"], "--previous", "--tail=12"
                        )
                    )
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    assert {RABBITMQ_IMAGE, POSTGRES_IMAGE} <= images
    rabbit = [p for p in pods if p["metadata"]["name"].startswith("demo-rabbitmq-")]
    assert len(rabbit) == 3
    # One RabbitMQ cluster of three nodes, not three single-node clusters.
    out = plane.kubectl(
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
    assert len(status["running_nodes"]) == 3, status

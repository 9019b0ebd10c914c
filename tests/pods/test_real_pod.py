"""Real pods on a real kubelet: the project image, the kubelet's own HTTP probes, a pod IP
that answers from the host, nothing left behind once the pod is deleted; and the RabbitMQ
image answering AMQP on its pod IP."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.environment.node import PROJECT_IMAGE, KubeletNode
from tests.environment.processes import EnvironmentFailure, wait_until
from tests.pods.manifests import RESTRICTED, pod

pytestmark = pytest.mark.pods

NAMESPACE = "real-pods"
IMAGE = PROJECT_IMAGE
RABBITMQ_IMAGE = "localhost/trading-system/rabbitmq:4.0"  # trixie's rabbitmq-server 4.0.5


def web_pod(name: str) -> dict[str, Any]:
    """The project image twice: `trading-system --help` as an init container (the entry point
    works), then an HTTP server on 8080 that the kubelet probes, locked down like the chart."""
    probe = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1, "timeoutSeconds": 2}
    cli = {
        "name": "cli",
        "image": IMAGE,
        "imagePullPolicy": "Never",
        "command": ["trading-system", "--help"],
        "securityContext": RESTRICTED,
    }
    web = {
        "name": "web",
        "image": IMAGE,
        "imagePullPolicy": "Never",
        "command": ["python", "-m", "http.server", "8080", "--directory", "/tmp"],
        "ports": [{"containerPort": 8080, "name": "http"}],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 5},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": RESTRICTED,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return pod(
        name,
        NAMESPACE,
        [web],
        terminationGracePeriodSeconds=2,
        initContainers=[cli],
        volumes=[{"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}],
    )


def pod_json(node: KubeletNode, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(node.plane.kubectl("get", "pod", name, "-n", NAMESPACE, "-o", "json"))
    return result


def pod_ready(node: KubeletNode, name: str) -> bool:
    conditions = pod_json(node, name)["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return int(resp.status)


def pod_gone(node: KubeletNode, name: str) -> bool:
    try:
        node.plane.kubectl("get", "pod", name, "-n", NAMESPACE, "-o", "name")
    except EnvironmentFailure as exc:
        return "NotFound" in str(exc)
    return False


def pod_cgroups(node: KubeletNode, uid: str) -> list[Path]:
    root = Path("/sys/fs/cgroup/memory") / node.cgroup_root
    return list(root.rglob(f"pod{uid}"))


def test_project_image_pod_becomes_ready_answers_and_goes_away(real_node: KubeletNode) -> None:
    node = real_node
    node.plane.kubectl("create", "namespace", NAMESPACE)
    name = "web"

    created = time.monotonic()
    node.plane.kubectl("apply", "-f", "-", stdin=json.dumps(web_pod(name)))
    wait_until(lambda: pod_ready(node, name), 120, "pod Ready through the kubelet's readiness probe")
    to_ready = time.monotonic() - created
    print(f"pod created -> Ready in {to_ready:.1f} s; node start: {node.timings}")

    pod = pod_json(node, name)
    status = pod["status"]
    assert pod["spec"]["nodeName"] == node.name
    (init,) = status["initContainerStatuses"]
    assert init["state"]["terminated"]["exitCode"] == 0
    (web,) = status["containerStatuses"]
    assert web["ready"] and web["restartCount"] == 0 and "running" in web["state"]
    assert web["containerID"].startswith("containerd://")
    pod_ip = status["podIP"]
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(node.subnet)

    # The pod IP answers from the host, over the node's bridge.
    assert http_status(f"http://{pod_ip}:8080/") == 200
    # The apiserver reaches the kubelet: the init container's output is the CLI's help.
    assert "usage" in node.plane.kubectl("logs", name, "-n", NAMESPACE, "-c", "cli").lower()
    # Running containers: the sandbox (pause) and the web server.
    assert node.task_count() == 2
    uid = pod["metadata"]["uid"]
    assert pod_cgroups(node, uid), "the pod's cgroup exists under the node's cgroup root"

    node.plane.kubectl("delete", "pod", name, "-n", NAMESPACE, "--wait=false")
    wait_until(lambda: pod_gone(node, name), 60, "the pod to be deleted")
    wait_until(lambda: node.task_count() == 0, 30, "the containers to stop")
    wait_until(lambda: not pod_cgroups(node, uid), 30, "the pod's cgroup to go")
    with pytest.raises(OSError):
        http_status(f"http://{pod_ip}:8080/")


# What operator/trading_operator/manifests/rabbitmq.py mounts and sets, cut down to one node:
# conf.d settings that RabbitMQ 3.10 rejects (continuous membership reconciliation needs
# 3.13+), the plugins file from the operator's ConfigMap, uid 999, a read-only root file
# system with emptyDirs for HOME and /tmp.
RABBITMQ_CONF = """\
default_queue_type = quorum
quorum_queue.continuous_membership_reconciliation.enabled = true
quorum_queue.continuous_membership_reconciliation.target_group_size = 1
management.tcp.port = 15672
prometheus.tcp.port = 15692
"""


def test_rabbitmq_image_runs_like_the_operator_runs_it(real_node: KubeletNode) -> None:
    node = real_node
    ns = "real-rabbitmq"
    node.plane.kubectl("create", "namespace", ns)
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "rabbitmq", "namespace": ns},
        "data": {
            "operator.conf": RABBITMQ_CONF,
            "enabled_plugins": "[rabbitmq_management,rabbitmq_peer_discovery_k8s,rabbitmq_prometheus].\n",
        },
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "rabbitmq", "namespace": ns},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 999,
                "runAsGroup": 999,
                "fsGroup": 999,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "rabbitmq",
                    "image": RABBITMQ_IMAGE,
                    "imagePullPolicy": "Never",
                    "env": [
                        {
                            "name": "RABBITMQ_ENABLED_PLUGINS_FILE",
                            "value": "/etc/rabbitmq-operator/enabled_plugins",
                        }
                    ],
                    "ports": [{"containerPort": 5672, "name": "amqp"}],
                    "readinessProbe": {"tcpSocket": {"port": "amqp"}, "periodSeconds": 2},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [
                        {"name": "home", "mountPath": "/var/lib/rabbitmq"},
                        {"name": "tmp", "mountPath": "/tmp"},
                        {
                            "name": "config",
                            "mountPath": "/etc/rabbitmq/conf.d/10-operator.conf",
                            "subPath": "operator.conf",
                        },
                        {
                            "name": "config",
                            "mountPath": "/etc/rabbitmq-operator/enabled_plugins",
                            "subPath": "enabled_plugins",
                        },
                    ],
                }
            ],
            "volumes": [
                {"name": "home", "emptyDir": {}},
                {"name": "tmp", "emptyDir": {}},
                {"name": "config", "configMap": {"name": "rabbitmq"}},
            ],
        },
    }
    node.plane.kubectl("apply", "-f", "-", stdin=json.dumps(config))
    created = time.monotonic()
    node.plane.kubectl("apply", "-f", "-", stdin=json.dumps(pod))

    def status() -> dict[str, Any]:
        result: dict[str, Any] = json.loads(
            node.plane.kubectl("get", "pod", "rabbitmq", "-n", ns, "-o", "json")
        )
        return dict(result["status"])

    def ready() -> bool:
        conditions = status().get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    try:
        wait_until(ready, 180, "the RabbitMQ pod Ready (tcpSocket probe on 5672)")
    except EnvironmentFailure:
        print(node.plane.kubectl("logs", "rabbitmq", "-n", ns, "--tail=60"))
        raise
    print(f"RabbitMQ pod created -> Ready in {time.monotonic() - created:.1f} s")
    pod_ip = status()["podIP"]
    with socket.create_connection((pod_ip, 5672), timeout=5) as conn:
        conn.sendall(b"AMQP\x00\x00\x09\x01")
        frame = conn.recv(4096)
    # A method frame (type 1) on channel 0 carrying connection.start (class 10, method 10).
    assert frame[:3] == b"\x01\x00\x00" and frame[7:11] == b"\x00\x0a\x00\x0a", frame[:16]
    # The plugins from the mounted file run: Prometheus reports the 4.x version.
    metrics = ""

    def prometheus_up() -> bool:
        nonlocal metrics
        with urllib.request.urlopen(f"http://{pod_ip}:15692/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        return True

    wait_until(prometheus_up, 60, "the prometheus plugin on 15692")
    assert re.search(r'rabbitmq_build_info\{[^}]*rabbitmq_version="4\.', metrics), metrics[:2000]
    node.plane.kubectl("delete", "namespace", ns, "--wait=false")
    wait_until(lambda: node.task_count() == 0, 60, "the RabbitMQ containers to stop")

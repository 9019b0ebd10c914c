"""Service networking on the real node: CoreDNS answers cluster names, kube-proxy routes
ClusterIPs, and pods reach the API server through the ``kubernetes`` Service, as RabbitMQ's
peer discovery and the operator's pods need."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from tests.environment.node import PROJECT_IMAGE, KubeletNode
from tests.environment.processes import wait_until
from tests.pods.manifests import RESTRICTED, pod

pytestmark = pytest.mark.pods

NAMESPACE = "real-services"

# Run in a pod: the API server's Service by DNS name, with the pod's service-account token.
API_CLIENT = """
import json, socket, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
print("resolved", socket.gethostbyname("kubernetes.default.svc.cluster.local"))
ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
token = open(f"{sa}/token").read()
url = "https://kubernetes.default.svc/api/v1/namespaces/default/services/kubernetes"
req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
try:
    urllib.request.urlopen(req, context=ctx, timeout=10)
except urllib.error.HTTPError as exc:  # the default service account may not read Services
    print("api status", exc.code)
version = urllib.request.urlopen("https://kubernetes.default.svc/version", context=ctx, timeout=10)
print("version", json.load(version)["gitVersion"])
"""

# Run in a pod: another pod through a ClusterIP Service (short and full names) and through
# a headless Service's per-pod name (what a StatefulSet's pods, RabbitMQ's nodes, use).
WEB_CLIENT = """
import socket, sys, urllib.request
ns = sys.argv[1]
for url in ("http://web/", f"http://web.{ns}.svc.cluster.local/"):
    print(url, urllib.request.urlopen(url, timeout=10).status)
print("web ClusterIP", socket.gethostbyname("web"))
print("web-0", socket.gethostbyname(f"web-0.web-nodes.{ns}"))
try:
    socket.gethostbyname("no-such-service")
except OSError:
    print("unknown name fails")
"""


def python_container(script: str, *args: str) -> dict[str, Any]:
    return {
        "name": "main",
        "image": PROJECT_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["python", "-c", script, *args],
        "securityContext": RESTRICTED,
    }


def get(node: KubeletNode, kind: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(node.plane.kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json"))
    return result


def finished(node: KubeletNode, name: str) -> bool:
    phase = str(get(node, "pod", name)["status"].get("phase"))
    if phase == "Failed":
        raise AssertionError(f"{name} failed:\n{node.plane.kubectl('logs', name, '-n', NAMESPACE)}")
    return phase == "Succeeded"


def ready(node: KubeletNode, name: str) -> bool:
    conditions = get(node, "pod", name)["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_pods_resolve_cluster_names_and_reach_services(real_node: KubeletNode) -> None:
    node = real_node
    node.plane.kubectl("create", "namespace", NAMESPACE)
    # The default service account appears shortly after the namespace.
    wait_until(
        lambda: bool(node.plane.kubectl("get", "serviceaccount", "default", "-n", NAMESPACE)),
        30,
        "the default service account",
    )

    # 1. The API server through the kubernetes Service, by its DNS name.
    start = time.monotonic()
    node.plane.kubectl(
        "apply",
        "-f",
        "-",
        stdin=json.dumps(pod("api-client", NAMESPACE, [python_container(API_CLIENT)], restartPolicy="Never")),
    )
    wait_until(lambda: finished(node, "api-client"), 120, "the API client pod to succeed")
    logs = node.plane.kubectl("logs", "api-client", "-n", NAMESPACE)
    print(f"api-client: {time.monotonic() - start:.1f} s\n{logs}")
    assert "resolved 10.96.0.1" in logs
    assert "version v1." in logs

    # 2. A pod through a ClusterIP Service and a headless Service, by DNS name.
    web = {
        "name": "main",
        "image": PROJECT_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["python", "-m", "http.server", "8080", "--directory", "/tmp"],
        "ports": [{"containerPort": 8080, "name": "http"}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        "securityContext": RESTRICTED,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    server = pod(
        "web",
        NAMESPACE,
        [web],
        hostname="web-0",
        subdomain="web-nodes",
        volumes=[{"name": "tmp", "emptyDir": {}}],
    )
    services = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": port, "targetPort": "http"}],
                **extra,
            },
        }
        for name, port, extra in (
            ("web", 80, {}),
            ("web-nodes", 8080, {"clusterIP": "None", "publishNotReadyAddresses": True}),
        )
    ]
    for item in (server, *services):
        node.plane.kubectl("apply", "-f", "-", stdin=json.dumps(item))
    wait_until(lambda: ready(node, "web"), 120, "the web pod Ready")
    cluster_ip = get(node, "service", "web")["spec"]["clusterIP"]
    pod_ip = get(node, "pod", "web")["status"]["podIP"]

    # The host reaches the ClusterIP too (kube-proxy's OUTPUT rules).
    def host_reaches_vip() -> bool:
        with urllib.request.urlopen(f"http://{cluster_ip}/", timeout=2) as resp:
            return bool(resp.status == 200)

    wait_until(host_reaches_vip, 30, "the web ClusterIP from the host")

    start = time.monotonic()
    client = pod("web-client", NAMESPACE, [python_container(WEB_CLIENT, NAMESPACE)], restartPolicy="Never")
    node.plane.kubectl("apply", "-f", "-", stdin=json.dumps(client))
    wait_until(lambda: finished(node, "web-client"), 120, "the web client pod to succeed")
    logs = node.plane.kubectl("logs", "web-client", "-n", NAMESPACE)
    print(f"web-client: {time.monotonic() - start:.1f} s\n{logs}")
    assert "http://web/ 200" in logs
    assert f"http://web.{NAMESPACE}.svc.cluster.local/ 200" in logs
    assert f"web ClusterIP {cluster_ip}" in logs
    assert f"web-0 {pod_ip}" in logs
    assert "unknown name fails" in logs

    node.plane.kubectl("delete", "namespace", NAMESPACE, "--wait=false")
    wait_until(lambda: node.task_count() == 0, 60, "the pods to stop")

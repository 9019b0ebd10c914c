"""The Kubernetes control plane is real: apiserver, controllers, scheduler and KWOK nodes."""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, dynamic

from tests.environment.kubernetes import POD_CIDR, ControlPlane
from tests.environment.processes import EnvironmentFailure, wait_until

pytestmark = pytest.mark.k8s

FIELD_MANAGER = "ts-smoke-test"
TINY_CHART = Path(__file__).parent / "fixtures" / "tiny-chart"

SMOKE_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.smoke.trading-system.dev"},
    "spec": {
        "group": "smoke.trading-system.dev",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 5}},
                                "required": ["size"],
                            }
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def dyn(k8s_cluster: ControlPlane) -> Iterator[dynamic.DynamicClient]:
    api_client = config.new_client_from_config(config_file=str(k8s_cluster.kubeconfig))
    with api_client:
        yield dynamic.DynamicClient(api_client)


def _statefulset(namespace: str) -> dict[str, Any]:
    labels = {"app": "smoke"}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "smoke", "namespace": namespace},
        "spec": {
            "serviceName": "smoke",
            "replicas": 3,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "example.invalid/smoke:1"}]},
            },
        },
    }


def _pods(dyn: dynamic.DynamicClient, namespace: str) -> list[Any]:
    pods = dyn.resources.get(api_version="v1", kind="Pod")
    return list(pods.get(namespace=namespace, label_selector="app=smoke").items)


def test_crd_and_statefulset_produce_running_pods_with_loopback_ips(
    dyn: dynamic.DynamicClient, k8s_namespace: str
) -> None:
    crds = dyn.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    crds.server_side_apply(body=SMOKE_CRD, field_manager=FIELD_MANAGER)
    wait_until(lambda: _crd_established(dyn), 30, "CRD Established")
    widgets = dyn.resources.get(api_version="smoke.trading-system.dev/v1", kind="Widget")
    widgets.server_side_apply(
        body={
            "apiVersion": "smoke.trading-system.dev/v1",
            "kind": "Widget",
            "metadata": {"name": "w", "namespace": k8s_namespace},
            "spec": {"size": 3},
        },
        namespace=k8s_namespace,
        field_manager=FIELD_MANAGER,
    )
    with pytest.raises(dynamic.exceptions.UnprocessibleEntityError, match=r"spec\.size"):
        widgets.create(
            body={
                "apiVersion": "smoke.trading-system.dev/v1",
                "kind": "Widget",
                "metadata": {"name": "bad"},
                "spec": {"size": 9},
            },
            namespace=k8s_namespace,
        )

    sts = dyn.resources.get(api_version="apps/v1", kind="StatefulSet")
    sts.server_side_apply(
        body=_statefulset(k8s_namespace), namespace=k8s_namespace, field_manager=FIELD_MANAGER
    )

    def all_running() -> bool:
        pods = _pods(dyn, k8s_namespace)
        return len(pods) == 3 and all(p.status.phase == "Running" and p.status.podIP for p in pods)

    wait_until(all_running, 60, "3 StatefulSet pods Running")
    cidr = ipaddress.ip_network(POD_CIDR)
    ips = [ipaddress.ip_address(p.status.podIP) for p in _pods(dyn, k8s_namespace)]
    assert all(ip in cidr and ip.is_loopback for ip in ips), ips
    assert len(set(ips)) == 3


def _crd_established(dyn: dynamic.DynamicClient) -> bool:
    crds = dyn.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    crd = crds.get(name=SMOKE_CRD["metadata"]["name"])
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])


def test_a_process_can_listen_on_a_pod_ip(k8s_cluster: ControlPlane, k8s_namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "listener", "namespace": k8s_namespace},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/x:1"}]},
    }
    k8s_cluster.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
    wait_until(lambda: bool(_pod_ip(k8s_cluster, k8s_namespace, "listener")), 60, "pod IP")
    ip = _pod_ip(k8s_cluster, k8s_namespace, "listener")
    with socket.socket() as server:
        server.bind((ip, 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=2):
            conn, _ = server.accept()
            conn.close()


def _pod_ip(plane: ControlPlane, namespace: str, name: str) -> str:
    return plane.kubectl("get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.podIP}").strip()


def test_tests_can_make_a_pod_not_ready_and_failed(k8s_cluster: ControlPlane, k8s_namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "victim", "namespace": k8s_namespace},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/x:1"}]},
    }
    k8s_cluster.kubectl("apply", "-f", "-", stdin=json.dumps(pod))

    def ready_status() -> str:
        return k8s_cluster.kubectl(
            "get",
            "pod",
            "victim",
            "-n",
            k8s_namespace,
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        ).strip()

    wait_until(lambda: ready_status() == "True", 60, "pod Ready")
    k8s_cluster.set_pod_ready(k8s_namespace, "victim", ready=False)
    wait_until(lambda: ready_status() == "False", 30, "pod NotReady")
    k8s_cluster.fail_pod(k8s_namespace, "victim")
    wait_until(
        lambda: (
            k8s_cluster.kubectl(
                "get", "pod", "victim", "-n", k8s_namespace, "-o", "jsonpath={.status.phase}"
            ).strip()
            == "Failed"
        ),
        60,
        "pod Failed",
    )


def test_kubectl_through_generated_kubeconfig_sees_real_version(k8s_cluster: ControlPlane) -> None:
    version = json.loads(k8s_cluster.kubectl("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"] == "v1.36.3"
    assert version["clientVersion"]["gitVersion"] == "v1.36.3"
    nodes = k8s_cluster.kubectl("get", "nodes", "-o", "name")
    assert "node/kwok-node-0" in nodes


def test_helm_install_and_uninstall(k8s_cluster: ControlPlane, k8s_namespace: str) -> None:
    k8s_cluster.helm("install", "tiny", str(TINY_CHART), "-n", k8s_namespace, "--wait", "--timeout", "60s")
    data = json.loads(k8s_cluster.kubectl("get", "configmap", "tiny-info", "-n", k8s_namespace, "-o", "json"))
    assert data["data"]["kubeVersion"] == "v1.36.3"
    assert "tiny" in k8s_cluster.helm("list", "-n", k8s_namespace, "-q")
    k8s_cluster.helm("uninstall", "tiny", "-n", k8s_namespace, "--wait")
    with pytest.raises(EnvironmentFailure, match=r"NotFound|not found"):
        k8s_cluster.kubectl("get", "configmap", "tiny-info", "-n", k8s_namespace)


def test_service_accounts_are_created_by_the_controller_manager(
    k8s_cluster: ControlPlane, k8s_namespace: str
) -> None:
    wait_until(
        lambda: "default" in k8s_cluster.kubectl("get", "sa", "-n", k8s_namespace, "-o", "name"),
        60,
        "default ServiceAccount in the new namespace",
    )
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(k8s_cluster.kubeconfig)))
    names = [sa.metadata.name for sa in api.list_namespaced_service_account(k8s_namespace).items]
    assert "default" in names

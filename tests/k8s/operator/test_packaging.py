"""The chart and the plain manifests against the real API server, and their drift checks."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from tests.environment.kubernetes import REPO_ROOT, ControlPlane
from tests.environment.processes import EnvironmentFailure, wait_until
from tests.k8s.operator.conftest import SAMPLE
from trading_operator import api, generate

pytestmark = pytest.mark.k8s

CHART = str(REPO_ROOT / "charts" / "trading-system")


def test_generated_files_match_their_sources(k8s_cluster: ControlPlane) -> None:
    """charts/.../crds/ comes from trading_operator.crd, manifests/ from the chart."""
    stale = generate.stale(str(k8s_cluster.helm_path))
    assert not stale, f"regenerate with `python -m trading_operator.generate --helm <helm>`: {stale}"


def _json(plane: ControlPlane, *args: str) -> Any:
    return json.loads(plane.kubectl(*args, "-o", "json"))


def _finish_helm_test_pod(plane: ControlPlane, namespace: str, pod: str, done: threading.Event) -> None:
    """Play the kubelet for the helm test pod: nothing runs in KWOK pods, so report success."""

    def running() -> bool:
        phase = plane.kubectl("get", "pod", pod, "-n", namespace, "-o", "jsonpath={.status.phase}").strip()
        return phase == "Running"

    try:
        wait_until(running, 60, "the helm test pod")
        status = {"status": {"phase": "Succeeded", "conditions": [{"type": "Ready", "status": "False"}]}}
        plane.kubectl(
            "patch",
            "pod",
            pod,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(status),
        )
    finally:
        done.set()


def test_helm_install_upgrade_test_and_uninstall(k8s_cluster: ControlPlane, k8s_namespace: str) -> None:
    release, ns = "ops", k8s_namespace
    with pytest.raises(EnvironmentFailure, match="replicaCount"):
        k8s_cluster.helm("install", release, CHART, "-n", ns, "--set", "replicaCount=0")

    k8s_cluster.helm(
        "install",
        release,
        CHART,
        "-n",
        ns,
        "--set",
        "grafanaDashboard.enabled=true",
        "--wait",
        "--timeout",
        "90s",
    )
    crd = _json(k8s_cluster, "get", "crd", api.CRD_NAME)
    assert any(c["type"] == "Established" and c["status"] == "True" for c in crd["status"]["conditions"])
    deployment = _json(k8s_cluster, "get", "deployment", f"{release}-trading-system-operator", "-n", ns)
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "--peering=ops-trading-system" in container["args"] and "--all-namespaces" in container["args"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    role = _json(k8s_cluster, "get", "clusterrole", f"{release}-trading-system-{ns}")
    secrets = next(r for r in role["rules"] if r["resources"] == ["secrets"])
    assert sorted(secrets["verbs"]) == ["create", "get", "list", "watch"], (
        "secrets are never updated or deleted"
    )
    k8s_cluster.kubectl("get", "configmap", f"{release}-trading-system-dashboards", "-n", ns)
    k8s_cluster.kubectl("get", "pdb", f"{release}-trading-system-operator", "-n", ns)

    k8s_cluster.helm(
        "upgrade", release, CHART, "-n", ns, "--reuse-values",
        "--set", "replicaCount=1", "--set", "peering.enabled=false", "--set", f"watchNamespaces={{{ns}}}",
        "--wait", "--timeout", "90s",
    )  # fmt: skip
    deployment = _json(k8s_cluster, "get", "deployment", f"{release}-trading-system-operator", "-n", ns)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert deployment["spec"]["replicas"] == 1 and "--standalone" in args and f"--namespace={ns}" in args
    with pytest.raises(EnvironmentFailure):
        k8s_cluster.kubectl("get", "pdb", f"{release}-trading-system-operator", "-n", ns)

    done = threading.Event()
    kubelet = threading.Thread(
        target=_finish_helm_test_pod,
        args=(k8s_cluster, ns, f"{release}-trading-system-test", done),
        daemon=True,
    )
    kubelet.start()
    output = k8s_cluster.helm("test", release, "-n", ns, "--timeout", "90s")
    done.wait(10)
    assert "Phase:          Succeeded" in output or "Succeeded" in output, output

    k8s_cluster.helm("uninstall", release, "-n", ns, "--wait", "--timeout", "60s")
    with pytest.raises(EnvironmentFailure, match=r"NotFound|not found"):
        k8s_cluster.kubectl("get", "clusterrole", f"{release}-trading-system-{ns}")
    with pytest.raises(EnvironmentFailure, match=r"NotFound|not found"):
        k8s_cluster.kubectl("get", "deployment", f"{release}-trading-system-operator", "-n", ns)
    # CRDs stay, as Helm does for every chart: deleting them would delete every TradingSystem.
    k8s_cluster.kubectl("get", "crd", api.CRD_NAME)


def test_kubectl_apply_of_the_plain_manifests(k8s_cluster: ControlPlane) -> None:
    manifests = str(REPO_ROOT / "manifests")
    # A previous run's namespace may still be terminating.
    wait_until(
        lambda: "trading-system" not in k8s_cluster.kubectl("get", "namespaces", "-o", "name"),
        120,
        "old namespace gone",
    )
    try:
        output = k8s_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", manifests)
        assert "deployment.apps/trading-system-operator serverside-applied" in output, output
        k8s_cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", manifests
        )
        wait_until(
            lambda: (
                _json(k8s_cluster, "get", "deployment", "trading-system-operator", "-n", "trading-system")[
                    "status"
                ].get("readyReplicas")
                == 2
            ),
            60,
            "the operator Deployment from manifests/",
        )
        k8s_cluster.kubectl("apply", "--dry-run=server", "-n", "trading-system", "-f", str(SAMPLE))
    finally:
        k8s_cluster.kubectl("delete", "namespace", "trading-system", "--wait=false", "--ignore-not-found")
        k8s_cluster.kubectl(
            "delete", "clusterrole,clusterrolebinding", "trading-system-trading-system", "--ignore-not-found"
        )

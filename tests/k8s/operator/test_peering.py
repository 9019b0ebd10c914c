"""Two operator replicas with kopf peering: one acts, the other takes over when it dies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.environment.kubernetes import REPO_ROOT, ControlPlane
from tests.environment.processes import wait_until
from tests.k8s.operator.conftest import OperatorProcess, apply, is_ready, pair_status, trading_system
from tests.k8s.operator.fakes import Fleet
from trading_operator import api
from trading_operator.k8s_io import Kube

pytestmark = pytest.mark.k8s

LIFETIME = 10  # seconds; kopf's default is 60, which is the takeover delay in production


@pytest.fixture
def replicas(
    k8s_cluster: ControlPlane, k8s_namespace: str, ts_crd: object, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    k8s_cluster.kubectl(
        "apply",
        "--server-side",
        "-f",
        str(REPO_ROOT / "charts" / "trading-system" / "crds" / "kopf-peerings.yaml"),
    )
    k8s_cluster.wait_crd_established("kopfpeerings.kopf.dev", 30)

    def replica(name: str, priority: int) -> OperatorProcess:
        mode = ("--peering=ts-operator", f"--priority={priority}", f"--peering-lifetime={LIFETIME}")
        return OperatorProcess(k8s_cluster, k8s_namespace, tmp_path, name=name, mode=mode)

    first, second = replica("first", 200), replica("second", 100)
    first.start()
    second.start()
    try:
        yield first, second
    finally:
        k8s_cluster.kubectl("delete", "tradingsystems", "--all", "-n", k8s_namespace, "--timeout=60s")
        first.stop()
        second.stop()


def test_the_standby_replica_takes_over_when_the_active_one_dies(
    k8s_cluster: ControlPlane,
    k8s_namespace: str,
    kube: Kube,
    fleet: Fleet,
    replicas: tuple[OperatorProcess, OperatorProcess],
) -> None:
    first, second = replicas
    apply(k8s_cluster, trading_system(k8s_namespace))
    wait_until(lambda: is_ready(kube, k8s_namespace), 90, "phase Ready")
    # kopf starts every replica paused until peering has spoken; the lower one stays so.
    assert second.metric("trading_operator_managed_resources") == 0
    assert second.metric("trading_operator_reconciles_total", namespace=k8s_namespace) == 0
    assert first.metric("trading_operator_child_applies_total", namespace=k8s_namespace) > 0

    first.kill()
    killed = time.monotonic()
    old = pair_status(kube, k8s_namespace, "matching")["active"]
    fleet.kill(old)  # a failure that needs the surviving replica to act
    k8s_cluster.kubectl("delete", "service", "ts-coordinator", "-n", k8s_namespace)
    wait_until(
        lambda: (
            pair_status(kube, k8s_namespace, "matching").get("active") not in (None, old)
            and bool(kube.get("v1", "Service", k8s_namespace, "ts-coordinator"))
        ),
        LIFETIME * 3 + 30,
        "the surviving replica to fail over and restore the Service",
    )
    took = time.monotonic() - killed
    print(
        f"\npeering handover (lifetime {LIFETIME}s): "
        f"the second replica acted {took:.1f}s after the first died"
    )
    assert took < LIFETIME * 3 + 30
    assert pair_status(kube, k8s_namespace, "matching")["epoch"] == 2
    assert api.FINALIZER in kube.get(api.API_VERSION, api.KIND, k8s_namespace, "ts")["metadata"]["finalizers"]  # type: ignore[index]

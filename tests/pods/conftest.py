"""Fixtures for the real-pods tests: a control plane without KWOK, a real kubelet + containerd
node (tests/environment/node.py) with the images scripts/build_images.py built offline, and
the whole product installed on it once per session (tests/pods/system.py).

With ``TS_PODS_CLUSTER=kind`` the same scenarios run on a kind cluster made elsewhere (the
GitHub workflow .github/workflows/e2e-kind.yml); the tests that need this machine's node
itself (test_real_pod.py, test_services.py) are skipped there.

These tests need root and the Debian packages containerd, runc, containernetworking-plugins,
iptables and debootstrap (scripts/install-deps.sh), and the kubelet, kube-proxy and CoreDNS
from scripts/build-k8s-tools.sh. ``scripts/test.sh -m "not pods"`` leaves them out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.environment.kubernetes import ControlPlane, tools_bin_dir
from tests.environment.node import KubeletNode, build_images, sandbox_image
from tests.pods.cluster import LocalNodeCluster, PodCluster, external_cluster
from tests.pods.system import DemoSystem, install


@pytest.fixture(scope="session")
def real_node(testenv_base: Path) -> Iterator[KubeletNode]:
    """A control plane (no KWOK) with one real node whose containerd holds the images."""
    if external_cluster() is not None:
        pytest.skip("needs this machine's own kubelet node")
    images = build_images()
    plane = ControlPlane(testenv_base / "kubernetes-pods", bin_dir=tools_bin_dir(), kwok=False)
    node = KubeletNode(plane, testenv_base / "node", sandbox_image=sandbox_image(images))
    try:
        plane.start()
        node.start(images=images.values())
        yield node
    finally:
        try:
            node.stop()
        finally:
            plane.stop()


@pytest.fixture(scope="session")
def pod_cluster(request: pytest.FixtureRequest) -> PodCluster:
    """The cluster the scenarios run on: kind when the workflow says so, else this node."""
    external = external_cluster()
    if external is not None:
        return external
    return LocalNodeCluster(request.getfixturevalue("real_node"))


@pytest.fixture(scope="session")
def demo_system(pod_cluster: PodCluster) -> Iterator[DemoSystem]:
    """helm install + the sample TradingSystem, Ready, shared by the scenarios in turn."""
    system = install(pod_cluster)
    yield system
    system.kube.close()

"""Fixtures for the real-pods tests: a control plane without KWOK, a real kubelet + containerd
node (tests/environment/node.py) and the images built offline by scripts/build_images.py.

These tests need root, the Debian packages containerd, runc, containernetworking-plugins,
iptables and debootstrap (scripts/install-deps.sh), and a kubelet from
scripts/build-k8s-tools.sh. They run only with ``TS_PODS=1`` until they are part of CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.environment.kubernetes import ControlPlane, tools_bin_dir
from tests.environment.node import KubeletNode, build_images, sandbox_image


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("TS_PODS") == "1":
        return
    skip = pytest.mark.skip(reason="real pods (kubelet + containerd) run only with TS_PODS=1")
    for item in items:
        if "pods" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pod_images() -> dict[str, Path]:
    """Image reference -> docker archive, built (or taken from the cache) by the script."""
    return build_images()


@pytest.fixture(scope="session")
def real_node(testenv_base: Path, pod_images: dict[str, Path]) -> Iterator[KubeletNode]:
    """A control plane (no KWOK) with one real node whose containerd holds the images."""
    plane = ControlPlane(testenv_base / "kubernetes-pods", bin_dir=tools_bin_dir(), kwok=False)
    node = KubeletNode(plane, testenv_base / "node", sandbox_image=sandbox_image(pod_images))
    try:
        plane.start()
        node.start(images=pod_images.values())
        yield node
    finally:
        try:
            node.stop()
        finally:
            plane.stop()

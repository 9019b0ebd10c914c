"""The cluster the real-pods scenarios run on: this machine's kubelet + containerd node, or a
kind cluster on a GitHub runner (.github/workflows/e2e-kind.yml). The scenarios
(tests/pods/test_tradingsystem.py, tests/pods/test_pod_chaos.py) only use what this module
offers, so one scenario file serves both.

What differs between the two:

* the tools: the local control plane's kubectl and helm, or the ones on PATH for kind;
* the node: a command "on the node" runs on this host, or through ``docker exec`` in the
  kind node's container (containerd's ``ctr``, ``nsenter`` and ``iptables`` are on both);
* the images: the ones scripts/build_images.py built (RabbitMQ and PostgreSQL too, since
  nothing here can pull), or the project image kind loaded and the operator's defaults;
* storage: kind has a volume provisioner; here the test creates a hostPath volume per
  RabbitMQ claim, so a deleted RabbitMQ pod comes back with its data, as on kind.

Pod IPs must answer from the test process: they do here (the node's bridge), and the kind
workflow adds a route to the pod subnet through the node's container.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.environment.node import PROJECT_IMAGE, KubeletNode
from tests.environment.processes import EnvironmentFailure, run

RABBITMQ_UID = 999  # the RabbitMQ image's user (the operator's pod security context too)
LOCAL_RABBITMQ_IMAGE = "localhost/trading-system/rabbitmq:4.0"
LOCAL_POSTGRES_IMAGE = "localhost/trading-system/postgres:17"


@dataclass(frozen=True)
class Images:
    """What a TradingSystem on this cluster runs: the project image (repository, tag) and,
    when the operator's defaults cannot be pulled, RabbitMQ and PostgreSQL images."""

    project: tuple[str, str]
    rabbitmq: str | None = None
    postgres: str | None = None


class PodCluster:
    """One cluster's tools, node access, images and storage."""

    name = "cluster"
    kubeconfig: Path
    images: Images

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        raise NotImplementedError

    def helm(self, *args: str, timeout: float = 300) -> str:
        raise NotImplementedError

    def on_node(self, *args: str, timeout: float = 60) -> str:
        """Run a command on the node that hosts the pods, as root."""
        raise NotImplementedError

    def ctr(self, *args: str, timeout: float = 60) -> str:
        """containerd's ``ctr`` in the kubelet's namespace, on the node."""
        raise NotImplementedError

    def provide_volumes(self, claims: list[str], size: str) -> None:
        """Make sure the named PersistentVolumeClaims can bind."""

    def container_pid(self, container_id: str) -> int:
        """The host PID of a container's main process (``containerd://<id>`` or ``<id>``)."""
        wanted = container_id.split("://")[-1]
        for line in self.ctr("task", "ls").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == wanted:
                return int(fields[1])
        raise EnvironmentFailure(f"no running task for container {wanted}")

    def kill_container(self, container_id: str) -> None:
        """SIGKILL a container's main process: the kubelet sees it exit and restarts it."""
        self.ctr("task", "kill", "--signal", "SIGKILL", container_id.split("://")[-1])

    def network_namespace(self, container_id: str) -> str:
        """The path of a container's network namespace: its pod sandbox's, which outlives
        a restart of the container."""
        info = json.loads(self.ctr("containers", "info", container_id.split("://")[-1]))
        for ns in info.get("Spec", {}).get("linux", {}).get("namespaces", []):
            if ns.get("type") == "network" and ns.get("path"):
                return str(ns["path"])
        raise EnvironmentFailure(f"container {container_id} has no network namespace of its own")

    def set_pod_network(self, netns: str, connected: bool) -> None:
        """Cut a pod off the network, or restore it: every packet in or out of the pod's
        network namespace is dropped, except on its loopback. The processes keep running
        and the addresses stay; the kubelet's probes, the operator and the peers time out."""
        operation = "-D" if connected else "-I"
        for chain, direction in (("INPUT", "-i"), ("OUTPUT", "-o")):
            rule = [chain, "!", direction, "lo", "-j", "DROP"]
            self.on_node("nsenter", f"--net={netns}", "iptables", "-w", "5", operation, *rule)

    def restore_pod_network(self, netns: str) -> bool:
        """Undo ``set_pod_network(netns, False)``; False if the pod's sandbox is gone by now
        (the operator deletes a member it failed over from), which takes its rules along."""
        try:
            self.set_pod_network(netns, True)
        except EnvironmentFailure:
            if self.namespace_exists(netns):
                raise
            return False
        return True

    def namespace_exists(self, netns: str) -> bool:
        try:
            self.on_node("test", "-e", netns)
        except EnvironmentFailure:
            return False
        return True


class LocalNodeCluster(PodCluster):
    """This machine's control plane and kubelet + containerd node."""

    name = "local node"

    def __init__(self, node: KubeletNode) -> None:
        self.node = node
        self.plane = node.plane
        self.kubeconfig = self.plane.kubeconfig
        repository, tag = PROJECT_IMAGE.split(":")
        self.images = Images((repository, tag), LOCAL_RABBITMQ_IMAGE, LOCAL_POSTGRES_IMAGE)
        self.volume_dir = node.base_dir / "volumes"

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        return self.plane.kubectl(*args, stdin=stdin, timeout=timeout)

    def helm(self, *args: str, timeout: float = 300) -> str:
        return self.plane.helm(*args, timeout=timeout)

    def on_node(self, *args: str, timeout: float = 60) -> str:
        return run(list(args), timeout=timeout)

    def ctr(self, *args: str, timeout: float = 60) -> str:
        return self.node.ctr(*args, timeout=timeout)

    def provide_volumes(self, claims: list[str], size: str) -> None:
        """A hostPath PersistentVolume bound ahead to each claim (there is no provisioner),
        in a directory the RabbitMQ user owns."""
        for claim in claims:
            namespace, name = claim.split("/")
            path = self.volume_dir / namespace / name
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, RABBITMQ_UID, RABBITMQ_UID)
            volume: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{namespace}-{name}"},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": "",
                    "claimRef": {"namespace": namespace, "name": name},
                    "hostPath": {"path": str(path), "type": "Directory"},
                },
            }
            self.kubectl("apply", "-f", "-", stdin=json.dumps(volume))


class KindCluster(PodCluster):
    """A kind cluster made by the workflow: ``TS_PODS_CLUSTER=kind``, the node container in
    ``TS_KIND_NODE`` and the project image loaded into it as ``TS_PODS_IMAGE``."""

    name = "kind"

    def __init__(self) -> None:
        self.node_container = os.environ.get("TS_KIND_NODE", "ts-e2e-control-plane")
        repository, _, tag = os.environ.get("TS_PODS_IMAGE", "trading-system:e2e").rpartition(":")
        self.images = Images((repository, tag))  # RabbitMQ and PostgreSQL: the operator's defaults
        self.kubeconfig = Path(os.environ.get("KUBECONFIG", Path.home() / ".kube" / "config"))
        for tool in ("kubectl", "helm", "docker"):
            if shutil.which(tool) is None:
                raise EnvironmentFailure(f"{tool} is not on PATH")

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        return _run_with_input(["kubectl", *args], stdin, timeout)

    def helm(self, *args: str, timeout: float = 300) -> str:
        return run(["helm", *args], timeout=timeout)

    def on_node(self, *args: str, timeout: float = 60) -> str:
        return run(["docker", "exec", self.node_container, *args], timeout=timeout)

    def ctr(self, *args: str, timeout: float = 60) -> str:
        return self.on_node("ctr", "-n", "k8s.io", *args, timeout=timeout)


def external_cluster() -> PodCluster | None:
    """The cluster named by ``TS_PODS_CLUSTER``, if the scenarios run on one made elsewhere."""
    kind = os.environ.get("TS_PODS_CLUSTER", "")
    if not kind:
        return None
    if kind != "kind":
        raise EnvironmentFailure(f"TS_PODS_CLUSTER={kind!r}: only 'kind' is known")
    return KindCluster()


def _run_with_input(args: list[str], stdin: str | None, timeout: float) -> str:
    result = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise EnvironmentFailure(f"command failed ({result.returncode}): {' '.join(args)}\n{result.stderr}")
    return result.stdout

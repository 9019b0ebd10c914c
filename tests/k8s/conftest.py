"""Shared by every suite on the local control plane (tests/k8s/operator, tests/k8s/e2e): the
API client, the CRD installed once per session, and the operator as a real process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.environment.kubernetes import ControlPlane
from tests.environment.processes import EnvironmentFailure, free_port_block, wait_until
from trading_operator import api
from trading_operator.crd import crd
from trading_operator.k8s_io import Kube

# Log lines that mean the operator hit something it did not handle.
LOG_ERROR_MARKERS = ("Traceback", '"severity": "error"', '"severity": "fatal"')


@pytest.fixture(scope="session")
def kube(k8s_cluster: ControlPlane) -> Iterator[Kube]:
    kube = Kube.from_environment(str(k8s_cluster.kubeconfig))
    yield kube
    kube.close()


@pytest.fixture(scope="session")
def ts_crd(k8s_cluster: ControlPlane) -> dict[str, Any]:
    """The CRD from its one source, installed once per session."""
    definition = crd()
    k8s_cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=tests",
        "-f",
        "-",
        stdin=json.dumps(definition),
    )
    k8s_cluster.wait_crd_established(api.CRD_NAME)
    # Established comes before the storage is serving: a fresh CRD first answers 429
    # "storage is (re)initializing", which an operator started now would log as an error.
    wait_until(
        lambda: k8s_cluster.kubectl("get", api.PLURAL, "-A", "-o", "name", timeout=10) is not None,
        60,
        "the TradingSystem storage to serve",
    )
    return definition


class OperatorProcess:
    """``python -m trading_operator run`` as a real child process, watching one namespace."""

    def __init__(
        self,
        plane: ControlPlane,
        namespace: str,
        log_dir: Path,
        *,
        name: str = "operator",
        mode: tuple[str, ...] = (),
    ) -> None:
        self.plane = plane
        self.namespace = namespace
        self.log_dir = log_dir
        self.name = name
        self.mode = mode or ("--standalone",)
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.metrics_port = free_port_block(1, 19090 + (os.getpid() % 500) * 10 + len(self.name))
        env = self.plane.env()
        env["PYTHONUNBUFFERED"] = "1"
        args = [sys.executable, "-m", "trading_operator", "run", *self.mode, "-n", self.namespace]
        args += ["--metrics-port", str(self.metrics_port), "--liveness-port", "0", "--log-format", "json"]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(self._serving, 30, "the operator's metrics endpoint")

    def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise EnvironmentFailure(f"operator exited {self.proc.returncode}:\n{self.log()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1):
            return True

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def kill(self) -> None:
        """kill -9: no cleanup, no finalizer work, mid-whatever it was doing."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.log_dir.glob(f"{self.name}-*.log"))
        )

    def errors(self) -> list[str]:
        return [line for line in self.log().splitlines() if any(m in line for m in LOG_ERROR_MARKERS)]


@pytest.fixture
def operator(
    k8s_cluster: ControlPlane, k8s_namespace: str, ts_crd: dict[str, Any], tmp_path: Path
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(k8s_cluster, k8s_namespace, tmp_path)
    process.start()
    try:
        yield process
        errors = process.errors()
        assert not errors, "operator logged errors:\n" + "\n".join(errors[:20])
    finally:
        _delete_resources(k8s_cluster, k8s_namespace, process)
        process.stop()


def _delete_resources(plane: ControlPlane, namespace: str, process: OperatorProcess) -> None:
    """Delete TradingSystems while an operator can still run their finalizers, else strip them."""
    if process.proc is None or process.proc.poll() is not None:
        with contextlib.suppress(EnvironmentFailure):
            process.start()
    with contextlib.suppress(EnvironmentFailure):
        plane.kubectl("delete", "tradingsystems", "--all", "-n", namespace, "--timeout=30s")
        return
    names = plane.kubectl("get", "tradingsystems", "-n", namespace, "-o", "name").split()
    for name in names:
        plane.kubectl(
            "patch", name, "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
        )

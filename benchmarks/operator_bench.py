"""The operator on the real control plane: time to children, time to promotion, memory at rest.

Run:  TS_TESTENV_STATE=/tmp/shared-env/state.json .venv/bin/python -m benchmarks.operator_bench
      [--resources 20] [--failovers 5] [--settle 20]

The control plane comes from ``TS_TESTENV_STATE`` (``python -m tests.environment up``) or is
started for the run. The operator runs as a real process watching one fresh namespace;
fake member processes (``tests/k8s/operator/fakes.py``) serve /healthz, /readyz and
/promote on the pods' loopback IPs, so pairs elect and fail over as they would in a cluster.

Measured:
- apply -> every child exists, and apply -> Ready, for the first TradingSystem;
- failover: the active's process is killed (t0); the standby's /promote call, the Service
  label switch and the pair being whole again (new standby) are timed from t0;
- operator RSS and CPU at rest with 1 and with ``--resources`` TradingSystems, after
  ``--settle`` seconds without changes. The first system probes every second (it is the
  one failed over); the others use the CRD's default 5 s probe period.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.environment.kubernetes import ControlPlane
from tests.environment.processes import wait_until
from tests.environment.session import attach_control_plane, default_base_dir, load_state, new_control_plane
from tests.k8s.operator.conftest import OperatorProcess, trading_system
from tests.k8s.operator.fakes import Fleet

from trading_operator import api
from trading_operator.crd import crd
from trading_operator.k8s_io import Kube

CHILD_KINDS = (
    ("v1", "ConfigMap", 2),
    ("v1", "Secret", 5),
    ("v1", "Service", 6),
    ("apps/v1", "StatefulSet", 1),
    ("apps/v1", "Deployment", 2),
    ("policy/v1", "PodDisruptionBudget", 4),
    ("networking.k8s.io/v1", "NetworkPolicy", 6),
)


# One fake node with 32 CPUs: the default requests (about 4 CPUs per system) would let only
# seven systems schedule, and scheduling is not what is measured here.
TINY = {"resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}}


def bench_system(namespace: str, name: str, *, fast: bool) -> dict[str, Any]:
    """``fast``: 1 s probes (failover timing); otherwise the CRD's defaults (5 s probes)."""
    system = trading_system(
        namespace,
        name=name,
        rabbitmq={"storage": {"emptyDir": True}, **TINY},
        matching=TINY,
        execution=TINY,
        coordinator=TINY,
    )
    if not fast:
        del system["spec"]["failover"]
    return system


def _ready(kube: Kube, namespace: str, name: str) -> bool:
    obj = kube.get(api.API_VERSION, api.KIND, namespace, name) or {}
    return (obj.get("status") or {}).get("phase") == "Ready"


def _all_children(kube: Kube, namespace: str, name: str) -> bool:
    selector = f"{api.LABEL_INSTANCE}={name},{api.LABEL_MANAGED_BY}={api.MANAGED_BY}"
    return all(len(kube.list(v, k, namespace, selector)) >= n for v, k, n in CHILD_KINDS)


def _pair(kube: Kube, namespace: str, name: str, pair: str) -> dict[str, Any]:
    obj = kube.get(api.API_VERSION, api.KIND, namespace, name) or {}
    return dict(((obj.get("status") or {}).get("pairs") or {}).get(pair) or {})


def _role(kube: Kube, namespace: str, pod: str) -> str | None:
    obj = kube.get("v1", "Pod", namespace, pod)
    return None if obj is None else str(obj["metadata"]["labels"].get(api.LABEL_ROLE))


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / 100.0


def _at_rest(pid: int, seconds: float) -> tuple[float, float]:
    """(median RSS MiB, CPU %) over ``seconds`` of no changes."""
    samples, cpu0, start = [], _cpu_seconds(pid), time.monotonic()
    while time.monotonic() - start < seconds:
        samples.append(_rss_mib(pid))
        time.sleep(0.5)
    cpu = (_cpu_seconds(pid) - cpu0) / (time.monotonic() - start) * 100
    return statistics.median(samples), cpu


def _failover(kube: Kube, fleet: Fleet, namespace: str, name: str) -> dict[str, float]:
    before = _pair(kube, namespace, name, "matching")
    old, standby = before["active"], before["standby"]
    t0 = time.time()
    fleet.kill(old)
    wait_until(lambda: bool(fleet.member(standby).promotions), 60, "promotion")
    promoted = fleet.member(standby).promotions[0][0] - t0
    wait_until(lambda: _role(kube, namespace, standby) == "active", 60, "Service switch")
    switched = time.time() - t0

    def whole() -> bool:
        pair = _pair(kube, namespace, name, "matching")
        return pair.get("active") == standby and bool(pair.get("standby")) and not pair.get("failingOver")

    wait_until(whole, 60, "replacement standby")
    complete = time.time() - t0
    wait_until(lambda: _ready(kube, namespace, name), 60, "Ready again")
    return {"promote_call_s": promoted, "service_switched_s": switched, "pair_whole_s": complete}


def run(plane: ControlPlane, resources: int, failovers: int, settle: float) -> dict[str, Any]:
    kube = Kube.from_environment(str(plane.kubeconfig))
    plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(crd()))
    plane.kubectl("wait", "--for=condition=Established", f"crd/{api.CRD_NAME}", "--timeout=60s")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    plane.kubectl("create", "namespace", namespace)
    operator = OperatorProcess(plane, namespace, Path(tempfile.mkdtemp(prefix="operator-bench-")))
    results: dict[str, Any] = {"namespace": namespace}
    operator.start()
    try:
        with Fleet(kube, namespace) as fleet:
            assert operator.proc is not None
            pid = operator.proc.pid
            first = bench_system(namespace, "ts-0", fast=True)
            t0 = time.monotonic()
            plane.kubectl("apply", "-f", "-", stdin=json.dumps(first))
            wait_until(lambda: _all_children(kube, namespace, "ts-0"), 120, "children")
            results["apply_to_children_s"] = time.monotonic() - t0
            wait_until(lambda: _ready(kube, namespace, "ts-0"), 120, "Ready")
            results["apply_to_ready_s"] = time.monotonic() - t0
            runs = [_failover(kube, fleet, namespace, "ts-0") for _ in range(failovers)]
            results["failover"] = {
                key: {"median": statistics.median(r[key] for r in runs), "max": max(r[key] for r in runs)}
                for key in runs[0]
            }
            results["rest_1"] = dict(zip(("rss_mib", "cpu_percent"), _at_rest(pid, settle), strict=True))
            t1 = time.monotonic()
            for i in range(1, resources):
                plane.kubectl(
                    "apply", "-f", "-", stdin=json.dumps(bench_system(namespace, f"ts-{i}", fast=False))
                )
            wait_until(
                lambda: all(_ready(kube, namespace, f"ts-{i}") for i in range(resources)),
                600,
                f"{resources} TradingSystems Ready",
            )
            results[f"apply_{resources}_to_all_ready_s"] = time.monotonic() - t1
            results[f"rest_{resources}"] = dict(
                zip(("rss_mib", "cpu_percent"), _at_rest(pid, settle), strict=True)
            )
            applies = operator.metric("trading_operator_child_applies_total", namespace=namespace)
            rounds = operator.metric("trading_operator_reconciles_total", namespace=namespace)
            time.sleep(settle)
            results["idle_applies"] = (
                operator.metric("trading_operator_child_applies_total", namespace=namespace) - applies
            )
            results["idle_rounds"] = (
                operator.metric("trading_operator_reconciles_total", namespace=namespace) - rounds
            )
    finally:
        plane.kubectl("delete", "tradingsystems", "--all", "-n", namespace, "--timeout=300s")
        operator.stop()
        plane.kubectl("delete", "namespace", namespace, "--wait=false")
        kube.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resources", type=int, default=20)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds of rest before measuring")
    args = parser.parse_args()
    state = load_state()
    plane = (
        attach_control_plane(state)
        if state and "kubernetes" in state
        else new_control_plane(default_base_dir())
    )
    started = not (state and "kubernetes" in state)
    if started:
        plane.start()
    try:
        print(json.dumps(run(plane, args.resources, args.failovers, args.settle), indent=2))
    finally:
        if started:
            plane.stop()


if __name__ == "__main__":
    main()

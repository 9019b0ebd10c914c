"""The whole product installed on a cluster of real pods, the way a user installs it:
``helm install`` of the chart (the operator), ``helm test``, then ``kubectl apply`` of the
sample TradingSystem; and what the scenarios read back from it (pods, status, the
database, the API token, the active members' addresses).

The sample is changed only where the cluster needs it: the images (local tags), small CPU
requests (the defaults ask for ~4.5 cores; this node has 2), the load generator's symbols,
and a short failover cooldown, because the scenarios fail the same pair over minutes apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from sqlalchemy.engine import make_url

from tests.chaos.harness import symbol_entries
from tests.environment.kubernetes import REPO_ROOT
from tests.environment.processes import EnvironmentFailure, wait_until
from tests.pods.cluster import PodCluster
from trading_operator import api
from trading_operator.k8s_io import Kube
from trading_system.matching.core import SymbolSpec
from trading_system.matching.service.cli import symbols_from_config

NAME = "demo"  # the sample's name; also the matching engine id
NAMESPACE = "demo"
OPERATOR_NAMESPACE = "trading-system"
RABBITMQ_REPLICAS = 3
VOLUME_SIZE = "1Gi"


def small(cpu: str, memory: str, limit: str) -> dict[str, Any]:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": limit}}


def sample(cluster: PodCluster) -> dict[str, Any]:
    ts: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "manifests" / "samples" / "tradingsystem.yaml").read_text()
    )
    spec = ts["spec"]
    repository, tag = cluster.images.project
    spec["image"] = {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"}
    spec["symbols"] = symbol_entries()
    spec["rabbitmq"].update(resources=small("100m", "256Mi", "1Gi"))
    spec["rabbitmq"]["storage"] = {"size": VOLUME_SIZE}
    if cluster.images.rabbitmq:
        spec["rabbitmq"]["image"] = cluster.images.rabbitmq
    if cluster.images.postgres:
        spec["database"]["devImage"] = cluster.images.postgres
    for part in ("matching", "execution"):
        spec[part] = {"resources": small("50m", "128Mi", "512Mi")}
    spec["coordinator"]["resources"] = small("50m", "128Mi", "512Mi")
    spec["failover"]["cooldownSeconds"] = 5
    return ts


def condition(ts: dict[str, Any], kind: str) -> str:
    for c in ts.get("status", {}).get("conditions", []):
        if c.get("type") == kind:
            return str(c.get("status"))
    return "Unknown"


def pod_ready(pod: dict[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@dataclass
class DemoSystem:
    cluster: PodCluster
    kube: Kube
    timings: dict[str, float] = field(default_factory=dict)
    conditions_after: dict[str, float] = field(default_factory=dict)

    # -- reading it back --------------------------------------------------------------

    def ts(self) -> dict[str, Any]:
        obj = self.kube.get(api.API_VERSION, api.KIND, NAMESPACE, NAME)
        if obj is None:
            raise EnvironmentFailure(f"TradingSystem {NAMESPACE}/{NAME} is gone")
        return obj

    def pair(self, pair: str) -> dict[str, Any]:
        return dict(((self.ts().get("status") or {}).get("pairs") or {}).get(pair) or {})

    def pods(self, selector: str | None = None) -> list[dict[str, Any]]:
        return self.kube.list("v1", "Pod", NAMESPACE, selector)

    def pod(self, name: str) -> dict[str, Any] | None:
        return self.kube.get("v1", "Pod", NAMESPACE, name)

    def container_id(self, pod_name: str) -> str:
        pod = self.pod(pod_name)
        statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
        ids = [s["containerID"] for s in statuses if s.get("containerID") and "running" in s["state"]]
        if not ids:
            raise EnvironmentFailure(f"pod {pod_name} has no running container")
        return str(ids[0])

    def actives(self, pair: str) -> list[dict[str, Any]]:
        """Running pods the pair's Service routes to (labelled active)."""
        selector = f"{api.LABEL_INSTANCE}={NAME},{api.LABEL_PAIR}={pair},{api.LABEL_ROLE}={api.ROLE_ACTIVE}"
        return [
            p
            for p in self.pods(selector)
            if (p.get("status") or {}).get("phase") == "Running"
            and not (p.get("metadata") or {}).get("deletionTimestamp")
        ]

    def active_url(self, pair: str) -> str | None:
        actives = self.actives(pair)
        ip = (actives[0].get("status") or {}).get("podIP") if len(actives) == 1 else None
        return f"http://{ip}:{api.SERVICE_HTTP_PORT}" if ip else None

    def secret(self, name: str, key: str) -> str:
        value = self.kube.read_secret_value(NAMESPACE, name, key)
        if value is None:
            raise EnvironmentFailure(f"secret {name} has no {key}")
        return value

    def api_token(self) -> str:
        return self.secret(f"{NAME}-api-token", "token")

    def db_url(self) -> str:
        """The dev database's DSN from the operator's Secret, aimed at the PostgreSQL pod's IP
        (the Secret names the Service, which only resolves inside the cluster)."""
        dsn = make_url(self.secret(f"{NAME}-postgres", "dsn"))
        (pod,) = [p for p in self.pods(f"{api.LABEL_INSTANCE}={NAME},{api.LABEL_COMPONENT}=postgres")]
        return dsn.set(host=pod["status"]["podIP"]).render_as_string(hide_password=False)

    def specs(self) -> tuple[SymbolSpec, ...]:
        """The symbols as the matching engine read them: from the operator's ConfigMap."""
        config_map = self.kube.get("v1", "ConfigMap", NAMESPACE, f"{NAME}-config")
        assert config_map is not None
        return symbols_from_config(json.loads(config_map["data"]["config.json"]))

    # -- waiting ----------------------------------------------------------------------

    def serving(self) -> bool:
        """Ready, and every pod of it Ready (a replaced pod is back, not just the status)."""
        if condition(self.ts(), "Ready") != "True":
            return False
        pods = self.pods(f"{api.LABEL_INSTANCE}={NAME}")
        return bool(pods) and all(pod_ready(p) for p in pods)

    async def wait_serving(self, within: float = 300) -> None:
        start = time.monotonic()
        while not await asyncio.to_thread(self.serving):
            if time.monotonic() - start > within:
                raise AssertionError(
                    f"the TradingSystem is not serving after {within:.0f} s:\n{self.diagnostics()}"
                )
            await asyncio.sleep(1)  # polling period

    def pipeline_logs(self, tail: int = 60) -> str:
        """The last lines of every pipeline pod (what a failed check needs to be explained)."""
        parts = []
        for pod in self.pods(f"{api.LABEL_INSTANCE}={NAME}"):
            name = pod["metadata"]["name"]
            if "rabbitmq" in name or "postgres" in name:
                continue
            with contextlib.suppress(EnvironmentFailure):
                parts.append(
                    f"--- {name}\n" + self.cluster.kubectl("logs", "-n", NAMESPACE, name, f"--tail={tail}")
                )
        return "\n".join(parts)

    def diagnostics(self) -> str:
        parts = []
        for args in (
            ("get", "tradingsystem,pods,pvc", "-n", NAMESPACE, "-o", "wide"),
            ("get", "tradingsystem", NAME, "-n", NAMESPACE, "-o", "yaml"),
            ("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp"),
            ("logs", "-n", OPERATOR_NAMESPACE, "-l", f"{api.LABEL_NAME}=trading-operator", "--tail=80"),
        ):
            with contextlib.suppress(EnvironmentFailure):
                parts.append(self.cluster.kubectl(*args, timeout=60))
        return "\n".join(parts)


def install(cluster: PodCluster) -> DemoSystem:
    """helm install + helm test + the sample TradingSystem, Ready; times each step."""
    system = DemoSystem(cluster, Kube.from_environment(str(cluster.kubeconfig)))
    repository, tag = cluster.images.project

    def timed(step: str, action: Callable[[], object]) -> None:
        start = time.monotonic()
        action()
        system.timings[step] = time.monotonic() - start

    timed(
        "helm install --wait",
        lambda: cluster.helm(
            "install",
            "ts",
            str(REPO_ROOT / "charts" / "trading-system"),
            "-n",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--set",
            f"image.repository={repository}",
            "--set",
            f"image.tag={tag}",
            "--set",
            "image.pullPolicy=IfNotPresent",
            "--set",
            "peering.lifetime=15",
            "--wait",
            "--timeout",
            "5m",
            timeout=360,
        ),
    )
    # The chart's test pod: `trading-operator selftest` against the API server and the
    # operator's metrics Service by DNS name.
    timed(
        "helm test",
        lambda: cluster.helm("test", "ts", "-n", OPERATOR_NAMESPACE, "--timeout", "3m", timeout=240),
    )

    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.provide_volumes(
        [f"{NAMESPACE}/data-{NAME}-rabbitmq-{i}" for i in range(RABBITMQ_REPLICAS)], VOLUME_SIZE
    )
    start = time.monotonic()
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(sample(cluster)))

    def ready() -> bool:
        ts = system.ts()
        for c in ts.get("status", {}).get("conditions", []):
            if c.get("status") == "True" and c["type"] not in system.conditions_after:
                system.conditions_after[c["type"]] = time.monotonic() - start
        return condition(ts, "Ready") == "True"

    try:
        wait_until(ready, 900, "the TradingSystem Ready", interval=2)
    except EnvironmentFailure:
        print(system.diagnostics())
        raise
    system.timings["TradingSystem applied -> Ready"] = time.monotonic() - start
    return system

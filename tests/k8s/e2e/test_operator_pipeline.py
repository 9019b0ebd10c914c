"""The operator fails the real pipeline over: ``kubectl delete pod`` of the active matching
member under load, on the local control plane.

The operator runs as a real process and manages a ``TradingSystem`` whose matching,
execution and coordinator pods are served by real ``trading-system <component> serve``
processes on their pod IPs (``runner.PodRunner``); the database is the external-database
option (a Secret with the real PostgreSQL's DSN); RabbitMQ is the test's real cluster (the
one substitution, see ``conftest.pod_runner``). The chaos harness's load generator keeps
orders flowing through the active execution pod while the active matching pod is deleted;
then the chaos suite's checks (DESIGN.md section 7) run on the database.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.chaos.harness import (
    ACCOUNTS,
    ScenarioResult,
    assert_invariants,
    check_pipeline,
    drive_load,
    first_seq_from,
    journal_epochs,
    symbol_entries,
)
from tests.environment.kubernetes import ControlPlane
from tests.k8s.conftest import OperatorProcess
from tests.k8s.e2e.runner import PodRunner
from tests.k8s.operator.conftest import apply, is_ready, pair_status, trading_system
from tests.unit.bus.support import eventually
from trading_operator import api
from trading_operator.k8s_io import Kube
from trading_system.local.loadgen import seed_ledger
from trading_system.matching.core import SymbolSpec
from trading_system.matching.service.cli import symbols_from_config
from trading_system.storage import create_engine

pytestmark = [pytest.mark.k8s, pytest.mark.chaos]

NAME = "ts"  # the TradingSystem; also the matching engine id (TRADING_SYSTEM_INSTANCE)
PIPELINE_PODS = 6  # 2 matching + 2 execution + 2 coordinators


def pipeline_system(namespace: str, db_secret: str) -> dict[str, Any]:
    """The load generator's symbols (the demo's), an external database, fast probes."""
    return trading_system(
        namespace,
        NAME,
        symbols=symbol_entries(),
        database={"dev": False, "secretRef": {"name": db_secret, "key": "dsn"}},
        # Nothing serves the fake RabbitMQ pods' management API.
        rabbitmq={"managementChecks": False},
        coordinator={"replicas": 2},
    )


@dataclass
class FailoverClock:
    """When each step of the failover was first seen, in seconds after the delete."""

    deleted_at: float = 0.0  # monotonic
    process_stopped: float | None = None  # the runner terminated the deleted pod's process
    promoted: float | None = None  # the standby's /readyz says active at the new epoch
    first_event: float | None = None  # first journal entry under the new epoch
    status: float | None = None  # the TradingSystem status names the new active

    def since(self) -> float:
        return time.monotonic() - self.deleted_at

    async def watch(
        self, kube: Kube, runner: PodRunner, namespace: str, db_url: str, old: str, new: str, epoch: int
    ) -> None:
        db = create_engine(db_url)
        try:
            async with aiohttp.ClientSession() as http:
                while None in (self.process_stopped, self.promoted, self.first_event, self.status):
                    if self.process_stopped is None and runner.container(old) is None:
                        self.process_stopped = self.since()
                    if self.promoted is None and await _reports(http, runner, new, "active", epoch):
                        self.promoted = self.since()
                    if self.first_event is None and await first_seq_from(db, NAME, epoch) is not None:
                        self.first_event = self.since()
                    if self.status is None:
                        pair = await asyncio.to_thread(pair_status, kube, namespace, "matching", NAME)
                        if pair.get("active") == new and pair.get("epoch") == epoch:
                            self.status = self.since()
                    await asyncio.sleep(0.05)  # polling period, not a condition
        finally:
            await db.dispose()


async def _reports(http: aiohttp.ClientSession, runner: PodRunner, pod: str, role: str, epoch: int) -> bool:
    container = runner.container(pod)
    if container is None or container.url is None:
        return False
    try:
        async with http.get(f"{container.url}/readyz", timeout=aiohttp.ClientTimeout(total=1)) as resp:
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
    return isinstance(body, dict) and body.get("role") == role and body.get("epoch") == epoch


async def _all_healthy(runner: PodRunner) -> bool:
    """Every pipeline pod has a process that answers /healthz."""
    running = runner.running()
    if len(running) < PIPELINE_PODS:
        return False
    async with aiohttp.ClientSession() as http:
        for container in running.values():
            try:
                async with http.get(f"{container.url}/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status != 200:
                        return False
            except (aiohttp.ClientError, TimeoutError):
                return False
    return True


def _matching_specs(kube: Kube, namespace: str) -> tuple[SymbolSpec, ...]:
    """The symbols as the matching engine read them: from the operator's ConfigMap."""
    config_map = kube.get("v1", "ConfigMap", namespace, f"{NAME}-config")
    assert config_map is not None
    return symbols_from_config(json.loads(config_map["data"]["config.json"]))


def _actives(kube: Kube, namespace: str, pair: str) -> list[str]:
    selector = f"{api.LABEL_PAIR}={pair},{api.LABEL_ROLE}={api.ROLE_ACTIVE}"
    return [p["metadata"]["name"] for p in kube.list("v1", "Pod", namespace, selector)]


async def test_deleting_the_active_matching_pod_under_load(
    k8s_cluster: ControlPlane,
    kube: Kube,
    k8s_namespace: str,
    postgres_dsn: str,
    external_db: str,
    pod_runner: PodRunner,
    operator: OperatorProcess,
) -> None:
    ns = k8s_namespace
    started = time.monotonic()
    apply(k8s_cluster, pipeline_system(ns, external_db))

    async def serving() -> bool:
        return await asyncio.to_thread(is_ready, kube, ns, NAME) and await _all_healthy(pod_runner)

    try:
        await eventually(serving, within=120, interval=0.5, what="the TradingSystem Ready, every pod serving")
    except AssertionError:
        print(json.dumps(pod_runner.events[-30:], default=str), pod_runner.errors[-5:])
        raise
    ready_after = time.monotonic() - started
    await seed_ledger(postgres_dsn, ACCOUNTS)

    before = pair_status(kube, ns, "matching", NAME)
    old, new, epoch = str(before["active"]), str(before["standby"]), int(before["epoch"])
    assert pod_runner.container(old) is not None and pod_runner.container(new) is not None
    token = kube.read_secret_value(ns, f"{NAME}-api-token", "token")
    assert token is not None
    clock = FailoverClock()
    watcher: list[asyncio.Task[None]] = []

    async def delete_the_active() -> None:
        clock.deleted_at = time.monotonic()
        watcher.append(
            asyncio.create_task(clock.watch(kube, pod_runner, ns, postgres_dsn, old, new, epoch + 1))
        )
        await asyncio.to_thread(k8s_cluster.kubectl, "delete", "pod", old, "-n", ns, "--wait=false")

    name = "k8s: kubectl delete pod (active matching)"
    report, fault_at = await drive_load(
        lambda: pod_runner.active_url("execution"), token, name, delete_the_active, rate=30.0
    )
    await asyncio.wait_for(watcher[0], timeout=60)
    assert None not in (clock.process_stopped, clock.promoted, clock.first_event, clock.status)
    result: ScenarioResult = await check_pipeline(
        postgres_dsn, name, report, fault_at, engine_id=NAME, specs=_matching_specs(kube, ns)
    )
    result.failover_seconds = clock.first_event
    result.notes.append(
        f"ready after {ready_after:.1f} s; after the delete: process stopped {clock.process_stopped:.2f} s, "
        f"standby active at epoch {epoch + 1} {clock.promoted:.2f} s, first journal entry "
        f"{clock.first_event:.2f} s, status {clock.status:.2f} s"
    )
    print(result.notes[-1])
    # DESIGN.md section 7, from the database and the load generator's records.
    assert_invariants(result)
    # No journal entry of the old epoch after the first of the new one (no two writers).
    epochs = [epoch for _, epoch in await journal_epochs(postgres_dsn, NAME)]
    assert epochs == sorted(epochs) and epochs[-1] == epoch + 1

    # The operator promoted the standby at epoch + 1, made the pair whole again (a new
    # standby, served by a process of its own) and says so in the status.
    await eventually(
        lambda: (
            is_ready(kube, ns, NAME)
            and pair_status(kube, ns, "matching", NAME).get("standby") not in (None, old, new)
        ),
        within=60,
        interval=0.5,
        what="a new matching standby",
    )
    pair = pair_status(kube, ns, "matching", NAME)
    assert pair["active"] == new and pair["epoch"] == epoch + 1, pair
    last = pair["history"][-1]
    assert (last["kind"], last.get("from"), last["to"], last["epoch"], last["outcome"]) == (
        "failover",
        old,
        new,
        epoch + 1,
        "completed",
    ), last
    assert _actives(kube, ns, "matching") == [new]
    replacement = str(pair["standby"])
    await eventually(lambda: pod_runner.container(replacement) is not None, within=30, interval=0.2)
    assert pod_runner.container(old) is None
    assert not pod_runner.unexpected_exits(), pod_runner.unexpected_exits()
    assert clock.first_event is not None and clock.first_event < 30

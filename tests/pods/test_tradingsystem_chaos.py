"""Chaos on real pods: the one scenario file for this machine's kubelet node and for kind in
GitHub CI (.github/workflows/e2e-kind.yml runs this file with ``TS_PODS_CLUSTER=kind``).

Each scenario runs on the TradingSystem tests/pods/system.py installed, under steady load
from the chaos harness's load generator (orders to whichever execution pod is labelled
active), injects one fault, keeps the load on through recovery, and then checks DESIGN.md
section 7 from the dev database, the matching journal and the load generator's records:
no acknowledged order lost or left pending, every trade the journal implies settled exactly
once, the ledger reconciled; the journal's epochs never go back; no moment with two pods of
a pair labelled active; and the system is whole and Ready again afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from tests.chaos.harness import (
    ACCOUNTS,
    ScenarioResult,
    assert_invariants,
    check_pipeline,
    drive_load,
    first_seq_from,
    journal_epochs,
)
from tests.pods.system import NAME, NAMESPACE, OPERATOR_NAMESPACE, DemoSystem
from trading_operator import api
from trading_system.local.loadgen import seed_ledger
from trading_system.storage import create_engine

pytestmark = [pytest.mark.pods, pytest.mark.chaos]

RATE = 20.0  # orders/s: steady on a 2-core node that also runs RabbitMQ, PostgreSQL and the control plane
WARMUP = 8.0
AFTER = 20.0
PAIRS = ("matching", "execution")
T = TypeVar("T")


@dataclass
class Observed:
    """Sampled in the background through a scenario: where the active execution pod is (the
    load follows it, as its Service would), and the most pods of a pair labelled active at
    once."""

    system: DemoSystem
    execution_url: str | None = None
    most_actives: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PAIRS, 0))
    errors: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for pair in PAIRS:
                try:
                    actives = await asyncio.to_thread(self.system.actives, pair)
                except Exception as exc:  # the API is not under test here; keep sampling
                    self.errors.append(repr(exc))
                    continue
                self.most_actives[pair] = max(self.most_actives[pair], len(actives))
                if pair == "execution":
                    ip = actives[0]["status"].get("podIP") if len(actives) == 1 else None
                    self.execution_url = f"http://{ip}:{api.SERVICE_HTTP_PORT}" if ip else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.3)  # sampling period


@dataclass
class Fault:
    """What a scenario's fault sees: the system, the pair statuses before it, and a clock."""

    system: DemoSystem
    before: dict[str, dict[str, object]]
    notes: list[str] = field(default_factory=list)
    started: float = 0.0

    def active(self, pair: str) -> str:
        return str(self.before[pair]["active"])

    def kubectl(self, *args: str) -> Awaitable[str]:
        return asyncio.to_thread(self.system.cluster.kubectl, *args)

    async def force_delete(self, pod: str, namespace: str = NAMESPACE) -> None:
        await self.kubectl(
            "delete", "pod", pod, "-n", namespace, "--grace-period=0", "--force", "--wait=false"
        )

    async def until(self, what: str, check: Callable[[], T | None], within: float) -> T:
        """The first truthy answer of ``check`` (polled), within ``within`` s of the fault."""
        while not (answer := await asyncio.to_thread(check)):
            if time.monotonic() - self.started > within:
                raise AssertionError(f"{what}: not within {within:.0f} s of the fault")
            await asyncio.sleep(0.05)  # polling period
        return answer

    async def seconds_until(self, what: str, check: Callable[[], bool], within: float) -> float:
        await self.until(what, check, within)
        return time.monotonic() - self.started


def new_epoch(fault: Fault, pair: str) -> Callable[[], bool]:
    """The operator raised the pair's epoch: its failover has started (or finished)."""
    epoch = int(str(fault.before[pair]["epoch"]))
    return lambda: int(str(fault.system.pair(pair).get("epoch", 0))) > epoch


def failed_over(fault: Fault, pair: str) -> Callable[[], bool]:
    """The pair's failover is over: a new epoch, another active, nothing under way."""
    epoch, old = int(str(fault.before[pair]["epoch"])), fault.active(pair)

    def done() -> bool:
        now = fault.system.pair(pair)
        return int(now.get("epoch", 0)) > epoch and now.get("active") != old and not now.get("failingOver")

    return done


async def delete_the_active_matching_pod(fault: Fault) -> None:
    await fault.force_delete(fault.active("matching"))


async def kill_the_active_matching_container(fault: Fault) -> None:
    """SIGKILL of the process: the kubelet restarts the container in the same pod. Whether
    the operator fails over first or the member comes back at its epoch, nothing may change
    twice."""
    pod = fault.active("matching")
    container = fault.system.container_id(pod)
    await asyncio.to_thread(fault.system.cluster.kill_container, container)
    fault.notes.append(f"killed {pod}'s process")


async def kill_the_rabbitmq_leader(fault: Fault) -> None:
    pod = await asyncio.to_thread(rabbitmq_leader_pod, fault.system)
    await fault.force_delete(pod)
    fault.notes.append(f"deleted {pod}")


async def kill_the_operator_during_a_failover(fault: Fault) -> None:
    """The execution pair's active pod goes; as soon as the status shows the failover under
    way, every operator pod is deleted (grace 0, straight through the API: the shortest gap).
    The next operator must finish it, at the same one new epoch."""
    system = fault.system
    await fault.force_delete(fault.active("execution"))

    def failover_seen() -> dict[str, object] | None:
        pair = system.pair("execution")
        return pair if pair.get("failingOver") or new_epoch(fault, "execution")() else None

    pair = await fault.until("the failover to start", failover_seen, within=60)
    selector = f"{api.LABEL_NAME}=trading-operator"
    for pod in system.kube.list("v1", "Pod", OPERATOR_NAMESPACE, selector):
        system.kube.delete("v1", "Pod", OPERATOR_NAMESPACE, pod["metadata"]["name"], grace_period=0)
    seen = {k: pair.get(k) for k in ("epoch", "active", "failingOver", "failoverStep")}
    fault.notes.append(
        f"operator killed {time.monotonic() - fault.started:.1f} s after the delete, status {seen}"
    )


async def cut_the_network(fault: Fault) -> None:
    """Everything in and out of the active's pod is dropped; once the standby is promoted
    the network comes back, and the old member must find itself fenced."""
    system, old = fault.system, fault.active("matching")
    cluster = system.cluster
    old_pod = system.pod(old) or {}
    old_url = f"http://{old_pod['status']['podIP']}:{api.SERVICE_HTTP_PORT}"
    netns = cluster.network_namespace(system.container_id(old))
    await asyncio.to_thread(cluster.set_pod_network, netns, False)
    try:
        promoted = await fault.seconds_until("the failover", failed_over(fault, "matching"), within=120)
        fault.notes.append(f"standby promoted {promoted:.1f} s into the cut")
    finally:
        restored = await asyncio.to_thread(cluster.restore_pod_network, netns)
    if not restored:
        fault.notes.append("the operator had deleted the cut-off pod before the restore")
        return
    # Reconnected, the old member must not act as the active: it is fenced (or gone).
    role = await fault.until(
        "the old active to stand down", lambda: standing_down(system, old, old_url), within=60
    )
    fault.notes.append(f"network restored; the old member then reported {role}")


def standing_down(system: DemoSystem, pod: str, url: str) -> str | None:
    """What the reconnected old active says it is, once that is no longer active."""
    if system.pod(pod) is None:
        return "nothing (deleted)"
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:  # 503 when not serving: the body says why
        try:
            body = json.load(exc)
        except ValueError:
            return None
    except (OSError, ValueError):
        return None
    role = body.get("role") if isinstance(body, dict) else None
    return None if role in (None, "active") else f"role {role}"


async def first_entry_after(fault: Fault, db_url: str, epoch: int) -> float:
    """Seconds from the fault to the matching journal's first entry at an epoch above
    ``epoch``: the new active matching again."""
    db = create_engine(db_url)
    try:
        while await first_seq_from(db, NAME, epoch + 1) is None:
            if time.monotonic() - fault.started > 180:
                raise AssertionError("no journal entry at the new epoch within 180 s of the fault")
            await asyncio.sleep(0.05)  # polling period
        return time.monotonic() - fault.started
    finally:
        await db.dispose()


def rabbitmq_leader_pod(system: DemoSystem) -> str:
    """The RabbitMQ pod leading most of the matching engine's queues."""
    out = system.cluster.kubectl(
        "exec", "-n", NAMESPACE, f"{NAME}-rabbitmq-0", "-c", "rabbitmq", "--",
        "rabbitmqctl", "-q", "list_queues", "name", "leader", "--formatter", "json",
        timeout=60,
    )  # fmt: skip
    leaders = [q["leader"] for q in json.loads(out) if "matching" in q["name"] and q.get("leader")]
    if not leaders:
        return f"{NAME}-rabbitmq-1"
    leader = max(set(leaders), key=leaders.count)  # rabbit@<pod>.<headless service>...
    return str(leader.split("@", 1)[1].split(".", 1)[0])


@dataclass(frozen=True)
class Scenario:
    name: str
    inject: Callable[[Fault], Awaitable[None]]
    fails_over: str | None = None  # the pair that must move to exactly one new epoch


SCENARIOS = [
    Scenario("pods: delete the active matching pod", delete_the_active_matching_pod, "matching"),
    Scenario("pods: kill -9 the active matching container", kill_the_active_matching_container),
    Scenario("pods: kill the RabbitMQ pod leading the commands", kill_the_rabbitmq_leader),
    Scenario("pods: kill the operator during a failover", kill_the_operator_during_a_failover, "execution"),
    Scenario("pods: cut the active matching pod off the network", cut_the_network, "matching"),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.inject.__name__)
async def test_scenario_under_load(demo_system: DemoSystem, scenario: Scenario) -> None:
    system = demo_system
    await system.wait_serving()
    db_url = system.db_url()
    await seed_ledger(db_url, ACCOUNTS)
    fault = Fault(system, {pair: system.pair(pair) for pair in PAIRS})
    journal_at_fault: list[int] = []
    failover: list[asyncio.Task[float]] = []

    observed = Observed(system)
    stop = asyncio.Event()
    sampler = asyncio.create_task(observed.run(stop))

    async def inject() -> None:
        fault.started = time.monotonic()
        journal_at_fault.append(max((seq for seq, _ in await journal_epochs(db_url, NAME)), default=0))
        if scenario.fails_over:
            moved = failed_over(fault, scenario.fails_over)
            failover.append(asyncio.create_task(fault.seconds_until("the failover", moved, within=180)))
            if scenario.fails_over == "matching":
                epoch = int(str(fault.before["matching"]["epoch"]))
                failover.append(asyncio.create_task(first_entry_after(fault, db_url, epoch)))
        await scenario.inject(fault)

    try:
        report, fault_at = await drive_load(
            lambda: observed.execution_url,
            system.api_token(),
            scenario.name,
            inject,
            rate=RATE,
            warmup=WARMUP,
            after=AFTER,
        )
    finally:
        stop.set()
        await sampler
    try:
        result: ScenarioResult = await check_pipeline(
            db_url, scenario.name, report, fault_at, engine_id=NAME, specs=system.specs()
        )
    except AssertionError:
        print(system.diagnostics(), system.pipeline_logs(), sep="\n")
        raise
    journal = await journal_epochs(db_url, NAME)
    epochs = [epoch for _, epoch in journal]
    result.notes += fault.notes
    for pair in PAIRS:  # one fault, at most one failover of any pair
        was, now = int(str(fault.before[pair]["epoch"])), int(system.pair(pair).get("epoch", 0))
        assert was <= now <= was + 1, (pair, was, now)
        if now != was and pair != scenario.fails_over:
            result.notes.append(f"{pair} failed over too (epoch {was} -> {now})")
    if scenario.fails_over:
        pair = scenario.fails_over
        before = int(str(fault.before[pair]["epoch"]))
        last = system.pair(pair)["history"][-1]
        assert (last["kind"], last["epoch"], last["outcome"]) == ("failover", before + 1, "completed"), last
        assert last.get("from") == fault.active(pair), last
        # From the fault to the status naming the new active at the new epoch, done; for the
        # matching engine, to its first journal entry at the new epoch (as on KWOK).
        completed = await failover[0]
        result.failover_seconds = await failover[-1]
        result.notes.append(f"failover completed in the status {completed:.1f} s after the fault")
    try:
        await system.wait_serving()
    except AssertionError:
        print(system.diagnostics())
        raise
    result.notes.append(f"whole and Ready again {time.monotonic() - fault.started:.0f} s after the fault")
    print(f"{system.cluster.name}: {result.row()} notes: {result.notes}")
    # DESIGN.md section 7, from the database and the load generator's records.
    assert_invariants(result)
    assert epochs == sorted(epochs), "a journal entry of an older epoch after a newer one"
    assert journal[-1][0] > journal_at_fault[0], "the matching engine journaled nothing after the fault"
    assert max(observed.most_actives.values()) <= 1, observed.most_actives
    for pair in PAIRS:
        assert len(system.actives(pair)) == 1, pair

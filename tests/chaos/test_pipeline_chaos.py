"""DESIGN.md section 7 under faults: the whole pipeline as processes, one fault per test.

Each scenario keeps ~40 orders/s flowing through the execution API, injects its fault,
keeps the load on through recovery, then checks from the databases and the load
generator's records: no acknowledged order lost, no trade produced or settled twice,
every trade settled, the ledger reconciles. ``docs/chaos.md`` has the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.chaos.harness import PipelineUnderTest, assert_invariants, journal_epochs, run_scenario
from tests.chaos.netns import IsolatedMembers, namespaces_supported
from tests.environment.postgres import PostgresServer
from tests.environment.rabbitmq import RabbitMQCluster
from tests.unit.bus.support import eventually
from trading_system.ha import Phase
from trading_system.local.members import MemberProcess, Placement

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


@contextlib.asynccontextmanager
async def running_pipeline(
    rabbitmq: RabbitMQCluster, postgres_dsn: str, tmp_path: Path, placement: Placement | None = None
) -> AsyncIterator[PipelineUnderTest]:
    pipeline = PipelineUnderTest(tmp_path / "pipeline", postgres_dsn, rabbitmq.urls, placement)
    try:
        await pipeline.start()
        yield pipeline
    finally:
        await pipeline.close()


@pytest_asyncio.fixture(loop_scope="function")
async def put(
    rabbitmq: RabbitMQCluster, postgres_dsn: str, tmp_path: Path
) -> AsyncIterator[PipelineUnderTest]:
    async with running_pipeline(rabbitmq, postgres_dsn, tmp_path) as pipeline:
        yield pipeline


@pytest.fixture
def isolated_matching() -> Iterator[IsolatedMembers]:
    """Matching members in network namespaces of their own (needs root)."""
    reason = namespaces_supported()
    if reason is not None:
        pytest.skip(reason)
    placement = IsolatedMembers(["matching"])
    try:
        yield placement
    finally:
        placement.close()


async def test_steady_load_without_faults(put: PipelineUnderTest) -> None:
    result, _ = await run_scenario(put, "no-fault", None)
    assert_invariants(result)


async def test_kill_the_active_matching_engine(put: PipelineUnderTest) -> None:
    old = put.pipeline.pair("matching").state.active

    async def fault(p: PipelineUnderTest) -> None:
        p.pipeline.pair("matching").members[str(old)].signal(signal.SIGKILL)

    result, _ = await run_scenario(put, "kill-9 matching active", fault)
    assert_invariants(result)
    state = put.pipeline.pair("matching").state
    assert state.active != old and state.epoch == 2 and result.failover_seconds is not None


async def test_pause_the_active_matching_engine_then_resume_it(put: PipelineUnderTest) -> None:
    """SIGSTOP past the failure threshold, as on a partitioned node whose pod cannot be
    deleted: the supervisor promotes the standby; the resumed old member changes nothing."""
    await run_partition_scenario(
        put,
        "sigstop matching active",
        isolate=lambda member: member.signal(signal.SIGSTOP),
        rejoin=lambda member: member.signal(signal.SIGCONT),
    )


async def test_cut_the_active_matching_engine_off_the_network_then_restore_it(
    rabbitmq: RabbitMQCluster, postgres_dsn: str, tmp_path: Path, isolated_matching: IsolatedMembers
) -> None:
    """The active's link goes down (its process runs on, its TCP connections stall): the
    standby is promoted. When the link comes back, the old member changes nothing."""
    async with running_pipeline(rabbitmq, postgres_dsn, tmp_path, isolated_matching) as put:
        await run_partition_scenario(
            put,
            "network cut matching active",
            isolate=lambda member: isolated_matching.cut(member.name),
            rejoin=lambda member: isolated_matching.restore(member.name),
        )


async def run_partition_scenario(
    put: PipelineUnderTest,
    name: str,
    *,
    isolate: Callable[[MemberProcess], None],
    rejoin: Callable[[MemberProcess], None],
) -> None:
    """The active matching member is taken out of the supervisor's reach (a partitioned node
    whose pod can be neither probed nor deleted) and ``isolate``d until the standby is
    promoted, then ``rejoin``ed: it must report itself fenced, and nothing it did after the
    promotion may be in the journal."""
    pair = put.pipeline.pair("matching")
    old = str(pair.state.active)
    member = pair.members[old]
    promoted_at: dict[str, int] = {}

    async def fault(p: PipelineUnderTest) -> None:
        del pair.members[old]
        isolate(member)
        await eventually(lambda: pair.state.active not in (None, old) and pair.state.phase is Phase.IDLE, 30)
        promoted_at["seq"] = await journal_head(p.db_url)
        assert member_role(member.host) is None  # really unreachable while isolated
        rejoin(member)
        await eventually(lambda: member_role(member.host) == "fenced", 60, what="the old member fenced")

    try:
        result, _ = await run_scenario(put, name, fault)
    finally:
        member.kill()
    assert_invariants(result)
    await assert_only_the_new_epoch_after(put.db_url, promoted_at["seq"])


async def test_kill_the_active_execution_service(put: PipelineUnderTest) -> None:
    old = put.pipeline.pair("execution").state.active

    async def fault(p: PipelineUnderTest) -> None:
        p.pipeline.pair("execution").members[str(old)].signal(signal.SIGKILL)

    result, report = await run_scenario(put, "kill-9 execution active", fault)
    assert_invariants(result)
    assert put.pipeline.pair("execution").state.active != old
    assert any(a.attempts > 1 for a in report.acks)  # some clients really had to retry


async def test_kill_coordinator_replicas_repeatedly(put: PipelineUnderTest) -> None:
    """Three kills 2 s apart under load, so transactions in every phase lose their owner."""

    async def fault(p: PipelineUnderTest) -> None:
        for _ in range(3):
            victim = sorted(p.pipeline.coordinators.members)[0]
            p.pipeline.coordinators.members[victim].signal(signal.SIGKILL)
            await asyncio.sleep(2.0)  # spacing between kills, not a wait for a condition

    result, _ = await run_scenario(put, "kill-9 coordinator x3", fault, after=18.0)
    assert_invariants(result)
    assert put.pipeline.coordinators.replaced >= 3


async def test_kill_the_rabbitmq_node_leading_the_command_queue(
    put: PipelineUnderTest, rabbitmq: RabbitMQCluster
) -> None:
    queue = f"{put.config.namespace}.matching.commands"
    killed: list[int] = []

    async def fault(p: PipelineUnderTest) -> None:
        leader = await asyncio.to_thread(rabbitmq.leader_index, queue)
        await asyncio.to_thread(rabbitmq.kill, leader)
        killed.append(leader)

    try:
        result, _ = await run_scenario(put, "kill-9 rabbitmq command-queue leader", fault, after=20.0)
    finally:
        for node in killed:
            await asyncio.to_thread(rabbitmq.restart, node)
    assert_invariants(result)


async def test_restart_postgresql(put: PipelineUnderTest, postgres: PostgresServer) -> None:
    async def fault(p: PipelineUnderTest) -> None:
        await asyncio.to_thread(postgres.restart)

    result, _ = await run_scenario(put, "restart postgresql", fault, after=20.0)
    assert_invariants(result)


async def test_kill_the_supervisor_in_the_middle_of_a_failover(put: PipelineUnderTest) -> None:
    """The supervisor dies with a failover under way; a new one on the same directory
    adopts the running members and finishes it at the epoch already raised."""
    old = str(put.pipeline.pair("matching").state.active)

    async def fault(p: PipelineUnderTest) -> None:
        pair = p.pipeline.pair("matching")
        pair.members[old].signal(signal.SIGKILL)
        await eventually(
            lambda: pair.state.phase is not Phase.IDLE, 30, interval=0.005, what="failover started"
        )
        assert p.task is not None
        p.task.cancel()  # the supervisor dies here: no clean-up, members keep running
        with contextlib.suppress(asyncio.CancelledError):
            await p.task
        p.restart_supervision()

    result, _ = await run_scenario(put, "kill supervisor mid-failover", fault)
    assert_invariants(result)
    state = put.pipeline.pair("matching").state
    assert state.active not in (None, old) and state.epoch == 2 and state.phase is Phase.IDLE


async def assert_only_the_new_epoch_after(db_url: str, head_at_promotion: int) -> None:
    """The journal holds epoch 1 up to the promotion and epoch 2 after it: nothing the old
    active did once it was replaced reached the journal."""
    epochs = await journal_epochs(db_url)
    first_new = min(seq for seq, epoch in epochs if epoch == 2)
    assert all(epoch == 1 for seq, epoch in epochs if seq < first_new)
    assert all(epoch == 2 for seq, epoch in epochs if seq >= first_new)
    assert first_new > head_at_promotion - 1


async def journal_head(db_url: str) -> int:
    return max((seq for seq, _ in await journal_epochs(db_url)), default=0)


def member_role(host: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{host}:8080/readyz", timeout=1) as resp:
            return str(json.load(resp).get("role"))
    except urllib.error.HTTPError as exc:  # 503 when fenced: the body still says why
        try:
            return str(json.load(exc).get("role"))
        except ValueError:
            return f"HTTP {exc.code}"
    except OSError:
        return None

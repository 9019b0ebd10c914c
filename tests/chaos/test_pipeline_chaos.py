"""DESIGN.md section 7 under faults: the whole pipeline as processes, one fault per test.

Each scenario keeps ~40 orders/s flowing through the execution API, injects its fault,
keeps the load on through recovery, then checks from the databases and the load
generator's records: no acknowledged order lost, no trade produced or settled twice,
every trade settled, the ledger reconciles. ``docs/chaos.md`` has the numbers.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.chaos.harness import PipelineUnderTest, ScenarioResult, run_scenario, write_result
from tests.environment.rabbitmq import RabbitMQCluster

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


@pytest_asyncio.fixture(loop_scope="function")
async def put(
    rabbitmq: RabbitMQCluster, postgres_dsn: str, tmp_path: Path
) -> AsyncIterator[PipelineUnderTest]:
    pipeline = PipelineUnderTest(tmp_path / "pipeline", postgres_dsn, rabbitmq.urls)
    try:
        await pipeline.start()
        yield pipeline
    finally:
        await pipeline.close()


def assert_invariants(result: ScenarioResult) -> None:
    write_result(result)
    print(result.row())
    assert result.acknowledged > 0
    assert result.lost == 0, result
    assert result.stuck_pending == 0, result
    assert result.duplicate_trades == 0, result
    assert result.unsettled_trades == 0, result
    assert result.settlement_breaks == 0, result


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

"""Property test on PostgreSQL: fewer, longer examples of the random interleavings."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.unit.ledger.helpers import build_world
from tests.unit.ledger.scenario import Step, run_scenario, steps
from trading_system.storage import create_engine

pytestmark = pytest.mark.integration


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(plan=st.lists(steps, min_size=10, max_size=30))
async def test_random_interleavings_keep_the_invariants(postgres_dsn: str, plan: list[Step]) -> None:
    engine = create_engine(postgres_dsn)
    try:
        # One database per test, a clean schema per example.
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await run_scenario(await build_world(engine), plan)
    finally:
        await engine.dispose()

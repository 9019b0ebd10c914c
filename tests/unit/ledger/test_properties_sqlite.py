"""Property test on SQLite: random interleavings keep every ledger invariant."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.ledger.helpers import build_world
from tests.unit.ledger.scenario import Step, run_scenario, steps
from trading_system.storage import create_engine

pytestmark = pytest.mark.unit


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, min_size=10, max_size=40))
async def test_random_interleavings_keep_the_invariants(plan: list[Step]) -> None:
    engine = create_engine("sqlite+aiosqlite://")
    try:
        await run_scenario(await build_world(engine), plan)
    finally:
        await engine.dispose()

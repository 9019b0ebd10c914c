"""The embedded demo end to end: the pipeline in one process, then the invariants."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trading_system.coordinator.protocol import Phase
from trading_system.demo.run import DemoConfig, close_pipeline, run_demo, start_pipeline
from trading_system.ledger import HoldState, get_hold, reconcile
from trading_system.matching.core import Side
from trading_system.pipeline.orders import OrderRequest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


async def test_run_demo_places_trades_settles_and_keeps_every_invariant() -> None:
    lines: list[str] = []
    result = await run_demo(DemoConfig(duration=3, rate=150, refresh=0.5), out=lines.append)

    assert lines and "BBO" in lines[-1]
    assert result.orders > 100
    assert result.trades > 10
    by_name = {c.name: c for c in result.checks}
    assert by_name["1 acknowledged orders not lost"].ok
    assert by_name["2 each trade produced once, settled exactly once"].ok
    assert by_name["3 per-asset ledger total unchanged"].ok
    assert by_name["3 no negative balance"].ok
    assert by_name["5 every 3PC transaction ended"].ok
    assert result.reconciliation.ok
    assert result.ok, [c for c in result.checks if not c.ok]
    assert set(result.snapshot.phases) <= {Phase.COMMITTED.value, Phase.ABORTED.value}
    assert result.snapshot.settled == result.trades
    assert result.snapshot.p50_ms is not None and result.snapshot.p99_ms is not None
    assert set(result.snapshot.bbo) == {"BTC-USD", "ETH-USD", "SOL-USD"}


async def test_order_without_funds_is_aborted_and_leaves_no_hold(tmp_path: Path) -> None:
    config = DemoConfig(traders=2, unfunded_accounts=("broke",))
    pipeline = await start_pipeline(config, f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    try:
        order = OrderRequest("broke-1", "broke", "BTC-USD", Side.BUY, 2, 30_000)
        pipeline.tracker.submitted(order.order_id, order.qty)
        txn = await pipeline.coordinator.place(order)

        assert txn.phase is Phase.ABORTED
        assert txn.outcome_reason is not None and "InsufficientFunds" in txn.outcome_reason
        assert await get_hold(pipeline.db, txn.txn_id) is None
        assert pipeline.venue.engine.open_order(order.order_id) is None
        assert pipeline.venue.commands == 0  # never sent to the venue
        assert (await reconcile(pipeline.db)).ok
    finally:
        await close_pipeline(pipeline)


async def test_risk_no_vote_aborts_and_releases_the_hold(tmp_path: Path) -> None:
    pipeline = await start_pipeline(DemoConfig(traders=1), f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    try:
        order = OrderRequest("big-1", "trader-0", "SOL-USD", Side.SELL, 5_000, 150)  # above max_qty
        txn = await pipeline.coordinator.place(order)

        assert txn.phase is Phase.ABORTED
        assert txn.outcome_reason is not None and "risk voted no" in txn.outcome_reason
        hold = await get_hold(pipeline.db, txn.txn_id)
        assert hold is not None and hold.state is HoldState.RELEASED and hold.remaining == 0
        assert (await reconcile(pipeline.db)).ok
    finally:
        await close_pipeline(pipeline)


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("trading-system")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "trading_system.cli"]


def test_cli_demo_runs_and_reports_the_invariants() -> None:
    done = subprocess.run(
        [*_cli(), "demo", "--duration", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "invariants:" in done.stdout
    assert "[PASS] 3 per-asset ledger total unchanged" in done.stdout
    assert "[PASS] 5 every 3PC transaction ended" in done.stdout
    assert "result: all invariants hold" in done.stdout
    assert "[FAIL]" not in done.stdout


def test_cli_help_lists_the_demo_options() -> None:
    done = subprocess.run(
        [*_cli(), "demo", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    for option in ("--duration", "--bus-url", "--db-url", "--rate", "--seed"):
        assert option in done.stdout

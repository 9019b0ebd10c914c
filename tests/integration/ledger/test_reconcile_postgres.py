"""Reconciliation on PostgreSQL: clean passes, breaks injected behind the ledger's back are found.

The breaks are made the way an operator's mistake would be: plain SQL through psql.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.environment.postgres import PostgresServer
from tests.unit.ledger.helpers import World, place_buy, place_sell, trade
from trading_system.ledger import reconcile, settle_trade

pytestmark = pytest.mark.integration


async def _trade_a_little(w: World) -> None:
    await place_buy(w, "alice", "b1", 40_000, 5)
    await place_sell(w, "bob", "s1", 5)
    await settle_trade(w.engine, w.fence, trade("t1", 39_000, 3, ("alice", "b1"), ("bob", "s1")))


async def _cli(dsn: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "trading_system.ledger.reconcile",
        "--dsn",
        dsn,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.parametrize(
    ("sql", "checks"),
    [
        # Value created out of nowhere.
        (
            "UPDATE balances SET available = available + 100 WHERE account_id = 'alice' AND asset = 'BTC'",
            {"conservation", "entries_vs_balances"},
        ),
        # A hold shrunk without giving the funds back.
        ("UPDATE holds SET remaining = remaining - 1 WHERE hold_id = 'tx-b1'", {"held_vs_holds"}),
        # A settled trade lost its ledger entries.
        ("DELETE FROM entries WHERE ref = 't1'", {"entries_vs_balances", "trades_vs_entries"}),
        # The CHECK constraint is gone and a balance went negative.
        (
            "ALTER TABLE balances DROP CONSTRAINT balances_available_nonnegative; "
            "UPDATE balances SET available = -5 WHERE account_id = 'carol' AND asset = 'USD'",
            {"negative_balance", "conservation", "entries_vs_balances"},
        ),
    ],
)
async def test_injected_breaks_are_found(
    pg_world: World, postgres: PostgresServer, postgres_dsn: str, sql: str, checks: set[str]
) -> None:
    await _trade_a_little(pg_world)
    clean = await reconcile(pg_world.engine)
    assert clean.ok, clean.breaks
    postgres.psql(sql, database=str(make_url(postgres_dsn).database))
    broken = await reconcile(pg_world.engine)
    assert {b.check for b in broken.breaks} == checks


async def test_cli_exit_codes_json_and_textfile(
    pg_world: World, postgres: PostgresServer, postgres_dsn: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    await _trade_a_little(pg_world)
    metrics = tmp_path / "ledger.prom"
    code, out = await _cli(postgres_dsn, "--format", "json", "--textfile", str(metrics))
    assert code == 0, out
    assert json.loads(out)["ok"] is True
    assert 'ledger_reconciliation_breaks{check="conservation"} 0.0' in metrics.read_text()

    postgres.psql(
        "UPDATE balances SET held = held + 1 WHERE account_id = 'bob' AND asset = 'BTC'",
        database=str(make_url(postgres_dsn).database),
    )
    code, out = await _cli(postgres_dsn, "--format", "json", "--textfile", str(metrics))
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert report["breaks_by_check"]["held_vs_holds"] == 1
    assert 'ledger_reconciliation_breaks{check="held_vs_holds"} 1.0' in metrics.read_text()
    assert "ledger_reconciliation_ok 0.0" in metrics.read_text()

    code, out = await _cli(postgres_dsn)
    assert code == 1 and "BREAK" in out and "held_vs_holds" in out
    code, out = await _cli("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    assert code == 2 and "reconciliation failed" in out

"""``trading-system coordinator txns ...`` on SQLite: output, forced decisions, bad input."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.unit.coordinator.world import World, order, snapshot
from trading_system.coordinator import protocol as p
from trading_system.coordinator.group_commit import GroupCommitter
from trading_system.coordinator.service.app import CoordinatorConfig, CoordinatorService
from trading_system.coordinator.service.cli import add_coordinator_parser, config_from_args, main
from trading_system.coordinator.sql_store import SqlStore
from trading_system.ledger import HoldState, get_hold
from trading_system.storage import create_engine

pytestmark = pytest.mark.unit


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A database with two transactions waiting in pre_commit (no venue answers)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"

    async def setup() -> None:
        world = await World.start(url)
        try:
            driver = world.driver("replica-a")
            for order_id in ("o-1", "o-2"):
                placed = await driver.place(order(order_id))
                assert placed is not None and placed.phase is p.Phase.PRE_COMMIT
        finally:
            await world.close()

    asyncio.run(setup())
    return url


def txns(db_url: str, *args: str) -> int:
    return main(["coordinator", "txns", *args, "--db-url", db_url, "--bus-url", ""])


def state(db_url: str, txn_id: str) -> tuple[p.Phase, HoldState | None, list[str]]:
    async def read() -> tuple[p.Phase, HoldState | None, list[str]]:
        db = create_engine(db_url)
        try:
            store = SqlStore(db)
            record = await store.get(txn_id)
            assert record is not None
            hold = await get_hold(db, txn_id)
            actions = [a.action for a in await store.audit_entries(txn_id)]
            return record.transaction.phase, None if hold is None else hold.state, actions
        finally:
            await db.dispose()

    return asyncio.run(read())


def rows(db_url: str) -> list[list[tuple[object, ...]]]:
    async def read() -> list[list[tuple[object, ...]]]:
        db = create_engine(db_url)
        try:
            return await snapshot(db)
        finally:
            await db.dispose()

    return asyncio.run(read())


def test_list_and_show(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert txns(db_url, "list", "--in-doubt") == 0
    listed = capsys.readouterr().out
    assert "txn-o-1" in listed and "txn-o-2" in listed and "pre_commit" in listed
    assert txns(db_url, "list", "--stuck-for", "3600") == 0
    assert "(no transactions)" in capsys.readouterr().out
    assert txns(db_url, "show", "txn-o-1") == 0
    shown = capsys.readouterr().out
    assert "vote ledger=yes: held" in shown and "vote risk=yes: within limits" in shown
    assert "can_commit -> pre_commit" in shown and "[replica-a]" in shown


def test_force_commit_binds_the_hold_and_is_audited(db_url: str) -> None:
    assert (
        txns(db_url, "force-commit", "txn-o-1", "--reason", "venue confirmed by phone", "--operator", "ann")
        == 0
    )
    assert state(db_url, "txn-o-1") == (p.Phase.COMMITTED, HoldState.BOUND, ["force_commit"])


def test_force_abort_sends_the_cancel_and_keeps_the_hold_for_a_racing_fill(db_url: str) -> None:
    assert txns(db_url, "force-abort", "txn-o-2", "--reason", "venue down", "--operator", "ann") == 0
    # The cancel went out; the transaction ends when the venue confirms it, and settlement
    # then releases what is left of the hold (after any fill that raced the cancel).
    assert state(db_url, "txn-o-2") == (p.Phase.ABORTING, HoldState.RESERVED, ["force_abort"])


def test_bad_input_exits_2_and_changes_nothing(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert txns(db_url, "force-commit", "txn-o-1", "--reason", "ok", "--operator", "ann") == 0
    before = rows(db_url)
    assert txns(db_url, "force-commit", "txn-o-1", "--reason", "again", "--operator", "ann") == 2
    assert "the transaction is committed" in capsys.readouterr().err
    assert txns(db_url, "force-abort", "txn-o-1", "--reason", "too late", "--operator", "ann") == 2
    assert "the transaction is committed" in capsys.readouterr().err
    assert txns(db_url, "force-commit", "txn-nope", "--reason", "x", "--operator", "ann") == 2
    assert "unknown transaction" in capsys.readouterr().err
    assert txns(db_url, "force-abort", "txn-o-2", "--reason", "  ", "--operator", "ann") == 2
    assert "must not be empty" in capsys.readouterr().err
    assert txns(db_url, "show", "txn-nope") == 2
    assert txns(db_url, "replay", "txn-nope") == 2
    with pytest.raises(SystemExit) as missing:
        txns(db_url, "force-abort", "txn-o-2", "--operator", "ann")
    assert missing.value.code == 2
    assert rows(db_url) == before


def test_replay_republishes_what_was_sent(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert txns(db_url, "replay", "txn-o-1") == 0
    assert "re-published order.new" in capsys.readouterr().out
    assert txns(db_url, "force-commit", "txn-o-1", "--reason", "ok", "--operator", "ann") == 0
    capsys.readouterr()
    assert txns(db_url, "replay", "txn-o-1") == 0
    assert "txn.outcome" in capsys.readouterr().out


def test_serve_flags_build_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    monkeypatch.setenv("TRADING_SYSTEM_DATABASE_URL", "sqlite+aiosqlite:///x.db")
    monkeypatch.setenv("TRADING_SYSTEM_RABBITMQ_URL", "amqp://a/,amqp://b/")
    monkeypatch.setenv("TRADING_SYSTEM_COORDINATOR_CRASH_AT", "pre_commit")
    parser = argparse.ArgumentParser()
    add_coordinator_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["coordinator", "serve", "--lease-ttl", "2", "--timeout-pre-commit", "7", "--max-orders", "5"]
    )
    config = config_from_args(args)
    assert config.db_url == "sqlite+aiosqlite:///x.db" and config.bus_urls == ("amqp://a/", "amqp://b/")
    assert config.http_port == 8080 and config.lease.ttl == 2 and config.timeouts.pre_commit == 7
    assert config.risk.max_orders == 5 and config.crash_at is p.Phase.PRE_COMMIT
    assert set(config.instruments) == {"BTC-USD", "ETH-USD", "SOL-USD"}
    assert config.commit_writers == 2 and config.concurrency == 64  # group commit on by default


def _serve_config(argv: list[str]) -> CoordinatorConfig:
    import argparse

    parser = argparse.ArgumentParser()
    add_coordinator_parser(parser.add_subparsers(dest="command"))
    return config_from_args(parser.parse_args(["coordinator", "serve", "--db-url", "sqlite://", *argv]))


def test_group_commit_settings_come_from_flags_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADING_SYSTEM_COORDINATOR_COMMIT_WRITERS", "0")
    monkeypatch.setenv("TRADING_SYSTEM_COORDINATOR_CONCURRENCY", "32")
    config = _serve_config([])
    assert config.commit_writers == 0 and config.concurrency == 32
    config = _serve_config(["--commit-writers", "3", "--concurrency", "100"])
    assert config.commit_writers == 3 and config.concurrency == 100
    monkeypatch.setenv("TRADING_SYSTEM_COORDINATOR_CONCURRENCY", "many")
    with pytest.raises(SystemExit, match="CONCURRENCY must be an integer"):
        _serve_config([])


async def test_the_service_group_commits_its_store_writes_unless_told_not_to() -> None:
    on = CoordinatorService(CoordinatorConfig(db_url="sqlite+aiosqlite://", bus_mode="in_memory"))
    off = CoordinatorService(
        CoordinatorConfig(db_url="sqlite+aiosqlite://", bus_mode="in_memory", commit_writers=0)
    )
    try:
        assert isinstance(on.store.committer, GroupCommitter) and on.store.committer.writers == 2
        assert off.store.committer is None
    finally:
        for service in (on, off):
            await service.db.dispose()

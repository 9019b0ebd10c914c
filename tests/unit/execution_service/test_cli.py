"""``trading-system execution serve``: flags and their environment defaults."""

from __future__ import annotations

import argparse

import pytest

from trading_system.common.auth import Scope
from trading_system.execution.service.app import Role, tokens_from_env
from trading_system.execution.service.cli import add_execution_parser, config_from_args

pytestmark = pytest.mark.unit


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trading-system")
    add_execution_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_serve_defaults_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADING_SYSTEM_DATABASE_URL", "postgresql+asyncpg://db/x")
    monkeypatch.setenv("TRADING_SYSTEM_RABBITMQ_URL", "amqp://a/, amqp://b/")
    args = parse(["execution", "serve"])
    config = config_from_args(args)
    assert args.func.__name__ == "run_execution"
    assert config.db_url == "postgresql+asyncpg://db/x"
    assert config.bus_urls == ("amqp://a/", "amqp://b/")
    assert (config.http_port, config.role, config.epoch, config.pair_name) == (
        8080,
        Role.STANDBY,
        0,
        "execution",
    )


def test_serve_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRADING_SYSTEM_DATABASE_URL", raising=False)
    args = parse(
        [
            "execution",
            "serve",
            "--db-url",
            "sqlite+aiosqlite:///x.db",
            "--port",
            "9000",
            "--role",
            "active",
            "--epoch",
            "3",
            "--symbol",
            "BTC-USD:5:1",
            "--rate",
            "10",
            "--burst",
            "20",
        ]
    )
    config = config_from_args(args)
    assert (config.http_port, config.role, config.epoch) == (9000, Role.ACTIVE, 3)
    assert config.specs[0].symbol == "BTC-USD" and config.specs[0].tick_size == 5
    assert (config.rate, config.burst) == (10.0, 20)


def test_serve_needs_a_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRADING_SYSTEM_DATABASE_URL", raising=False)
    with pytest.raises(SystemExit, match="db-url"):
        config_from_args(parse(["execution", "serve"]))


def test_tokens_from_singular_and_plural_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADING_SYSTEM_API_TOKEN", "one")
    monkeypatch.setenv("TRADING_SYSTEM_API_TOKENS", "two,three")
    monkeypatch.setenv("TRADING_SYSTEM_ADMIN_TOKEN", "boss")
    monkeypatch.delenv("TRADING_SYSTEM_ADMIN_TOKENS", raising=False)
    tokens = tokens_from_env()
    assert set(tokens.api) == {"one", "two", "three"} and tokens.admin == ("boss",)
    assert tokens.allows("Bearer one", Scope.API) and not tokens.allows("Bearer one", Scope.ADMIN)
    assert tokens.allows("Bearer boss", Scope.ADMIN)

"""``trading-system execution serve``: the execution service process.

Configuration comes from flags, each defaulting to the environment the chart sets:
``TRADING_SYSTEM_DATABASE_URL``, ``TRADING_SYSTEM_RABBITMQ_URL`` (comma-separated nodes
allowed), ``TRADING_SYSTEM_API_TOKEN`` and ``TRADING_SYSTEM_ADMIN_TOKEN`` (tokens are
never flags: they would show in the process list).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from trading_system.bus.config import parse_urls
from trading_system.common.logging import configure_service_logging
from trading_system.common.service_env import (
    DATABASE_URL,
    ConfigError,
    ServiceEnvironment,
    add_connection_flags,
)
from trading_system.common.startup import run_service
from trading_system.execution.service.app import ExecutionConfig, ExecutionService, Role
from trading_system.matching.service.app import parse_symbol
from trading_system.matching.service.cli import symbols_from_config


def add_execution_parser(subparsers: Any, env: ServiceEnvironment | None = None) -> argparse.ArgumentParser:
    """Add ``execution serve``; its handler is ``args.func(args) -> int``."""
    env = env or ServiceEnvironment.read()
    p: argparse.ArgumentParser = subparsers.add_parser("execution", help="the execution service (order API)")
    sub = p.add_subparsers(dest="execution_command", required=True)
    serve = sub.add_parser("serve", help="run an execution member (active or standby)")
    add_connection_flags(serve, env)
    serve.add_argument("--role", choices=[Role.ACTIVE.value, Role.STANDBY.value], default=Role.STANDBY.value)
    serve.add_argument("--epoch", type=int, default=0, help="epoch to take when starting active")
    serve.add_argument("--holder", default=env.member_name, help="name written to the fence row (pod name)")
    serve.add_argument("--pair-name", default="execution", help="fence row of this pair")
    serve.add_argument("--namespace", default="", help="prefix of exchange and queue names")
    serve.add_argument(
        "--symbol",
        action="append",
        default=[],
        type=parse_symbol,
        help="SYMBOL[:tick[:lot[:band_bps[:ref]]]] (repeatable; default: the symbols of "
        "$TRADING_SYSTEM_CONFIG); with any given, unknown symbols are refused",
    )
    serve.add_argument("--rate", type=float, default=100.0, help="orders per second per account")
    serve.add_argument("--burst", type=int, default=200, help="burst per account")
    serve.add_argument(
        "--fee-bps", type=int, default=10, help="trading fee settled per trade (the coordinators' --fee-bps)"
    )
    serve.add_argument(
        "--no-settlement", action="store_true", help="leave settlement to another process (tests)"
    )
    serve.set_defaults(func=run_execution, service_env=env)
    return p


def config_from_args(args: argparse.Namespace) -> ExecutionConfig:
    if not args.db_url:
        raise SystemExit(f"execution serve needs --db-url or ${DATABASE_URL}")
    try:
        specs = tuple(args.symbol) or symbols_from_config(args.service_env.pipeline_config())
    except ConfigError as exc:
        raise SystemExit(str(exc)) from exc
    return ExecutionConfig(
        db_url=args.db_url,
        role=Role(args.role),
        epoch=args.epoch,
        bus_mode=args.bus_mode,
        bus_urls=parse_urls(args.bus_url or ""),
        http_host=args.host,
        http_port=args.port,
        holder=args.holder,
        pair_name=args.pair_name,
        namespace=args.namespace,
        specs=specs,
        rate=args.rate,
        burst=args.burst,
        fee_bps=args.fee_bps,
        settle=not args.no_settlement,
    )


def run_execution(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    configure_service_logging("execution")
    return run_service(
        "execution serve",
        lambda: ExecutionService(config),
        startup_timeout=args.startup_timeout,
        http=(config.http_host, config.http_port),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trading-system")
    add_execution_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""``trading-system coordinator ...``: the replica process and the operators' commands.

``serve`` runs a replica. ``txns list|show|force-commit|force-abort|replay`` work on the
stored transactions directly (database, and the bus for the messages they send). Flags
default to the environment the chart sets: ``TRADING_SYSTEM_DATABASE_URL`` and
``TRADING_SYSTEM_RABBITMQ_URL`` (comma-separated nodes allowed); tokens come from
``TRADING_SYSTEM_API_TOKEN``/``TRADING_SYSTEM_ADMIN_TOKEN`` and are never flags.

Operators' commands exit 2 on bad input (unknown transaction, a forced decision the
phase does not allow, an empty reason) and then change nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from trading_system.bus.config import parse_urls
from trading_system.common.logging import configure_service_logging
from trading_system.common.service_env import (
    DATABASE_URL,
    ConfigError,
    ServiceEnvironment,
    add_connection_flags,
    add_store_flags,
)
from trading_system.common.startup import run_service
from trading_system.coordinator.protocol import Phase, PhaseTimeouts
from trading_system.coordinator.risk import RiskPolicy
from trading_system.coordinator.service.app import CRASH_ENV, CoordinatorConfig, CoordinatorService
from trading_system.coordinator.service.operations import Operations, OperatorError
from trading_system.ledger import Instrument
from trading_system.ledger.pricing import instrument_of_symbol
from trading_system.pipeline.coordinator import LeaseSettings
from trading_system.pipeline.orders import RiskLimits

DEFAULT_INSTRUMENTS = ("BTC-USD:BTC:USD", "ETH-USD:ETH:USD", "SOL-USD:SOL:USD")
COMMIT_WRITERS_ENV = "TRADING_SYSTEM_COORDINATOR_COMMIT_WRITERS"
CONCURRENCY_ENV = "TRADING_SYSTEM_COORDINATOR_CONCURRENCY"


def _env_int(name: str, default: int) -> int:
    """A flag's default from the environment (the chart, or a benchmark comparing settings)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {value!r}") from None


def parse_instrument(text: str) -> Instrument:
    """``SYMBOL:BASE:QUOTE[:price_divisor]``"""
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError(f"expected SYMBOL:BASE:QUOTE[:divisor], got {text!r}")
    divisor = int(parts[3]) if len(parts) == 4 else 1
    return Instrument(parts[0], parts[1], parts[2], price_divisor=divisor)


def config_instruments(env: ServiceEnvironment) -> list[Instrument]:
    """The pipeline config's ``BASE-QUOTE`` symbols (``$TRADING_SYSTEM_CONFIG``), if any."""
    try:
        config = env.pipeline_config()
    except ConfigError as exc:
        raise SystemExit(str(exc)) from exc
    found = (instrument_of_symbol(str(entry.get("name", ""))) for entry in config.get("symbols") or ())
    return [instrument for instrument in found if instrument is not None]


def _connection_flags(p: argparse.ArgumentParser, env: ServiceEnvironment) -> None:
    add_store_flags(p, env)
    _pipeline_flags(p)


def _pipeline_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", default="", help="prefix of exchange and queue names")
    p.add_argument(
        "--fence-pair", default="execution", help="fence row the ledger writes are checked against"
    )


def add_coordinator_parser(subparsers: Any, env: ServiceEnvironment | None = None) -> argparse.ArgumentParser:
    """Add ``coordinator serve`` and ``coordinator txns ...``; handlers are ``args.func(args) -> int``."""
    env = env or ServiceEnvironment.read()
    p: argparse.ArgumentParser = subparsers.add_parser(
        "coordinator", help="the 3PC order-transaction coordinator"
    )
    sub = p.add_subparsers(dest="coordinator_command", required=True)
    _add_serve(sub, env)
    _add_txns(sub, env)
    return p


def _add_serve(sub: Any, env: ServiceEnvironment) -> None:
    serve: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run a coordinator replica (all are active)"
    )
    add_connection_flags(serve, env)
    _pipeline_flags(serve)
    serve.add_argument(
        "--replica", default=env.member_name, help="lease owner name (default: the pod name or host name)"
    )
    serve.add_argument("--fee-bps", type=int, default=10)
    serve.add_argument(
        "--instrument", action="append", type=parse_instrument, default=[], help="SYMBOL:BASE:QUOTE[:divisor]"
    )
    defaults = PhaseTimeouts()
    for phase in ("init", "can_commit", "pre_commit", "do_commit", "aborting"):
        serve.add_argument(
            f"--timeout-{phase.replace('_', '-')}", type=float, default=getattr(defaults, phase)
        )
    serve.add_argument(
        "--lease-ttl", type=float, default=5.0, help="seconds before a dead replica's work is taken"
    )
    serve.add_argument("--claim-wait", type=float, default=10.0)
    serve.add_argument("--sweep-interval", type=float, default=0.25)
    serve.add_argument(
        "--commit-writers",
        type=int,
        default=_env_int(COMMIT_WRITERS_ENV, 2),
        help=f"group-commit batches in flight at once, 0: one commit per step (${COMMIT_WRITERS_ENV})",
    )
    serve.add_argument(
        "--concurrency",
        type=int,
        default=_env_int(CONCURRENCY_ENV, 64),
        help=f"messages per queue handled at once, <= prefetch (${CONCURRENCY_ENV})",
    )
    serve.add_argument("--max-qty", type=int, default=RiskLimits().max_qty)
    serve.add_argument("--max-notional", type=int, default=RiskLimits().max_notional, help="max order value")
    serve.add_argument("--max-position", type=int, default=None)
    serve.add_argument("--max-exposure", type=int, default=None)
    serve.add_argument("--max-orders", type=int, default=None, help="per account per --rate-window")
    serve.add_argument("--rate-window", type=float, default=1.0)
    serve.set_defaults(func=run_serve, service_env=env)


def config_from_args(args: argparse.Namespace) -> CoordinatorConfig:
    if not args.db_url:
        raise SystemExit(f"coordinator serve needs --db-url or ${DATABASE_URL}")
    instruments = (
        args.instrument
        or config_instruments(args.service_env)
        or [parse_instrument(t) for t in DEFAULT_INSTRUMENTS]
    )
    crash = os.environ.get(CRASH_ENV)
    return CoordinatorConfig(
        db_url=args.db_url,
        bus_urls=parse_urls(args.bus_url or ""),
        bus_mode=args.bus_mode,
        replica=args.replica,
        http_host=args.host,
        http_port=args.port,
        namespace=args.namespace,
        fence_pair=args.fence_pair,
        fee_bps=args.fee_bps,
        instruments={i.symbol: i for i in instruments},
        risk=RiskPolicy(
            RiskLimits(max_qty=args.max_qty, max_notional=args.max_notional),
            max_position=args.max_position,
            max_exposure=args.max_exposure,
            max_orders=args.max_orders,
            window=args.rate_window,
        ),
        timeouts=PhaseTimeouts(
            args.timeout_init,
            args.timeout_can_commit,
            args.timeout_pre_commit,
            args.timeout_do_commit,
            args.timeout_aborting,
        ),
        lease=LeaseSettings(ttl=args.lease_ttl, claim_wait=args.claim_wait),
        sweep_interval=args.sweep_interval,
        commit_writers=args.commit_writers,
        concurrency=args.concurrency,
        renew_interval=max(args.lease_ttl / 3, 0.05),
        crash_at=Phase(crash) if crash else None,
    )


def run_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    configure_service_logging("coordinator")
    return run_service(
        "coordinator serve",
        lambda: CoordinatorService(config),
        startup_timeout=args.startup_timeout,
        http=(config.http_host, config.http_port),
    )


def _add_txns(sub: Any, env: ServiceEnvironment) -> None:
    txns: argparse.ArgumentParser = sub.add_parser("txns", help="inspect and repair stored transactions")
    ops = txns.add_subparsers(dest="txns_command", required=True)
    listing = ops.add_parser("list", help="transactions, oldest first")
    listing.add_argument("--in-doubt", action="store_true", help="only pre_commit, do_commit and aborting")
    listing.add_argument(
        "--stuck-for", type=float, default=None, metavar="SECONDS", help="open and unchanged"
    )
    listing.add_argument("--limit", type=int, default=100)
    show = ops.add_parser("show", help="one transaction's history, votes and audit")
    show.add_argument("txn_id")
    for name, text in (
        ("force-commit", "commit a pre_commit transaction"),
        ("force-abort", "abort and compensate"),
    ):
        forced = ops.add_parser(name, help=text)
        forced.add_argument("txn_id")
        forced.add_argument("--reason", required=True)
        forced.add_argument("--operator", required=True)
    replay = ops.add_parser("replay", help="re-publish the transaction's messages")
    replay.add_argument("txn_id")
    for parser in (listing, show, *ops.choices.values()):
        if not any(action.dest == "db_url" for action in parser._actions):
            _connection_flags(parser, env)
    txns.set_defaults(func=run_txns)


def run_txns(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    if not args.db_url:
        print(f"error: needs --db-url or ${DATABASE_URL}", file=sys.stderr)
        return 2
    try:
        lines = asyncio.run(_run_txns(args))
    except OperatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0


async def _run_txns(args: argparse.Namespace) -> list[str]:
    ops = Operations(args.db_url, parse_urls(args.bus_url or ""), args.namespace, args.fence_pair)
    try:
        match args.txns_command:
            case "list":
                return await ops.listing(in_doubt=args.in_doubt, stuck_for=args.stuck_for, limit=args.limit)
            case "show":
                return await ops.show(args.txn_id)
            case "force-commit":
                return await ops.force(args.txn_id, commit=True, reason=args.reason, operator=args.operator)
            case "force-abort":
                return await ops.force(args.txn_id, commit=False, reason=args.reason, operator=args.operator)
            case "replay":
                return await ops.replay(args.txn_id)
        raise OperatorError(f"unknown command {args.txns_command}")
    finally:
        await ops.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trading-system")
    sub = parser.add_subparsers(dest="command", required=True)
    add_coordinator_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))

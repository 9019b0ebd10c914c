"""``trading-system matching serve``: one member of a matching pair.

In a pod it needs no flags: the engine id is the TradingSystem's name
(``TRADING_SYSTEM_INSTANCE``), the holder written to the fence row is the pod name, the
symbols come from the pipeline config file and the connections from the environment
(``common.service_env``). Every member starts as a standby; the operator (or the local
supervisor) promotes one with an epoch.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from trading_system.bus.config import parse_urls
from trading_system.common.logging import configure_service_logging
from trading_system.common.service_env import ConfigError, ServiceEnvironment, add_connection_flags
from trading_system.common.startup import run_service
from trading_system.matching.core import SymbolSpec
from trading_system.matching.service.app import MatchingConfig, MatchingService, parse_symbol
from trading_system.matching.service.engine_runner import Role
from trading_system.pipeline.messages import Names


def symbols_from_config(config: Mapping[str, Any]) -> tuple[SymbolSpec, ...]:
    """Symbols of the operator's pipeline config as integer-unit specs.

    ``tickSize`` and ``lotSize`` are decimal strings; a symbol's prices are integers in
    units of its tick's last decimal place (tick "0.05" -> unit 0.01, tick 5) and
    quantities likewise for the lot, so the core stays in exact integers.
    ``priceBandPercent`` becomes ``band_bps`` around the last trade price.
    """
    specs = []
    for entry in config.get("symbols") or ():
        try:
            name = str(entry["name"])
            tick, lot = _units(str(entry["tickSize"])), _units(str(entry["lotSize"]))
            band = int(entry.get("priceBandPercent", 10)) * 100
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            raise ConfigError(f"bad symbol entry {entry!r}: {exc}") from exc
        specs.append(SymbolSpec(name, tick_size=tick, lot_size=lot, band_bps=band))
    return tuple(specs)


def _units(decimal: str) -> int:
    """The decimal as an integer multiple of its own last decimal place ("0.05" -> 5)."""
    value = Decimal(decimal)
    if not value.is_finite() or value <= 0:
        raise ValueError(f"{decimal!r} is not a positive number")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    return int(value.scaleb(-min(exponent, 0)))


def add_matching_parser(subparsers: Any, env: ServiceEnvironment | None = None) -> argparse.ArgumentParser:
    """Add ``matching serve``; its handler is ``args.func(args) -> int``."""
    env = env or ServiceEnvironment.read()
    p: argparse.ArgumentParser = subparsers.add_parser("matching", help="the matching engine pair")
    sub = p.add_subparsers(dest="matching_command", required=True)
    serve: argparse.ArgumentParser = sub.add_parser("serve", help="run a matching member (active or standby)")
    serve.add_argument("--engine-id", default=env.instance, help="default $TRADING_SYSTEM_INSTANCE")
    add_connection_flags(serve, env)
    serve.add_argument("--role", choices=[Role.ACTIVE.value, Role.STANDBY.value], default=Role.STANDBY.value)
    serve.add_argument("--epoch", type=int, default=0, help="epoch to take when starting active")
    serve.add_argument("--holder", default=env.member_name, help="name written to the fence row (pod name)")
    serve.add_argument("--pair-name", default=None, help="fence row (default matching-<engine-id>)")
    serve.add_argument(
        "--symbol",
        action="append",
        default=[],
        type=parse_symbol,
        help="SYMBOL[:tick[:lot[:band_bps[:ref]]]] (repeatable; same on both members); "
        "default: the symbols of $TRADING_SYSTEM_CONFIG",
    )
    serve.add_argument(
        "--namespace",
        default="",
        help="prefix of the pipeline's exchange and queue names (as the coordinator's)",
    )
    serve.add_argument(
        "--no-orders",
        action="store_true",
        help="take only matching.command messages, not the coordinator's catalog orders",
    )
    serve.add_argument("--batch-size", type=int, default=64)
    serve.add_argument("--snapshot-every", type=int, default=10_000)
    serve.set_defaults(func=run_matching, service_env=env)
    return p


def config_from_args(args: argparse.Namespace) -> MatchingConfig:
    env: ServiceEnvironment = args.service_env
    if not args.engine_id:
        raise SystemExit("matching serve needs --engine-id or $TRADING_SYSTEM_INSTANCE")
    if not args.db_url:
        raise SystemExit("matching serve needs --db-url or $TRADING_SYSTEM_DATABASE_URL")
    try:
        specs = tuple(args.symbol) or symbols_from_config(env.pipeline_config())
    except ConfigError as exc:
        raise SystemExit(str(exc)) from exc
    names = Names.namespaced(args.namespace)
    return MatchingConfig(
        engine_id=args.engine_id,
        db_url=args.db_url,
        role=Role(args.role),
        epoch=args.epoch,
        bus_mode=args.bus_mode,
        bus_urls=parse_urls(args.bus_url or ""),
        http_host=args.host,
        http_port=args.port,
        holder=args.holder,
        pair_name=args.pair_name,
        specs=specs,
        batch_size=args.batch_size,
        snapshot_every=args.snapshot_every,
        accept_orders=not args.no_orders,
        orders_queue=names.commands,
        exchange=names.exchange,
    )


def run_matching(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    configure_service_logging("matching")
    return run_service(
        "matching serve",
        lambda: MatchingService(config),
        startup_timeout=args.startup_timeout,
        http=(config.http_host, config.http_port),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trading-system")
    sub = parser.add_subparsers(dest="command", required=True)
    add_matching_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

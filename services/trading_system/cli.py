"""The ``trading-system`` command: one entry point for the demo and the services."""

from __future__ import annotations

import argparse
import sys

from trading_system.common.service_env import ServiceEnvironment
from trading_system.coordinator.service.cli import add_coordinator_parser
from trading_system.execution.service.cli import add_execution_parser
from trading_system.local.launcher import add_local_parser
from trading_system.matching.service.cli import add_matching_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trading-system", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run the whole pipeline locally on the embedded default",
        description=(
            "Run matching, the 3PC coordinator, settlement and execution tracking in one "
            "process (in-memory bus, SQLite ledger) under simulated traders, print a live "
            "summary, then reconcile the ledger and check the invariants "
            "(exit 0 if all hold, 1 otherwise)."
        ),
    )
    demo.add_argument("--duration", type=float, default=20.0, help="seconds to run (default 20)")
    demo.add_argument("--traders", type=int, default=8, help="simulated trader accounts (default 8)")
    demo.add_argument(
        "--rate",
        type=float,
        default=300.0,
        help="trader actions per second to aim at, 0 = flat out (default 300)",
    )
    demo.add_argument("--seed", type=int, default=7, help="seed of the traders' RNG (default 7)")
    demo.add_argument(
        "--bus-url",
        default=None,
        help="amqp://... (comma-separated for several nodes) to use RabbitMQ instead of the in-memory bus",
    )
    demo.add_argument(
        "--db-url",
        default=None,
        help="postgresql+asyncpg://... to use PostgreSQL instead of a temporary SQLite file",
    )
    env = ServiceEnvironment.read()  # once: every service command defaults to it
    add_matching_parser(sub, env)
    add_execution_parser(sub, env)
    add_coordinator_parser(sub, env)
    add_local_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from trading_system.demo.run import DemoConfig
        from trading_system.demo.run import main as demo_main

        config = DemoConfig(
            duration=args.duration,
            traders=args.traders,
            rate=args.rate,
            seed=args.seed,
            bus_url=args.bus_url,
            db_url=args.db_url,
        )
        return demo_main(config)
    # Service subcommands carry their own runner.
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

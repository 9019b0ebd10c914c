"""The whole pipeline as local processes against a real RabbitMQ and PostgreSQL.

    trading-system local up --db-url postgresql+asyncpg://... --bus-url amqp://...[,amqp://...]

starts, each as its own process on its own loopback address (port 8080):

* the matching pair ``matching-<n>`` (127.1.x.x) and the execution pair
  ``execution-<n>`` (127.2.x.x), each elected and failed over by a ``PairSupervisor``
  (the operator's policy, ``trading_system.ha``);
* ``--coordinators`` coordinator replicas ``coordinator-<n>`` (127.3.x.x), kept at that
  count by a ``ReplicaSupervisor``; they also run settlement.

Everything lives under ``--dir``: member logs, pids, the pairs' state files, the routes
(``routes.json``: which execution member takes client orders) and the tokens. ``up``
runs in the foreground until Ctrl-C; a second ``up`` on the same directory adopts the
members that are still running (so killing the launcher is itself a chaos scenario).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trading_system.bus.config import parse_urls
from trading_system.common.logging import configure_service_logging
from trading_system.demo.run import INSTRUMENTS, SPECS
from trading_system.ha import FailoverPolicy, Health
from trading_system.local.files import write_atomically
from trading_system.local.members import MemberCommand, MemberRegistry, Placement
from trading_system.local.replicas import ReplicaSpec, ReplicaSupervisor
from trading_system.local.supervisor import PairSpec, PairSupervisor, Routes

log = logging.getLogger(__name__)

MATCHING, EXECUTION, COORDINATOR = "matching", "execution", "coordinator"
ENGINE_ID = "venue"


@dataclass
class LocalConfig:
    directory: Path
    db_url: str
    bus_urls: tuple[str, ...]
    coordinators: int = 3
    namespace: str = ""
    policy: FailoverPolicy = field(
        default_factory=lambda: FailoverPolicy(failure_threshold=3, cooldown_seconds=10)
    )
    probe_period: float = 1.0
    probe_timeout: float = 1.0
    python: str = sys.executable
    # Where members run; None is this host's network (see members.Placement).
    placement: Placement | None = None


def _base(config: LocalConfig, service: str) -> list[str]:
    return [config.python, "-m", "trading_system.cli", service, "serve", "--namespace", config.namespace]


def _connections(config: LocalConfig, host: str, port: int) -> list[str]:
    return [
        "--db-url",
        config.db_url,
        "--bus-url",
        ",".join(config.bus_urls),
        "--host",
        host,
        "--port",
        str(port),
    ]


def _symbols() -> list[str]:
    argv: list[str] = []
    for s in SPECS:
        argv += ["--symbol", f"{s.symbol}:{s.tick_size}:{s.lot_size}:{s.band_bps}:{s.reference_price}"]
    return argv


def matching_command(config: LocalConfig) -> MemberCommand:
    def command(name: str, host: str, port: int) -> list[str]:
        argv = [*_base(config, MATCHING), "--engine-id", ENGINE_ID, "--holder", name]
        return argv + _connections(config, host, port) + _symbols()

    return command


def execution_command(config: LocalConfig) -> MemberCommand:
    def command(name: str, host: str, port: int) -> list[str]:
        return [*_base(config, EXECUTION), "--holder", name, *_connections(config, host, port), *_symbols()]

    return command


def coordinator_command(config: LocalConfig) -> MemberCommand:
    def command(name: str, host: str, port: int) -> list[str]:
        argv = [*_base(config, COORDINATOR), "--replica", name, *_connections(config, host, port)]
        for i in INSTRUMENTS.values():
            argv += ["--instrument", f"{i.symbol}:{i.base_asset}:{i.quote_asset}"]
        return argv

    return command


def load_tokens(directory: Path) -> dict[str, str]:
    """The pipeline's API and admin tokens, generated once per directory (mode 0600)."""
    path = directory / "tokens.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    tokens = {"api": secrets.token_urlsafe(24), "admin": secrets.token_urlsafe(24)}
    write_atomically(path, json.dumps(tokens))
    path.chmod(0o600)
    return tokens


class LocalPipeline:
    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        config.directory.mkdir(parents=True, exist_ok=True)
        self.tokens = load_tokens(config.directory)
        env = {
            **os.environ,
            "TRADING_SYSTEM_API_TOKEN": self.tokens["api"],
            "TRADING_SYSTEM_ADMIN_TOKEN": self.tokens["admin"],
            "TRADING_SYSTEM_MESSAGE_BUS_MODE": "rabbitmq",
        }
        self.registry = MemberRegistry(config.directory, env, config.placement)
        self.pairs = [
            self._supervisor(MATCHING, 0, matching_command(config)),
            self._supervisor(EXECUTION, 1, execution_command(config)),
        ]
        self.coordinators = ReplicaSupervisor(
            ReplicaSpec(COORDINATOR, 2, config.coordinators, coordinator_command(config)), self.registry
        )
        self.routes = Routes(config.directory / "routes.json")

    def _supervisor(self, prefix: str, slot: int, command: MemberCommand) -> PairSupervisor:
        c = self.config
        spec = PairSpec(prefix, slot, command, c.policy, c.probe_period, c.probe_timeout)
        return PairSupervisor(spec, c.directory, self.registry, self.tokens["admin"])

    def pair(self, prefix: str) -> PairSupervisor:
        return next(p for p in self.pairs if p.pair == prefix)

    def healthy(self) -> bool:
        return (
            all(p.state.health is Health.HEALTHY for p in self.pairs)
            and len(self.coordinators.members) == self.config.coordinators
        )

    def execution_url(self) -> str | None:
        entry = self.routes.read().get(EXECUTION)
        return None if entry is None else str(entry["url"])

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(p.run(stop)) for p in self.pairs]
        tasks.append(asyncio.create_task(self.coordinators.run(stop)))
        await asyncio.gather(*tasks)

    def stop_members(self) -> None:
        for pair in self.pairs:
            pair.stop_members()
        self.coordinators.stop_members()

    def status(self) -> dict[str, Any]:
        return {
            "pairs": {
                p.pair: {
                    "active": p.state.active,
                    "standby": p.state.standby,
                    "epoch": p.state.epoch,
                    "health": p.state.health.value,
                    "message": p.state.message,
                }
                for p in self.pairs
            },
            "coordinators": sorted(self.coordinators.members),
            "routes": self.routes.read(),
        }


# -- command line ----------------------------------------------------------------------


def add_local_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "local", help="run the pipeline as local processes (real RabbitMQ and PostgreSQL)"
    )
    sub = p.add_subparsers(dest="local_command", required=True)
    up = sub.add_parser("up", help="start (or adopt) every member and supervise them until Ctrl-C")
    up.add_argument("--dir", type=Path, default=Path(".local-pipeline"), help="state, logs and tokens")
    up.add_argument("--db-url", default=os.environ.get("TRADING_SYSTEM_DATABASE_URL"))
    up.add_argument("--bus-url", default=os.environ.get("TRADING_SYSTEM_RABBITMQ_URL", ""))
    up.add_argument("--coordinators", type=int, default=3)
    up.add_argument("--namespace", default="")
    up.add_argument("--failure-threshold", type=int, default=3)
    up.add_argument("--probe-period", type=float, default=1.0)
    up.add_argument("--keep", action="store_true", help="leave the members running on exit")
    up.set_defaults(func=run_up)
    return p


def config_from_args(args: argparse.Namespace) -> LocalConfig:
    if not args.db_url or not args.bus_url:
        raise SystemExit("local up needs --db-url and --bus-url (or their TRADING_SYSTEM_* variables)")
    return LocalConfig(
        directory=args.dir.resolve(),
        db_url=args.db_url,
        bus_urls=parse_urls(args.bus_url),
        coordinators=args.coordinators,
        namespace=args.namespace,
        policy=FailoverPolicy(failure_threshold=args.failure_threshold, cooldown_seconds=10),
        probe_period=args.probe_period,
        probe_timeout=min(1.0, args.probe_period),
    )


def run_up(args: argparse.Namespace) -> int:
    configure_service_logging("local")
    pipeline = LocalPipeline(config_from_args(args))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reporter = asyncio.create_task(_report(pipeline, stop))
        await pipeline.run(stop)
        await reporter

    try:
        asyncio.run(main())
    finally:
        if not args.keep:
            pipeline.stop_members()
    return 0


async def _report(pipeline: LocalPipeline, stop: asyncio.Event) -> None:
    last = ""
    while not stop.is_set():
        text = json.dumps(pipeline.status(), indent=2, sort_keys=True)
        if text != last:
            print(text, flush=True)
            last = text
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trading-system")
    add_local_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

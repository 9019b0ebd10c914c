"""What a deployed service learns from its environment: the contract with the operator.

The operator (and the chart) give every pipeline container the same variables (see
docs/operator.md): ``TRADING_SYSTEM_DATABASE_URL``, ``TRADING_SYSTEM_RABBITMQ_URL``
(comma-separated nodes allowed), ``TRADING_SYSTEM_POD_NAME``, ``TRADING_SYSTEM_POD_IP``,
``TRADING_SYSTEM_HTTP_PORT``, ``TRADING_SYSTEM_INSTANCE`` and ``TRADING_SYSTEM_CONFIG``
(the path of the pipeline's JSON config: symbols, failover settings), and optionally
``TRADING_SYSTEM_STARTUP_TIMEOUT`` (see ``common.startup``). Tokens are read by
``common.auth`` and never become flags (they would show in the process list). Every
``serve`` command takes these as flag defaults, so the same command runs in a pod with
no flags and on a laptop with explicit ones.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATABASE_URL = "TRADING_SYSTEM_DATABASE_URL"
RABBITMQ_URL = "TRADING_SYSTEM_RABBITMQ_URL"
POD_NAME = "TRADING_SYSTEM_POD_NAME"
POD_IP = "TRADING_SYSTEM_POD_IP"
HTTP_PORT = "TRADING_SYSTEM_HTTP_PORT"
INSTANCE = "TRADING_SYSTEM_INSTANCE"
CONFIG = "TRADING_SYSTEM_CONFIG"
STARTUP_TIMEOUT = "TRADING_SYSTEM_STARTUP_TIMEOUT"
DEFAULT_HTTP_PORT = 8080


class ConfigError(ValueError):
    """The pipeline config file is missing, unreadable or malformed."""


@dataclass(frozen=True, slots=True)
class ServiceEnvironment:
    database_url: str | None
    rabbitmq_url: str
    member_name: str
    http_host: str
    http_port: int
    instance: str | None
    config_path: str | None
    # Kept as text: argparse converts (and refuses) it only for the commands that use it.
    startup_timeout: str = "0"

    @classmethod
    def read(cls, environ: Mapping[str, str] = os.environ) -> ServiceEnvironment:
        port = environ.get(HTTP_PORT, "")
        return cls(
            database_url=environ.get(DATABASE_URL) or None,
            rabbitmq_url=environ.get(RABBITMQ_URL, ""),
            member_name=environ.get(POD_NAME) or socket.gethostname(),
            # A pod's own address rather than 0.0.0.0, so a member answers only where the
            # operator dials it (and locally, each member can own a loopback address).
            http_host=environ.get(POD_IP) or "0.0.0.0",
            http_port=int(port) if port.isdigit() else DEFAULT_HTTP_PORT,
            instance=environ.get(INSTANCE) or None,
            config_path=environ.get(CONFIG) or None,
            startup_timeout=environ.get(STARTUP_TIMEOUT, "").strip() or "0",
        )

    def pipeline_config(self) -> dict[str, Any]:
        """The JSON config the operator mounts; {} when none is configured."""
        if self.config_path is None:
            return {}
        try:
            data = json.loads(Path(self.config_path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read pipeline config {self.config_path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"pipeline config {self.config_path} is not a JSON object")
        return data


def seconds(text: str) -> float:
    """An argparse type: a non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def add_store_flags(parser: argparse.ArgumentParser, env: ServiceEnvironment) -> None:
    """``--db-url`` and ``--bus-url``, defaulting to ``env`` (also for operators' tools)."""
    parser.add_argument("--db-url", default=env.database_url, help=f"default ${DATABASE_URL}")
    parser.add_argument(
        "--bus-url",
        default=env.rabbitmq_url,
        help=f"amqp://... (comma-separated nodes); default ${RABBITMQ_URL}",
    )


def add_connection_flags(parser: argparse.ArgumentParser, env: ServiceEnvironment) -> None:
    """The store flags plus ``--bus-mode``, ``--host``, ``--port``, defaulting to ``env``."""
    add_store_flags(parser, env)
    parser.add_argument("--bus-mode", default=None, help="rabbitmq | in_memory | auto (default: environment)")
    parser.add_argument("--host", default=env.http_host, help=f"HTTP address (default ${POD_IP} or 0.0.0.0)")
    parser.add_argument(
        "--port", type=int, default=env.http_port, help=f"HTTP port (default ${HTTP_PORT} or 8080)"
    )
    parser.add_argument(
        "--startup-timeout",
        type=seconds,
        default=env.startup_timeout,
        metavar="SECONDS",
        help="how long to wait for PostgreSQL and RabbitMQ to accept the first connection; "
        f"0 waits indefinitely (default ${STARTUP_TIMEOUT} or 0: in a pod, giving up would "
        "only get the process restarted)",
    )

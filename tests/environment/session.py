"""Start, describe and re-attach to the test environment's components.

The state file lets pytest reuse components that ``python -m tests.environment up`` started
(fast iteration while debugging); without it every test session starts its own.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tests.environment.kubernetes import ControlPlane, tools_bin_dir
from tests.environment.postgres import PostgresServer
from tests.environment.processes import free_port_block
from tests.environment.rabbitmq import RabbitMQCluster

STATE_ENV = "TS_TESTENV_STATE"


def default_base_dir() -> Path:
    base = Path(tempfile.mkdtemp(prefix="ts-testenv-"))
    # PostgreSQL runs as its own system user and must be able to reach its data dir.
    base.chmod(0o755)
    return base


def new_rabbitmq(base: Path, size: int = 3) -> RabbitMQCluster:
    amqp = 35672
    # The distribution ports sit 100 above the AMQP ports; both ranges must be free.
    while True:
        amqp = free_port_block(size, amqp)
        if free_port_block(size, amqp + 100) == amqp + 100:
            break
        amqp += 10
    return RabbitMQCluster(
        base / "rabbitmq", size=size, amqp_base_port=amqp, epmd_port=free_port_block(1, 34369)
    )


def new_postgres(base: Path) -> PostgresServer:
    return PostgresServer(base / "postgres", port=free_port_block(1, 35432))


def new_control_plane(base: Path) -> ControlPlane:
    return ControlPlane(base / "kubernetes", bin_dir=tools_bin_dir())


def load_state() -> dict[str, Any] | None:
    path = os.environ.get(STATE_ENV)
    if not path:
        return None
    return dict(json.loads(Path(path).read_text()))


def attach_rabbitmq(state: dict[str, Any]) -> RabbitMQCluster:
    s = state["rabbitmq"]
    return RabbitMQCluster(
        Path(s["base_dir"]), size=s["size"], amqp_base_port=s["amqp_base_port"], epmd_port=s["epmd_port"]
    )


def attach_postgres(state: dict[str, Any]) -> PostgresServer:
    s = state["postgres"]
    return PostgresServer(Path(s["base_dir"]), port=s["port"])


def attach_control_plane(state: dict[str, Any]) -> ControlPlane:
    s = state["kubernetes"]
    plane = ControlPlane(Path(s["base_dir"]), bin_dir=Path(s["bin_dir"]))
    plane.apiserver_port = s["apiserver_port"]
    return plane


def state_of(
    rabbit: RabbitMQCluster | None, pg: PostgresServer | None, plane: ControlPlane | None
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if rabbit:
        state["rabbitmq"] = {
            "base_dir": str(rabbit.base_dir),
            "size": rabbit.size,
            "amqp_base_port": rabbit.amqp_base_port,
            "epmd_port": rabbit.epmd_port,
            "urls": rabbit.urls,
        }
    if pg:
        state["postgres"] = {"base_dir": str(pg.base_dir), "port": pg.port, "admin_dsn": pg.admin_dsn}
    if plane:
        state["kubernetes"] = {
            "base_dir": str(plane.base_dir),
            "bin_dir": str(plane.bin_dir),
            "apiserver_port": plane.apiserver_port,
            "kubeconfig": str(plane.kubeconfig),
        }
    return state

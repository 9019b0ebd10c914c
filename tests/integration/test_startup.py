"""Real PostgreSQL and RabbitMQ: a service started before its dependencies listen waits
for them (alive, not ready) and starts once they do; a configuration error exits at once.

"Coming up" is a TCP relay opened, mid-test, on a port where nothing listened before and
relaying to the real server: the shared servers are never stopped, and what the service
sees is exactly a dependency that starts accepting connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tenacity
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import make_url
from yarl import URL

from tests.environment.processes import free_port_block
from tests.environment.rabbitmq import RabbitMQCluster
from tests.environment.relay import relay
from trading_system.bus.config import BusMode, BusSettings
from trading_system.bus.facade import MessageBus
from trading_system.common.startup import (
    StartupProgress,
    service_dependencies,
    wait_for_dependencies,
)
from trading_system.storage import create_engine

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BOUND = 60.0  # seconds any awaited condition may take before the test fails
POLL = 0.05


@contextlib.asynccontextmanager
async def listening(port: int, target: str) -> AsyncIterator[None]:
    """From now on, 127.0.0.1:``port`` accepts connections, relayed to ``target`` (host:port)."""
    host, _, target_port = target.rpartition(":")
    live: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await relay(reader, writer, host, int(target_port), live)

    server = await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True)
    try:
        yield
    finally:
        server.close()
        for writer in list(live):
            writer.transport.abort()
        await server.wait_closed()


async def eventually(condition: Callable[[], Awaitable[bool]], what: str, bound: float = BOUND) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"not within {bound} s: {what}")
        await asyncio.sleep(POLL)


async def http_get(port: int, path: str) -> tuple[int, dict[str, Any]] | None:
    """(status, JSON body), or None when nothing answers on the port."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
            http.get(f"http://127.0.0.1:{port}{path}") as response,
        ):
            return response.status, await response.json()
    except (aiohttp.ClientError, TimeoutError):
        return None


def free_ports(count: int) -> list[int]:
    # Below the usual ephemeral range (32768+ is Linux's, but tests/environment uses 34k-36k).
    first = free_port_block(count, 41000 + os.getpid() % 800 * 10)
    return list(range(first, first + count))


def node_address(url: str) -> str:
    parsed = URL(url)
    return f"{parsed.host}:{parsed.port}"


async def test_the_connect_step_waits_until_both_listen_then_connects(
    postgres_dsn: str, rabbitmq_cluster: RabbitMQCluster
) -> None:
    db_port, mq_port, http_port = free_ports(3)
    real_db = make_url(postgres_dsn)
    engine = create_engine(real_db.set(port=db_port))
    bus = MessageBus(
        BusSettings(
            mode=BusMode.RABBITMQ,
            urls=(str(URL(rabbitmq_cluster.urls[0]).with_port(mq_port)),),
            service="startup-test",
            depth_poll_interval=0,
        ),
        metrics_registry=CollectorRegistry(),
    )
    progress = StartupProgress()
    waiting = asyncio.create_task(
        wait_for_dependencies(
            service_dependencies(engine, bus),
            wait=tenacity.wait_random_exponential(multiplier=0.05, max=0.2),
            http=("127.0.0.1", http_port),
            progress=progress,
        )
    )
    try:

        async def both_refused_twice() -> bool:
            states = progress.states.values()
            return len(states) == 2 and all(s.attempts >= 2 for s in states)

        await eventually(both_refused_twice, "both dependencies tried more than once")
        healthz = await http_get(http_port, "/healthz")
        assert healthz is not None and healthz[0] == 200 and healthz[1]["alive"] is True
        status, body = await http_get(http_port, "/readyz") or (0, {})
        assert status == 503 and body["starting"] is True
        assert "ConnectionRefusedError" in body["dependencies"]["PostgreSQL"]["last_error"]
        assert "AMQPConnectionError" in body["dependencies"]["RabbitMQ"]["last_error"]

        async with listening(db_port, f"{real_db.host}:{real_db.port}"):

            async def database_connected() -> bool:
                return progress.states["PostgreSQL"].connected

            await eventually(database_connected, "PostgreSQL connected once it listened")
            assert not waiting.done() and not progress.states["RabbitMQ"].connected

            async with listening(mq_port, node_address(rabbitmq_cluster.urls[0])):
                await asyncio.wait_for(asyncio.shield(waiting), BOUND)
                # The service's own connect now works through the same addresses.
                await bus.start()
                await bus.close()
        assert await http_get(http_port, "/healthz") is None  # the wait's server is gone
    finally:
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await engine.dispose()


def serve(component: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
    """``trading-system <component> serve ...`` (the pods' command) as a process."""
    command = [sys.executable, "-m", "trading_system.cli", component, "serve", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "services")}
    env.pop("TRADING_SYSTEM_STARTUP_TIMEOUT", None)
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)


async def exit_code(proc: subprocess.Popen[bytes], bound: float = BOUND) -> int:
    async def exited() -> bool:
        return proc.poll() is not None

    await eventually(exited, f"{proc.args!r} exits", bound)
    assert proc.returncode is not None
    return proc.returncode


def connection_args(db_url: str, bus_url: str, http_port: int) -> list[str]:
    """What every ``serve`` takes to reach its dependencies and serve HTTP."""
    dependencies = ["--db-url", db_url, "--bus-mode", "rabbitmq", "--bus-url", bus_url]
    return [*dependencies, "--host", "127.0.0.1", "--port", str(http_port)]


def nothing_listens(db_port: int, mq_port: int, http_port: int) -> list[str]:
    db_url, bus_url = (
        f"postgresql+asyncpg://ts@127.0.0.1:{db_port}/ts",
        f"amqp://guest:guest@127.0.0.1:{mq_port}/",
    )
    return connection_args(db_url, bus_url, http_port)


def matching_args(db_url: str, bus_url: str, http_port: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [
        "--engine-id",
        f"startup-{tag}",
        "--namespace",
        f"startup{tag}",
        "--no-orders",
        *connection_args(db_url, bus_url, http_port),
        "--symbol",
        "BTC-USD:1:1",
    ]


async def test_matching_serve_started_before_its_dependencies_waits_then_serves(
    postgres_dsn: str, rabbitmq_cluster: RabbitMQCluster, tmp_path: Path
) -> None:
    db_port, mq_port, http_port = free_ports(3)
    real_db = make_url(postgres_dsn)
    db_url = real_db.set(port=db_port).render_as_string(hide_password=False)
    bus_url = str(URL(rabbitmq_cluster.urls[0]).with_port(mq_port))
    log = tmp_path / "matching.log"
    proc = serve("matching", *matching_args(db_url, bus_url, http_port), log=log)
    try:

        async def waiting_and_not_ready() -> bool:
            answer = await http_get(http_port, "/readyz")
            return answer is not None and answer[0] == 503 and bool(answer[1].get("starting"))

        await eventually(waiting_and_not_ready, "the waiting process reports not ready")
        assert proc.poll() is None
        healthz = await http_get(http_port, "/healthz")
        assert healthz is not None and healthz[0] == 200  # liveness does not fail while waiting

        async with (
            listening(db_port, f"{real_db.host}:{real_db.port}"),
            listening(mq_port, node_address(rabbitmq_cluster.urls[0])),
        ):

            async def serving() -> bool:
                answer = await http_get(http_port, "/readyz")
                ready = answer is not None and answer[0] == 200 and answer[1].get("role") == "standby"
                return ready or proc.poll() is not None

            await eventually(serving, "the matching member is ready once its dependencies listen")
            assert proc.poll() is None, log.read_text()[-3000:]
            proc.send_signal(signal.SIGTERM)
            assert await exit_code(proc) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "PostgreSQL at postgresql+asyncpg://" in text and "not reachable yet (attempt 1:" in text
    assert "RabbitMQ at amqp://guest@127.0.0.1:" in text and "next retry in" in text
    assert "reachable after" in text
    assert "error when creating transport" not in text  # aiormq's per-attempt noise is muted


async def test_wrong_broker_password_fails_fast(
    postgres_dsn: str, rabbitmq_cluster: RabbitMQCluster, tmp_path: Path
) -> None:
    wrong = str(URL(rabbitmq_cluster.urls[0]).with_password("not-the-password"))
    (http_port,) = free_ports(1)
    log = tmp_path / "matching.log"
    proc = serve("matching", *matching_args(postgres_dsn, wrong, http_port), log=log)
    assert await exit_code(proc, bound=30) == 1
    text = log.read_text()
    assert "matching serve: RabbitMQ at amqp://guest@" in text and "refused the connection" in text
    assert "ACCESS_REFUSED" in text and "not-the-password" not in text


@pytest.mark.parametrize(
    ("database", "role", "expected"),
    [
        ("no_such_database", None, 'database "no_such_database" does not exist'),
        (None, "no_such_role", 'role "no_such_role" does not exist'),
    ],
)
async def test_unknown_database_or_role_fails_fast(
    postgres_dsn: str, tmp_path: Path, database: str | None, role: str | None, expected: str
) -> None:
    real = make_url(postgres_dsn)
    wrong = real.set(database=database or real.database, username=role or real.username)
    mq_port, http_port = free_ports(2)
    log = tmp_path / "execution.log"
    # Nothing listens at the broker's port: the refusal ends the wait even while it is down.
    broker = f"amqp://guest:guest@127.0.0.1:{mq_port}/"
    args = connection_args(wrong.render_as_string(hide_password=False), broker, http_port)
    proc = serve("execution", *args, log=log)
    assert await exit_code(proc, bound=30) == 1
    text = log.read_text()
    assert "execution serve: PostgreSQL at" in text and "refused the connection" in text
    assert expected in text


async def test_malformed_url_fails_fast(tmp_path: Path) -> None:
    log = tmp_path / "coordinator.log"
    args = ["--db-url", "postgresql+asyncpg://ts@db:not-a-port/ts", "--bus-mode", "rabbitmq"]
    proc = serve("coordinator", *args, "--bus-url", "amqp://guest:guest@127.0.0.1:1/", log=log)
    assert await exit_code(proc, bound=30) == 1
    assert "coordinator serve: bad configuration" in log.read_text()


async def test_startup_timeout_gives_up_with_the_reason(tmp_path: Path) -> None:
    db_port, mq_port, http_port = free_ports(3)
    log = tmp_path / "execution.log"
    args = [*nothing_listens(db_port, mq_port, http_port), "--startup-timeout", "1.5"]
    proc = serve("execution", *args, log=log)
    assert await exit_code(proc, bound=30) == 1
    text = log.read_text()
    assert "execution serve: still waiting after 1.5 s (the startup timeout) for PostgreSQL" in text
    assert "RabbitMQ at amqp://guest@127.0.0.1:" in text


async def test_sigterm_while_waiting_exits_cleanly(tmp_path: Path) -> None:
    db_port, mq_port, http_port = free_ports(3)
    log = tmp_path / "coordinator.log"
    args = nothing_listens(db_port, mq_port, http_port)
    proc = serve("coordinator", *args, log=log)
    try:

        async def answering() -> bool:
            return await http_get(http_port, "/healthz") is not None or proc.poll() is not None

        await eventually(answering, "the waiting coordinator answers /healthz")
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert await exit_code(proc) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopped while waiting for dependencies" in log.read_text()

"""Real RabbitMQ + PostgreSQL: the active process is killed with SIGKILL under load and
the standby is promoted; no command is lost, the book equals the journal's, and no
(epoch, seq) is published twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from tests.environment.processes import free_port_block
from tests.environment.rabbitmq import RabbitMQCluster
from tests.integration.matching_support import matching_client, subscribe_event_sink
from tests.unit.matching_service.helpers import SPECS, command_stream, eventually, replay_digest, take
from trading_system.bus.facade import MessageBus
from trading_system.matching.service import Journal, Role, command_to_dict
from trading_system.matching.service.app import MatchingConfig, MatchingService
from trading_system.matching.service.messages import MatchingCommand
from trading_system.storage import create_engine

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]


@pytest_asyncio.fixture(loop_scope="function")
async def client_bus(rabbitmq: RabbitMQCluster) -> AsyncIterator[MessageBus]:
    async with matching_client(rabbitmq.urls) as bus:
        yield bus


def spawn_active(engine_id: str, dsn: str, urls: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "trading_system.matching.service.cli",
        "matching",
        "serve",
        "--no-orders",
        "--engine-id",
        engine_id,
        "--db-url",
        dsn,
        "--bus-mode",
        "rabbitmq",
        "--role",
        "active",
        "--epoch",
        "1",
        "--holder",
        "proc-a",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--batch-size",
        "32",
        "--snapshot-every",
        "500",
    ]
    args += ["--bus-url", ",".join(urls)]
    for spec in SPECS:
        args += ["--symbol", f"{spec.symbol}:{spec.tick_size}:{spec.lot_size}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "services")}
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)


async def consuming(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as resp:
            body: dict[str, Any] = await resp.json()
            return resp.status == 200 and bool(body.get("consuming"))
    except aiohttp.ClientError:
        return False


def warm_standby(engine_id: str, postgres_dsn: str, urls: list[str]) -> MatchingService:
    return MatchingService(
        MatchingConfig(
            engine_id=engine_id,
            db_url=postgres_dsn,
            role=Role.STANDBY,
            bus_mode="rabbitmq",
            bus_urls=tuple(urls),
            http_host="127.0.0.1",
            http_port=0,
            holder="proc-b",
            specs=SPECS,
            batch_size=32,
            tail_interval=0.02,
        ),
        registry=CollectorRegistry(),
    )


async def wait_consuming(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    for _ in range(3000):  # bounded: the process needs a few seconds to start
        if await consuming(port) or proc.poll() is not None:
            break
        await asyncio.sleep(0.02)
    assert proc.poll() is None and await consuming(port), _log_tail(log)


def _log_tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def test_kill9_active_then_promote_standby(
    rabbitmq: RabbitMQCluster, postgres_dsn: str, client_bus: MessageBus, tmp_path: Path
) -> None:
    engine_id = f"k9{uuid.uuid4().hex[:6]}"
    total = 3000
    seen = await subscribe_event_sink(client_bus, engine_id)

    port = free_port_block(1, 41000)
    proc = spawn_active(engine_id, postgres_dsn, rabbitmq.urls, port, tmp_path / "active.log")
    standby = warm_standby(engine_id, postgres_dsn, rabbitmq.urls)
    try:
        await standby.start()
        await wait_consuming(proc, port, tmp_path / "active.log")

        stream = command_stream(seed=42, prefix=f"{engine_id}-")
        commands = take(stream, total)
        rk = f"matching.command.{engine_id}"

        async def produce() -> None:
            for i in range(0, total, 100):
                await client_bus.publish_many(
                    [
                        MatchingCommand(engine_id=engine_id, command=command_to_dict(c))
                        for c in commands[i : i + 100]
                    ],
                    routing_key=rk,
                )

        producer = asyncio.create_task(produce())
        await eventually(lambda: standby.runner.applied_seq >= 800, within=60)  # the active is working
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        await standby.runner.promote(2)
        await asyncio.wait_for(producer, 60)
        await eventually(lambda: standby.runner.applied_seq >= total, within=120)
        await eventually(lambda: {s for _, s in seen} >= set(range(1, total + 1)), within=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        await standby.stop()

    db = create_engine(postgres_dsn)
    try:
        journal = Journal(db, engine_id)
        assert await journal.head() == total  # every command journaled exactly once
        entries = [e async for page in journal.iterate() for e in page]
        assert {e.command_id for e in entries} == {str(c.cmd_id) for c in commands}
        epochs = [e.epoch for e in entries]
        assert epochs == sorted(epochs) and set(epochs) == {1, 2}  # both members journaled
        digest, _ = await replay_digest(journal)
    finally:
        await db.dispose()
    assert standby.runner.engine.digest() == digest
    assert len(seen) == len(set(seen)), "an (epoch, seq) was published twice"
    assert {e for e, _ in seen} <= {1, 2}


async def test_paused_old_active_cannot_write_after_promotion(
    rabbitmq: RabbitMQCluster, postgres_dsn: str, client_bus: MessageBus, tmp_path: Path
) -> None:
    """SIGSTOP the active under load, promote the standby, SIGCONT the old one: it fences
    itself; nothing it does after the promotion reaches the journal or the events."""
    engine_id = f"ss{uuid.uuid4().hex[:6]}"
    total = 1500
    seen = await subscribe_event_sink(client_bus, engine_id)
    port = free_port_block(1, 42000)
    proc = spawn_active(engine_id, postgres_dsn, rabbitmq.urls, port, tmp_path / "active.log")
    standby = warm_standby(engine_id, postgres_dsn, rabbitmq.urls)
    db = create_engine(postgres_dsn)
    try:
        await standby.start()
        await wait_consuming(proc, port, tmp_path / "active.log")
        commands = take(command_stream(seed=43, prefix=f"{engine_id}-"), total)

        async def produce() -> None:
            for i in range(0, total, 50):
                await client_bus.publish_many(
                    [
                        MatchingCommand(engine_id=engine_id, command=command_to_dict(c))
                        for c in commands[i : i + 50]
                    ],
                    routing_key=f"matching.command.{engine_id}",
                )

        producer = asyncio.create_task(produce())
        await eventually(lambda: standby.runner.applied_seq >= 300, within=60)
        proc.send_signal(signal.SIGSTOP)
        await standby.runner.promote(2)
        head_at_promotion = standby.runner.applied_seq
        proc.send_signal(signal.SIGCONT)
        # The resumed process learns from the fence row that it lost its role, then lets
        # go of the queue (its consumer is cancelled a moment after the role changes).
        body: dict[str, Any] = {}
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                body = await resp.json()
            if body["role"] != "active" and body["consuming"] is False:
                break
            await asyncio.sleep(0.02)
        assert body["role"] == "fenced" and body["consuming"] is False, body
        await asyncio.wait_for(producer, 60)
        # The broker hands the queue to the new active once the old consumer let go.
        await eventually(lambda: standby.runner.applied_seq >= total, within=120)
        await eventually(lambda: {s for _, s in seen} >= set(range(1, total + 1)), within=60)
        journal = Journal(db, engine_id)
        entries = [e async for page in journal.iterate() for e in page]
        assert len(entries) == total
        assert {e.command_id for e in entries} == {str(c.cmd_id) for c in commands}
        assert all(e.epoch == 2 for e in entries if e.seq > head_at_promotion)
        assert not [k for k in seen if k[0] == 1 and k[1] > head_at_promotion], (
            "old epoch published after fence"
        )
        assert len(seen) == len(set(seen))
        digest, _ = await replay_digest(journal)
        assert standby.runner.engine.digest() == digest
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=10)
        await standby.stop()
        await db.dispose()

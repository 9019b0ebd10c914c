"""The local supervisor runs a real matching pair and fails it over under load.

Members are ``trading-system matching serve`` processes on their own loopback
addresses, against the real RabbitMQ cluster and PostgreSQL; the supervisor is the
operator's failover policy (``trading_system.ha``) executed on processes.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.environment.rabbitmq import RabbitMQCluster
from tests.integration.matching_support import matching_client, subscribe_event_sink
from tests.unit.bus.support import eventually
from tests.unit.matching_service.helpers import SPECS, command_stream, replay, take
from trading_system.bus.facade import MessageBus
from trading_system.ha import FailoverPolicy, Health, Phase, PromoteMember
from trading_system.local.members import MemberRegistry
from trading_system.local.supervisor import PairSpec, PairSupervisor
from trading_system.matching.service import Journal, command_to_dict
from trading_system.matching.service.messages import MatchingCommand
from trading_system.storage import create_engine

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
ROOT = Path(__file__).resolve().parents[3]
TOKEN = "supervisor-test-admin"


@dataclass
class Pipeline:
    engine_id: str
    directory: Path
    registry: MemberRegistry
    spec: PairSpec
    bus: MessageBus
    seen: list[tuple[int, int]]

    def supervisor(self) -> PairSupervisor:
        return PairSupervisor(self.spec, self.directory, self.registry, TOKEN)


def matching_command(engine_id: str, dsn: str, urls: Sequence[str]):  # type: ignore[no-untyped-def]
    def command(name: str, host: str, port: int) -> list[str]:
        argv = [sys.executable, "-m", "trading_system.cli", "matching", "serve", "--no-orders"]
        argv += ["--engine-id", engine_id]
        argv += ["--db-url", dsn, "--bus-url", ",".join(urls), "--host", host, "--port", str(port)]
        argv += ["--holder", name, "--batch-size", "32", "--snapshot-every", "500"]
        for spec in SPECS:
            argv += ["--symbol", f"{spec.symbol}:{spec.tick_size}:{spec.lot_size}"]
        return argv

    return command


@pytest_asyncio.fixture(loop_scope="function")
async def pipeline(rabbitmq: RabbitMQCluster, postgres_dsn: str, tmp_path: Path) -> AsyncIterator[Pipeline]:
    engine_id = f"sup{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "TRADING_SYSTEM_ADMIN_TOKEN": TOKEN, "PYTHONPATH": str(ROOT / "services")}
    registry = MemberRegistry(tmp_path / "local", env)
    spec = PairSpec(
        prefix="m",
        slot=random.randrange(10, 200),  # away from other tests' members still in TIME_WAIT
        command=matching_command(engine_id, postgres_dsn, rabbitmq.urls),
        policy=FailoverPolicy(failure_threshold=2, cooldown_seconds=0, promote_timeout_seconds=30),
        probe_period=0.5,
        probe_timeout=0.5,
    )
    async with matching_client(rabbitmq.urls) as bus:
        seen = await subscribe_event_sink(bus, engine_id)
        p = Pipeline(engine_id, tmp_path / "local", registry, spec, bus, seen)
        try:
            yield p
        finally:
            for name in registry.recorded():
                member = registry.adopt(name)
                if member is not None:
                    member.kill()


async def run_until(sup: PairSupervisor, condition, within: float, what: str) -> None:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    task = asyncio.create_task(sup.run(stop))
    try:
        await eventually(condition, within=within, what=what)
    finally:
        stop.set()
        await task


def healthy(sup: PairSupervisor) -> bool:
    s = sup.state
    return s.health is Health.HEALTHY and s.active is not None and s.standby is not None


async def produce(bus: MessageBus, engine_id: str, commands: list[Any]) -> None:
    for i in range(0, len(commands), 25):
        await bus.publish_many(
            [MatchingCommand(engine_id=engine_id, command=command_to_dict(c)) for c in commands[i : i + 25]],
            routing_key=f"matching.command.{engine_id}",
        )
        await asyncio.sleep(0.01)  # a steady flow rather than one burst


async def check_invariants(
    p: Pipeline, sup: PairSupervisor, dsn: str, commands: list[Any], epochs: set[int]
) -> None:
    """Nothing lost, nothing journaled or published twice, and the active's book is the
    book the journal implies."""
    db = create_engine(dsn)
    try:
        journal = Journal(db, p.engine_id)
        await eventually(lambda: _head_is(journal, len(commands)), within=120, what="every command journaled")
        entries = [e async for page in journal.iterate() for e in page]
        assert [e.seq for e in entries] == list(range(1, len(commands) + 1))
        assert {e.command_id for e in entries} == {str(c.cmd_id) for c in commands}
        assert {e.epoch for e in entries} == epochs
        engine, _ = await replay(journal)
    finally:
        await db.dispose()
    wanted = set(range(1, len(commands) + 1))
    await eventually(lambda: {s for _, s in p.seen} >= wanted, within=60, what="an event for every command")
    assert len(p.seen) == len(set(p.seen)), "an (epoch, seq) was published twice"
    active = sup.members[str(sup.state.active)]
    async with aiohttp.ClientSession(f"http://{active.host}:{active.port}") as http:
        for spec in SPECS:
            async with http.get(f"/book/{spec.symbol}", params={"levels": "1000"}) as resp:
                book = await resp.json()
            depth = engine.depth(spec.symbol, 1000)
            assert book["applied_seq"] == len(commands)
            assert (book["bids"], book["asks"]) == (
                [list(x) for x in depth.bids],
                [list(x) for x in depth.asks],
            )


async def _head_is(journal: Journal, n: int) -> bool:
    return await journal.head() == n


async def test_supervisor_elects_then_fails_over_a_killed_active_under_load(
    pipeline: Pipeline, postgres_dsn: str
) -> None:
    sup = pipeline.supervisor()
    await run_until(sup, lambda: healthy(sup), 90, "an elected, healthy pair")
    first_active, first_standby = sup.state.active, sup.state.standby
    assert sup.state.epoch == 1 and (first_active, first_standby) == ("m-0", "m-1")

    commands = take(command_stream(seed=3, prefix=f"{pipeline.engine_id}-"), 1500)
    producer = asyncio.create_task(produce(pipeline.bus, pipeline.engine_id, commands))
    await eventually(lambda: len(pipeline.seen) >= 300, within=60, what="load flowing")
    sup.members[str(first_active)].kill()

    await run_until(sup, lambda: healthy(sup) and sup.state.active == first_standby, 60, "failover")
    await asyncio.wait_for(producer, 60)
    state = sup.state
    assert state.epoch == 2 and state.failover_count >= 1 and state.standby == "m-2"
    record = state.history[-1]
    assert record.target == first_standby and record.epoch == 2 and record.source == first_active
    assert "m-0" not in sup.members and sup.routes.target("m") == first_standby
    await check_invariants(pipeline, sup, postgres_dsn, commands, {1, 2})


async def test_a_supervisor_killed_mid_failover_is_resumed_by_the_next_one(
    pipeline: Pipeline, postgres_dsn: str
) -> None:
    """The first supervisor dies after persisting the raised epoch, before promoting; a new
    one (same directory) adopts the running members and finishes it at that same epoch."""
    sup = pipeline.supervisor()
    await run_until(sup, lambda: healthy(sup), 90, "an elected, healthy pair")
    commands = take(command_stream(seed=4, prefix=f"{pipeline.engine_id}-"), 800)
    producer = asyncio.create_task(produce(pipeline.bus, pipeline.engine_id, commands))
    await eventually(lambda: len(pipeline.seen) >= 200, within=60, what="load flowing")
    sup.members[str(sup.state.active)].signal(signal.SIGSTOP)  # hung, not dead

    async def die_before_promoting(session: object, action: object) -> bool:
        if isinstance(action, PromoteMember):
            raise _Crash
        return await original(session, action)  # type: ignore[arg-type]

    original = sup._execute
    sup._execute = die_before_promoting  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                await sup.round(session)
                await asyncio.sleep(0.2)
    assert sup.state.phase is not Phase.IDLE
    assert sup.state.epoch == 2 and sup.state.active != "m-1"

    successor = pipeline.supervisor()  # reads the state file, adopts the members
    assert successor.state.epoch == 2 and set(successor.members) >= {"m-1"}
    await run_until(successor, lambda: healthy(successor) and successor.state.active == "m-1", 60, "resumed")
    assert successor.state.epoch == 2  # raised exactly once
    await asyncio.wait_for(producer, 60)
    await check_invariants(pipeline, successor, postgres_dsn, commands, {1, 2})


class _Crash(Exception):
    pass

"""The service process on SQLite and the in-memory bus: consume, journal, publish, HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from tests.unit.matching_service.helpers import SPECS, command_stream, eventually, take
from trading_system.bus.config import BusSettings
from trading_system.bus.envelope import Envelope
from trading_system.bus.facade import MessageBus
from trading_system.bus.topology import Binding, Exchange, Topology, WorkQueue
from trading_system.common.service_env import ServiceEnvironment
from trading_system.matching.core import SymbolSpec
from trading_system.matching.service import Role, command_to_dict
from trading_system.matching.service.app import MatchingConfig, MatchingService
from trading_system.matching.service.cli import add_matching_parser, config_from_args
from trading_system.matching.service.messages import MatchingCommand, MatchingEvents

pytestmark = pytest.mark.unit
ADMIN = "admin-secret"


def make_service(tmp_path: Path, role: Role, epoch: int) -> MatchingService:
    config = MatchingConfig(
        engine_id="m1",
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'm.db'}",
        role=role,
        epoch=epoch,
        http_host="127.0.0.1",
        http_port=0,
        holder=f"h-{role}",
        specs=SPECS,
        batch_size=16,
        tail_interval=0.01,
        epoch_check_interval=0.05,
    )
    registry = CollectorRegistry()
    bus = MessageBus(
        BusSettings(mode="in_memory", service="test", depth_poll_interval=0), metrics_registry=registry
    )
    return MatchingService(config, bus=bus, registry=registry)


@pytest_asyncio.fixture(loop_scope="function")
async def active(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MatchingService]:
    monkeypatch.setenv("TRADING_SYSTEM_ADMIN_TOKENS", ADMIN)
    service = make_service(tmp_path, Role.ACTIVE, 1)
    await service.start()
    yield service
    await service.stop()


async def test_commands_flow_through_journal_to_events(active: MatchingService) -> None:
    bus = active.bus
    await bus.declare(
        Topology(
            exchanges=(Exchange("ts.events"),),
            queues=(WorkQueue("events-sink", bindings=(Binding("ts.events", "matching.events.#"),)),),
        )
    )
    got: list[Envelope[Any]] = []

    async def sink(env: Envelope[Any]) -> None:
        got.append(env)

    await bus.subscribe("events-sink", sink)
    await eventually(lambda: active._subscription is not None)
    cmds = take(command_stream(), 40)
    for cmd in [*cmds, *cmds[:5]]:  # the last five are redeliveries: ignored
        await bus.publish(
            MatchingCommand(engine_id="m1", command=command_to_dict(cmd)), routing_key="matching.command.m1"
        )
    await eventually(lambda: active.runner.applied_seq == 40 and len(got) == 40)
    await asyncio.sleep(0.05)
    assert await active.journal.head() == 40
    assert [(e.epoch, e.sequence) for e in got] == [(1, s) for s in range(1, 41)]
    assert all(isinstance(e.payload, MatchingEvents) and e.payload.events for e in got)

    async with aiohttp.ClientSession(f"http://127.0.0.1:{active.http_port}") as http:
        async with http.get("/readyz") as resp:
            body = await resp.json()
            assert resp.status == 200 and body["role"] == "active" and body["epoch"] == 1 and body["lag"] == 0
        async with http.get("/book/BTC-USD") as resp:
            assert resp.status == 200 and (await resp.json())["applied_seq"] == 40
        async with http.get("/book/NOPE") as resp:
            assert resp.status == 404
        async with http.get("/metrics") as resp:
            text = await resp.text()
            assert "ts_matching_commands_total 40.0" in text and "ts_matching_book_depth" in text
        async with http.post("/demote") as resp:
            assert resp.status == 401
        async with http.post("/demote", headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            assert resp.status == 200 and (await resp.json())["role"] == "standby"
        await eventually(lambda: active._subscription is None)
        async with http.post(
            "/promote", json={"epoch": 1}, headers={"Authorization": f"Bearer {ADMIN}"}
        ) as resp:
            assert resp.status == 200 and (await resp.json())["role"] == "active"
        async with http.post("/promote", json={"x": 1}, headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            assert resp.status == 400


async def test_epoch_watch_fences_an_idle_active(active: MatchingService) -> None:
    from trading_system.storage.fencing import raise_epoch

    await eventually(lambda: active._subscription is not None)
    await raise_epoch(active.db, active.journal.pair_name, 2, "someone-else")
    await eventually(lambda: active.runner.role is Role.FENCED and active._subscription is None)
    ready = await active.readiness()
    assert not ready.ready and ready.details["role"] == "fenced"


def test_cli_parser() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_matching_parser(sub, ServiceEnvironment.read({}))
    args = parser.parse_args(
        [
            "matching",
            "serve",
            "--engine-id",
            "m1",
            "--db-url",
            "sqlite+aiosqlite://",
            "--role",
            "active",
            "--epoch",
            "3",
            "--symbol",
            "BTC-USD:5:10",
            "--bus-mode",
            "in_memory",
            "--bus-url",
            "amqp://a/,amqp://b/",
        ]
    )
    config = config_from_args(args)
    assert config.role is Role.ACTIVE and config.epoch == 3 and config.specs[0].tick_size == 5
    assert config.specs[0].lot_size == 10 and callable(args.func)
    assert config.bus_urls == ("amqp://a/", "amqp://b/")


def test_serve_takes_everything_from_the_operators_environment(tmp_path: Path) -> None:
    """In a pod, ``trading-system matching serve`` runs with no flags at all."""
    import argparse
    import json

    config_file = tmp_path / "config.json"
    config_file.write_text(
        json.dumps(
            {"symbols": [{"name": "BTC-USD", "tickSize": "0.05", "lotSize": "0.001", "priceBandPercent": 5}]}
        )
    )
    env = ServiceEnvironment.read(
        {
            "TRADING_SYSTEM_INSTANCE": "prod",
            "TRADING_SYSTEM_DATABASE_URL": "postgresql+asyncpg://db/x",
            "TRADING_SYSTEM_RABBITMQ_URL": "amqp://r1/,amqp://r2/",
            "TRADING_SYSTEM_POD_NAME": "prod-matching-3",
            "TRADING_SYSTEM_POD_IP": "10.1.2.3",
            "TRADING_SYSTEM_CONFIG": str(config_file),
        }
    )
    parser = argparse.ArgumentParser()
    add_matching_parser(parser.add_subparsers(dest="command"), env)
    config = config_from_args(parser.parse_args(["matching", "serve"]))
    assert (config.engine_id, config.holder, config.http_host, config.http_port) == (
        "prod",
        "prod-matching-3",
        "10.1.2.3",
        8080,
    )
    assert config.db_url == "postgresql+asyncpg://db/x" and config.bus_urls == ("amqp://r1/", "amqp://r2/")
    assert config.role is Role.STANDBY and config.epoch == 0
    assert config.specs == (SymbolSpec("BTC-USD", tick_size=5, lot_size=1, band_bps=500),)

    config_file.write_text(json.dumps({"symbols": [{"name": "X", "tickSize": "-1", "lotSize": "1"}]}))
    with pytest.raises(SystemExit, match="bad symbol entry"):
        config_from_args(parser.parse_args(["matching", "serve"]))


async def test_demote_under_flow_loses_and_reorders_nothing(active: MatchingService) -> None:
    bus = active.bus
    await eventually(lambda: active._subscription is not None)
    cmds = take(command_stream(seed=4), 300)

    async def produce() -> None:
        for cmd in cmds:
            await bus.publish(
                MatchingCommand(engine_id="m1", command=command_to_dict(cmd)),
                routing_key="matching.command.m1",
            )

    producer = asyncio.create_task(produce())
    await eventually(lambda: active.runner.applied_seq >= 50)
    await active.runner.demote()
    await eventually(lambda: active._subscription is None)
    held_at = active.runner.applied_seq
    await asyncio.wait_for(producer, 10)
    assert active.runner.applied_seq == held_at  # nothing consumed while standby
    await active.runner.promote(1)
    await eventually(lambda: active.runner.applied_seq == 300, within=10)
    journaled = [e.command_id async for page in active.journal.iterate() for e in page]
    assert journaled == [str(c.cmd_id) for c in cmds]  # every command once, in publish order


async def test_bad_commands_get_reasons_and_change_nothing(active: MatchingService) -> None:
    """Through the service: an undecodable command is dead-lettered without a journal entry;
    decodable but invalid ones (unknown symbol, off-tick price, bad quantity or side) are
    journaled, answered with reject events carrying the reason, and leave the book as it was."""
    from trading_system.bus.topology import dead_letter_queue_name
    from trading_system.matching.core import EventKind, NewOrder, RejectReason, Side, decode_event

    bus = active.bus
    await bus.declare(
        Topology(
            exchanges=(Exchange("ts.events"),),
            queues=(WorkQueue("events-sink", bindings=(Binding("ts.events", "matching.events.#"),)),),
        )
    )
    got: list[MatchingEvents] = []

    async def sink(env: Envelope[Any]) -> None:
        got.append(env.payload)

    await bus.subscribe("events-sink", sink)
    await eventually(lambda: active._subscription is not None)
    for cmd in take(command_stream(), 20):
        await bus.publish(
            MatchingCommand(engine_id="m1", command=command_to_dict(cmd)), routing_key="matching.command.m1"
        )
    await eventually(lambda: len(got) == 20)
    digest = active.runner.engine.digest()

    def order(n: int, **changes: Any) -> dict[str, Any]:
        base = NewOrder(f"bad{n}", 10_000 + n, "BTC-USD", f"bad-o{n}", "a1", Side.BUY, 5, 5_000)
        return command_to_dict(base._replace(**changes))

    bad = {
        "bad1": (order(1, symbol="DOGE-USD"), RejectReason.UNKNOWN_SYMBOL),
        "bad2": (order(2, price=5_003), RejectReason.PRICE_OFF_TICK),
        "bad3": (order(3, qty=0), RejectReason.QTY_BELOW_MIN),
        "bad4": (order(4, qty="many"), RejectReason.MALFORMED),
        "bad5": ({**order(5), "side": 9}, RejectReason.INVALID_SIDE),
    }
    undecodable = {"type": "teleport", "cmd_id": "bad6"}
    await bus.publish(MatchingCommand(engine_id="m1", command=undecodable), routing_key="matching.command.m1")
    for command, _ in bad.values():
        await bus.publish(MatchingCommand(engine_id="m1", command=command), routing_key="matching.command.m1")
    await eventually(lambda: len(got) == 20 + len(bad))

    rejects = {
        e.cmd_id: e.reason
        for m in got[20:]
        for e in map(decode_event, m.events)
        if e.kind == EventKind.REJECTED
    }
    assert rejects == {cmd_id: int(reason) for cmd_id, (_, reason) in bad.items()}
    assert all(len(m.events) == 1 for m in got[20:])  # a reject and nothing else: no BBO change
    assert active.runner.engine.digest() == digest
    assert await active.journal.head() == 20 + len(bad)
    dead = dead_letter_queue_name("matching.commands.m1")
    await eventually(lambda: bus.transport.queue_depth(dead), what="a dead-lettered command")
    assert await bus.transport.queue_depth(dead) == 1


async def test_producer_batches_keep_their_order_and_misused_batches_are_refused(
    active: MatchingService,
) -> None:
    """A matching.commands batch is journaled in its order; single commands packed with
    publish_batch (whose items concurrent handlers could interleave) are dead-lettered."""
    from trading_system.bus.topology import dead_letter_queue_name
    from trading_system.matching.service.messages import MatchingCommandBatch

    await eventually(lambda: active._subscription is not None)
    cmds = take(command_stream(seed=21), 60)
    for start in (0, 30):  # two batch messages, handled concurrently by the service
        await active.bus.publish(
            MatchingCommandBatch(
                engine_id="m1", commands=[command_to_dict(c) for c in cmds[start : start + 30]]
            ),
            routing_key="matching.command.m1",
        )
    await eventually(lambda: active.runner.applied_seq == 60)
    journaled = [e.command_id async for page in active.journal.iterate() for e in page]
    assert journaled == [str(c.cmd_id) for c in cmds]

    misused = [
        MatchingCommand(engine_id="m1", command=command_to_dict(c)) for c in take(command_stream(seed=22), 3)
    ]
    await active.bus.publish_batch(misused, routing_key="matching.command.m1")
    dead = dead_letter_queue_name("matching.commands.m1")
    await eventually(lambda: _depth_is(active, dead, 3), what="three dead-lettered batch items")
    assert await active.journal.head() == 60


async def _depth_is(service: MatchingService, queue: str, depth: int) -> bool:
    return await service.bus.transport.queue_depth(queue) == depth


async def test_the_pipeline_venue_takes_the_coordinators_catalog_orders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``accept_orders`` the service consumes order.new / order.cancel from the shared
    command queue: converted once, journaled, deduplicated on redelivery."""
    import dataclasses

    from trading_system.bus.catalog import OrderCancel, OrderNew
    from trading_system.bus.catalog.common import OrderType, Side

    monkeypatch.setenv("TRADING_SYSTEM_ADMIN_TOKENS", ADMIN)
    service = make_service(tmp_path, Role.ACTIVE, 1)
    service.config = dataclasses.replace(service.config, accept_orders=True)
    await service.start()
    try:
        await eventually(lambda: service._subscription is not None)
        assert service.config.command_queue == "matching.commands"

        def new(order_id: str, side: Side, price: int) -> OrderNew:
            return OrderNew(
                order_id=order_id,
                client_order_id=f"c-{order_id}",
                account="a1" if side is Side.BUY else "a2",
                symbol="BTC-USD",
                side=side,
                order_type=OrderType.LIMIT,
                qty=5,
                price=price,
            )

        buy = new("o1", Side.BUY, 5_000)
        await service.bus.publish(buy, routing_key="order.new")
        await service.bus.publish(buy, routing_key="order.new")  # a redelivered copy
        await service.bus.publish(new("o2", Side.SELL, 5_100), routing_key="order.new")
        await service.bus.publish(
            OrderCancel(order_id="o2", account="a2", symbol="BTC-USD"), routing_key="order.cancel"
        )
        await eventually(lambda: service.runner.applied_seq == 3)
        entries = [e async for page in service.journal.iterate() for e in page]
        assert [e.command_id for e in entries][:2] == ["new:o1", "new:o2"]
        assert entries[2].command_id.startswith("cancel:")
        book = service.runner.book("BTC-USD")
        assert book["bids"] == [[5_000, 5, 1]] and book["asks"] == []
    finally:
        await service.stop()

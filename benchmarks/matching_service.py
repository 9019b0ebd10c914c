"""Matching service on PostgreSQL: journal append + apply commands/s, and rebuild time.

Run:  .venv/bin/python -m benchmarks.matching_service --dsn postgresql+asyncpg://postgres@127.0.0.1:35432/postgres

The benchmark creates a scratch database next to the DSN's (``matching_bench_<random>``)
and drops it afterwards. Durability is not weakened: it prints ``synchronous_commit`` and
``fsync`` as found.

* ``submit``: ``EngineRunner.submit`` (fenced journal append in one transaction, apply
  to the book, publish to a no-op publisher, i.e. everything but the broker) per batch
  size (``--batch 1 10 100``).
* ``rebuild``: a fresh runner's ``recover()`` over ``--journal`` journaled commands,
  once from the journal alone and once from a snapshot taken ``--tail`` commands
  before the head (snapshot + tail), the two ends of what ``--snapshot-every`` buys.
* ``--rabbitmq URL``: also commands/s end to end through the broker (``--e2e-commands``)
  and, with ``--promotion 100000 1000000``, the time from a warm standby's admin
  ``/promote`` to the first event of its new epoch, per journal size.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from sqlalchemy import text
from sqlalchemy.engine import make_url
from tests.integration.matching_support import event_sink, start_matching_client
from tests.unit.matching_service.helpers import SPECS, command_stream, eventually, take

from benchmarks.scratch_db import admin_execute as _admin
from trading_system.matching.service import EngineRunner, EventBatch, Journal, Role
from trading_system.storage import create_engine
from trading_system.storage.fencing import raise_epoch


async def _noop(batch: EventBatch) -> None:
    return None


async def run(dsn: str, batches: list[int], per_batch_commands: int, journal_size: int, tail: int) -> None:
    db = create_engine(dsn, pool_size=4)
    try:
        async with db.connect() as conn:
            sync = (await conn.execute(text("SHOW synchronous_commit"))).scalar_one()
            fsync = (await conn.execute(text("SHOW fsync"))).scalar_one()
        print(f"postgres: synchronous_commit={sync} fsync={fsync}")
        print("\n| phase | batch | commands | seconds | commands/s |")
        print("|---|---:|---:|---:|---:|")
        for batch in batches:
            engine_id = f"bench-submit-{batch}"
            journal = Journal(db, engine_id)
            await journal.migrate()
            await raise_epoch(db, journal.pair_name, 1, "bench")
            runner = EngineRunner(journal, _noop, role=Role.ACTIVE, epoch=1, specs=SPECS, snapshot_every=0)
            n = min(per_batch_commands, max(2000, per_batch_commands * batch // 100))
            stream = command_stream(seed=batch, prefix=f"b{batch}-")
            cmds = take(stream, n)
            started = time.perf_counter()
            for i in range(0, n, batch):
                await runner.submit(cmds[i : i + batch])
            secs = time.perf_counter() - started
            print(f"| submit | {batch} | {n:,} | {secs:.2f} | {n / secs:,.0f} |")

        journal = Journal(db, "bench-rebuild")
        await raise_epoch(db, journal.pair_name, 1, "bench")
        stream = command_stream(seed=99, prefix="r")
        writer = EngineRunner(journal, _noop, role=Role.ACTIVE, epoch=1, specs=SPECS, snapshot_every=0)
        started = time.perf_counter()
        for i in range(0, journal_size, 1000):
            await writer.submit(take(stream, min(1000, journal_size - i)))
            if journal_size - i - 1000 == tail:
                snapshot_at = await writer.write_snapshot()
        fill = time.perf_counter() - started
        print(f"| submit (fill) | 1000 | {journal_size:,} | {fill:.2f} | {journal_size / fill:,.0f} |")

        async with db.begin() as conn:  # rebuild without snapshot first: hide it
            await conn.execute(
                text("UPDATE matching_snapshots SET engine_id = 'hidden' WHERE engine_id = 'bench-rebuild'")
            )
        cold = EngineRunner(Journal(db, "bench-rebuild"), _noop, specs=SPECS, snapshot_every=0)
        started = time.perf_counter()
        replayed = await cold.recover()
        secs = time.perf_counter() - started
        print(f"| rebuild (journal only) | - | {replayed:,} | {secs:.2f} | {replayed / secs:,.0f} |")
        assert cold.engine.digest() == writer.engine.digest()

        async with db.begin() as conn:
            await conn.execute(
                text("UPDATE matching_snapshots SET engine_id = 'bench-rebuild' WHERE engine_id = 'hidden'")
            )
        warm = EngineRunner(Journal(db, "bench-rebuild"), _noop, specs=SPECS, snapshot_every=0)
        started = time.perf_counter()
        replayed = await warm.recover()
        secs = time.perf_counter() - started
        print(f"| rebuild (snapshot at {snapshot_at:,} + tail) | - | {replayed:,} | {secs:.2f} | - |")
        assert warm.engine.digest() == writer.engine.digest()

        # Promotion of a warm standby: fence write + catch-up of what it had not applied.
        standby = EngineRunner(Journal(db, "bench-rebuild"), _noop, specs=SPECS, snapshot_every=0)
        await standby.recover()
        for _ in range(5):
            await writer.submit(take(stream, 100))
        started = time.perf_counter()
        await standby.promote(2)
        secs = time.perf_counter() - started
        print(f"| promote (warm standby, 500 behind) | - | 500 | {secs:.3f} | - |")
    finally:
        await db.dispose()


async def end_to_end(dsn: str, urls: list[str], total: int, batch_size: int, producer_batch: int) -> None:
    """Commands published to RabbitMQ -> service (journal, match, confirmed events) -> sink."""
    from prometheus_client import CollectorRegistry

    from trading_system.bus.messages import BusMessage
    from trading_system.matching.service import command_to_dict
    from trading_system.matching.service.app import MatchingConfig, MatchingService
    from trading_system.matching.service.messages import MatchingCommand, MatchingCommandBatch

    engine_id = f"bench{uuid.uuid4().hex[:6]}"
    service = MatchingService(
        MatchingConfig(
            engine_id=engine_id,
            db_url=dsn,
            role=Role.ACTIVE,
            epoch=1,
            bus_mode="rabbitmq",
            bus_urls=tuple(urls),
            http_host="127.0.0.1",
            http_port=0,
            specs=SPECS,
            batch_size=batch_size,
            snapshot_every=0,
        ),
        registry=(registry := CollectorRegistry()),
    )
    client = await start_matching_client(urls, "bench-client")
    done = asyncio.Event()
    received = 0

    async def on_event(env: object) -> None:
        nonlocal received
        received += 1
        if received >= total:
            done.set()

    await event_sink(client, engine_id, on_event, "bench.matching.events", prefetch=1000)
    await service.start()
    try:
        plain = [command_to_dict(c) for c in take(command_stream(seed=5, prefix=f"{engine_id}-"), total)]
        messages: list[BusMessage] = (
            [MatchingCommand(engine_id=engine_id, command=c) for c in plain]
            if producer_batch <= 1
            else [
                MatchingCommandBatch(engine_id=engine_id, commands=plain[i : i + producer_batch])
                for i in range(0, total, producer_batch)
            ]
        )
        started = time.perf_counter()
        for i in range(0, len(messages), 500):
            await client.publish_many(messages[i : i + 500], routing_key=f"matching.command.{engine_id}")
        published = time.perf_counter() - started
        await asyncio.wait_for(done.wait(), 600)
        secs = time.perf_counter() - started
        print(
            f"| end to end via RabbitMQ, {producer_batch} per message | <= {batch_size} | {total:,} "
            f"| {secs:.2f} | {total / secs:,.0f} |"
        )
        batches = registry.get_sample_value("ts_matching_journal_append_seconds_count") or 1.0
        for name in ("journal_append", "match", "publish"):
            mean = (registry.get_sample_value(f"ts_matching_{name}_seconds_sum") or 0.0) / batches
            print(f"  mean {name} per batch: {mean * 1000:.2f} ms")
        print(f"  producer finished publishing (confirmed) after {published:.2f} s")
        print(f"  runner batches: {batches:,.0f}, mean batch {total / batches:.1f} commands")
    finally:
        await service.stop()
        await client.close()


async def promotion(dsn: str, urls: list[str], size: int, snapshot_every: int) -> None:
    """Admin ``/promote`` of a warm standby over ``size`` journaled commands, to the first
    event the new epoch publishes, with a backlog of commands waiting in the queue."""
    import os

    import aiohttp
    from prometheus_client import CollectorRegistry

    from trading_system.matching.service import command_to_dict
    from trading_system.matching.service.app import MatchingConfig, MatchingService
    from trading_system.matching.service.messages import MatchingCommand

    engine_id = f"promo{uuid.uuid4().hex[:6]}"
    db = create_engine(dsn, pool_size=2)
    journal = Journal(db, engine_id)
    await journal.migrate()
    await raise_epoch(db, journal.pair_name, 1, "old-active")
    stream = command_stream(seed=11, prefix=f"{engine_id}-")
    old = EngineRunner(journal, _noop, role=Role.ACTIVE, epoch=1, specs=SPECS, snapshot_every=snapshot_every)
    started = time.perf_counter()
    for i in range(0, size, 1000):
        await old.submit(take(stream, min(1000, size - i)))
    fill = time.perf_counter() - started
    await db.dispose()

    token = os.environ.setdefault("TRADING_SYSTEM_ADMIN_TOKEN", uuid.uuid4().hex)
    client = await start_matching_client(urls, "bench-client")
    first_new = asyncio.Event()

    async def on_event(env: object) -> None:
        if getattr(env, "epoch", None) == 2:
            first_new.set()

    await event_sink(client, engine_id, on_event, "bench.promotion.events", prefetch=1000)
    standby = MatchingService(
        MatchingConfig(
            engine_id=engine_id,
            db_url=dsn,
            role=Role.STANDBY,
            bus_mode="rabbitmq",
            bus_urls=tuple(urls),
            http_host="127.0.0.1",
            http_port=0,
            holder="new-active",
            specs=SPECS,
            snapshot_every=snapshot_every,
        ),
        registry=CollectorRegistry(),
    )
    started = time.perf_counter()
    await standby.start()
    startup = time.perf_counter() - started
    try:
        # The old active is gone with commands still queued for it.
        backlog = [
            MatchingCommand(engine_id=engine_id, command=command_to_dict(c)) for c in take(stream, 200)
        ]
        await client.publish_many(backlog, routing_key=f"matching.command.{engine_id}")
        await eventually(lambda: standby.runner.lag == 0, within=600, what="standby caught up")
        async with aiohttp.ClientSession(f"http://127.0.0.1:{standby.http_port}") as http:
            started = time.perf_counter()
            async with http.post(
                "/promote", json={"epoch": 2}, headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                resp.raise_for_status()
            answered = time.perf_counter() - started
            await asyncio.wait_for(first_new.wait(), 120)
            first = time.perf_counter() - started
        print(
            f"| {size:,} | {fill:.1f} | {startup:.2f} | {answered * 1000:.0f} | {first * 1000:.0f} |",
            flush=True,
        )
    finally:
        await standby.stop()
        await client.close()


async def main_async(args: argparse.Namespace) -> None:
    url = make_url(args.dsn)
    scratch = f"matching_bench_{uuid.uuid4().hex[:8]}"
    admin = url.render_as_string(hide_password=False)
    await _admin(admin, f'CREATE DATABASE "{scratch}"')
    try:
        dsn = url.set(database=scratch).render_as_string(hide_password=False)
        if args.journal > 0:
            await run(dsn, args.batch, args.commands, args.journal, args.tail)
        if args.rabbitmq and args.e2e_commands > 0:
            for producer_batch in args.e2e_producer_batch:
                await end_to_end(dsn, args.rabbitmq, args.e2e_commands, args.e2e_batch, producer_batch)
        if args.rabbitmq and args.promotion:
            print(
                "\n| journaled commands | fill s | standby start-up s | /promote answered ms "
                "| to first new event ms |"
            )
            print("|---:|---:|---:|---:|---:|")
            for size in args.promotion:
                await promotion(dsn, args.rabbitmq, size, args.snapshot_every)
    finally:
        await _admin(admin, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--commands", type=int, default=20_000, help="commands per submit round (at most)")
    parser.add_argument("--journal", type=int, default=100_000, help="journaled commands for the rebuild")
    parser.add_argument("--tail", type=int, default=10_000, help="commands after the snapshot")
    parser.add_argument("--rabbitmq", action="append", default=[], help="broker URL: also run end to end")
    parser.add_argument("--e2e-commands", type=int, default=20_000)
    parser.add_argument("--e2e-batch", type=int, default=64, help="the service's --batch-size")
    parser.add_argument(
        "--e2e-producer-batch",
        type=int,
        nargs="+",
        default=[1, 100],
        help="commands per AMQP message (1: matching.command each; N: matching.commands batches)",
    )
    parser.add_argument(
        "--promotion",
        type=int,
        nargs="*",
        default=[],
        help="journal sizes for the warm-standby promotion run, e.g. 100000 1000000 (needs --rabbitmq)",
    )
    parser.add_argument(
        "--snapshot-every", type=int, default=100_000, help="journal entries between snapshots"
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

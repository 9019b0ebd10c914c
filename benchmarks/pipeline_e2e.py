"""The whole pipeline as processes, end to end, against one raw quorum queue in the same run.

Run:  .venv/bin/python -m benchmarks.pipeline_e2e \\
          --dsn postgresql+asyncpg://postgres@127.0.0.1:35432/postgres \\
          --rabbitmq amqp://guest:guest@127.0.0.1:35672/ --rabbitmq amqp://guest:guest@127.0.0.1:35673/

``trading_system.local.LocalPipeline`` starts the matching and execution pairs and the
coordinator replicas as processes (durability on everywhere: publisher confirms,
3-replica quorum queues, synchronous commits); the load generator posts limit orders
to the execution API at each ``--rate`` for ``--duration`` seconds. Reported per rate:

* acknowledged orders/s (HTTP 201: stored, placement confirmed by the broker);
* API to DoCommit: the order's creation in execution to the coordinator's ``committed``
  step (the venue accepted it and the hold is bound), p50 / p99;
* API to acknowledgement as the client saw it, p50 / p99.

Then the raw rate of one 3-replica quorum queue (plain aio-pika, pipelined confirmed
publish -> consume, ``benchmarks.bus_throughput.raw_round``) and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import text

from benchmarks.bus_throughput import raw_round
from benchmarks.scratch_db import scratch_database
from trading_system.ha import FailoverPolicy
from trading_system.local.launcher import LocalConfig, LocalPipeline
from trading_system.local.loadgen import LoadGenerator, seed_ledger
from trading_system.storage import create_engine

ACCOUNTS = [f"bench-{i}" for i in range(16)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def commit_latencies(dsn: str, prefix: str) -> list[float]:
    """API (execution created_at) to DoCommit (the coordinator's committed step), seconds."""
    db = create_engine(dsn)
    try:
        async with db.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT o.created_at AS created, e.at AS committed FROM execution_orders o "
                    "JOIN coordinator_transaction_events e ON e.txn_id = 'txn-' || o.order_id "
                    "WHERE e.to_phase = 'committed' AND o.client_order_id LIKE :prefix"
                ),
                {"prefix": f"{prefix}-%"},
            )
            return [float(r.committed) - float(r.created) for r in rows]
    finally:
        await db.dispose()


async def run(dsn: str, urls: list[str], rates: list[float], duration: float, coordinators: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ts-pipeline-bench-") as scratch:
        config = LocalConfig(
            directory=Path(scratch),
            db_url=dsn,
            bus_urls=tuple(urls),
            coordinators=coordinators,
            namespace=f"bench{uuid.uuid4().hex[:6]}",
            policy=FailoverPolicy(failure_threshold=3, cooldown_seconds=10),
        )
        pipeline = LocalPipeline(config)
        stop = asyncio.Event()
        task = asyncio.create_task(pipeline.run(stop))
        try:
            deadline = time.monotonic() + 180
            while not pipeline.healthy():
                if time.monotonic() > deadline:
                    raise SystemExit(f"the pipeline did not become healthy: {pipeline.status()}")
                await asyncio.sleep(0.2)
            await seed_ledger(dsn, ACCOUNTS)
            print(
                "| offered orders/s | acknowledged orders/s | API->DoCommit p50 / p99 ms | ack p50 / p99 ms |"
            )
            print("|---:|---:|---:|---:|")
            best = 0.0
            for rate in rates:
                prefix = f"r{int(rate)}"
                load = LoadGenerator(
                    pipeline.execution_url,
                    pipeline.tokens["api"],
                    ACCOUNTS,
                    rate=rate,
                    prefix=prefix,
                    in_flight=256,
                )
                done = asyncio.Event()
                driver = asyncio.create_task(load.run(done))
                await asyncio.sleep(duration)  # the measured interval
                done.set()
                report = await driver
                await asyncio.sleep(3.0)  # let the last transactions commit before reading them
                commits = await commit_latencies(dsn, prefix)
                acked = report.rate()
                best = max(best, acked)
                print(
                    f"| {rate:.0f} | {acked:.1f} | {1000 * percentile(commits, 0.5):.0f} / "
                    f"{1000 * percentile(commits, 0.99):.0f} | {report.latency_ms(0.5) or 0:.0f} / "
                    f"{report.latency_ms(0.99) or 0:.0f} |",
                    flush=True,
                )
        finally:
            stop.set()
            await task
            pipeline.stop_members()
    raw = await raw_quorum_rate(urls)
    print(f"\nraw 3-replica quorum queue, pipelined confirmed publish -> consume: {raw:.0f} messages/s")
    print(f"pipeline best acknowledged orders/s as a share of it: {100 * best / raw:.1f}% (target 50%)")


async def raw_quorum_rate(urls: list[str]) -> float:
    cfg = argparse.Namespace(messages=5000, window=256, prefetch=500, rate=200.0, paced=200)
    runs = await raw_round(urls, cfg, 256, {"x-queue-type": "quorum"}, "raw quorum")
    return next(r.rate for r in runs if "e2e" in r.name)


async def main_async(args: argparse.Namespace) -> None:
    async with scratch_database(args.dsn, "pipeline_bench") as dsn:
        await run(dsn, args.rabbitmq, args.rate, args.duration, args.coordinators)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", required=True, help="admin DSN; a scratch database is created next to it")
    parser.add_argument("--rabbitmq", action="append", required=True, help="broker URL (repeat per node)")
    parser.add_argument("--rate", type=float, nargs="+", default=[25, 50, 100, 200], help="offered orders/s")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per rate")
    parser.add_argument("--coordinators", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

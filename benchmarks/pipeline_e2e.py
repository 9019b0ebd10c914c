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
* API to acknowledgement as the client saw it, p50 / p99;
* committed txn/s: the sustained rate of the coordinators, committed transactions over
  the span from the first order's creation to the last commit (the run waits, up to
  ``--drain`` seconds, until every acknowledged order's transaction has ended, so a
  backlog counts against it).

Then the raw rate of one 3-replica quorum queue (plain aio-pika, pipelined confirmed
publish -> consume, ``benchmarks.bus_throughput.raw_round``) and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from benchmarks.bus_throughput import percentile, raw_round
from benchmarks.scratch_db import scratch_database
from trading_system.ha import FailoverPolicy
from trading_system.local.launcher import LocalConfig, LocalPipeline
from trading_system.local.loadgen import LoadGenerator, seed_ledger
from trading_system.storage import create_engine


def accounts(n: int) -> list[str]:
    return [f"bench-{i}" for i in range(n)]


@dataclass(frozen=True, slots=True)
class Commits:
    """Per committed transaction: the order's creation in execution and its commit time."""

    created: list[float]
    committed: list[float]

    def latencies(self) -> list[float]:
        return [c - a for a, c in zip(self.created, self.committed, strict=True)]

    def rate(self) -> float:
        if not self.committed:
            return 0.0
        span = max(self.committed) - min(self.created)
        return len(self.committed) / span if span > 0 else 0.0


async def query(dsn: str, *statements: str, prefix: str) -> list[list[Any]]:
    """The rows of each statement (``:prefix`` bound to this run's client order ids)."""
    db = create_engine(dsn)
    try:
        async with db.connect() as conn:
            return [
                list((await conn.execute(text(sql), {"prefix": f"{prefix}-%"})).all()) for sql in statements
            ]
    finally:
        await db.dispose()


async def commits(dsn: str, prefix: str) -> Commits:
    """API (execution created_at) to DoCommit (the coordinator's committed step)."""
    (rows,) = await query(
        dsn,
        "SELECT o.created_at AS created, e.at AS committed FROM execution_orders o "
        "JOIN coordinator_transaction_events e ON e.txn_id = 'txn-' || o.order_id "
        "WHERE e.to_phase = 'committed' AND o.client_order_id LIKE :prefix",
        prefix=prefix,
    )
    return Commits([float(r.created) for r in rows], [float(r.committed) for r in rows])


async def stages(dsn: str, prefix: str) -> tuple[dict[str, float], dict[str, int]]:
    """Median seconds per stage of the committed transactions, and how many aborted:
    where the time between the API and DoCommit went."""
    rows, reasons = await query(
        dsn,
        "SELECT o.created_at AS api, "
        "min(e.at) FILTER (WHERE e.name = 'Created') AS created, "
        "min(e.at) FILTER (WHERE e.to_phase = 'pre_commit') AS pre_commit, "
        "min(e.at) FILTER (WHERE e.to_phase = 'do_commit') AS do_commit, "
        "min(e.at) FILTER (WHERE e.to_phase = 'committed') AS committed "
        "FROM execution_orders o JOIN coordinator_transaction_events e "
        "ON e.txn_id = 'txn-' || o.order_id WHERE o.client_order_id LIKE :prefix "
        "GROUP BY o.order_id, o.created_at",
        "SELECT split_part(coalesce(t.outcome_reason, ''), ':', 1) AS reason, count(*) AS n "
        "FROM execution_orders o JOIN coordinator_transactions t "
        "ON t.txn_id = 'txn-' || o.order_id WHERE o.client_order_id LIKE :prefix "
        "AND t.phase = 'aborted' GROUP BY 1 ORDER BY 2 DESC",
        prefix=prefix,
    )
    done = [r for r in rows if None not in (r.created, r.pre_commit, r.do_commit, r.committed)]
    spans = {
        "api->created": [r.created - r.api for r in done],
        "created->pre_commit": [r.pre_commit - r.created for r in done],
        "pre_commit->do_commit": [r.do_commit - r.pre_commit for r in done],
        "do_commit->committed": [r.committed - r.do_commit for r in done],
    }
    found = {name: percentile(values, 0.5) for name, values in spans.items() if values}
    found["aborted"] = float(sum(r.n for r in reasons))
    return found, {str(r.reason): int(r.n) for r in reasons}


async def open_transactions(dsn: str, prefix: str) -> int:
    """Transactions of this rate's orders that have not ended (or not started) yet."""
    db = create_engine(dsn)
    try:
        async with db.connect() as conn:
            found = await conn.execute(
                text(
                    "SELECT count(*) FROM execution_orders o LEFT JOIN coordinator_transactions t "
                    "ON t.txn_id = 'txn-' || o.order_id WHERE o.client_order_id LIKE :prefix "
                    "AND (t.phase IS NULL OR t.phase NOT IN ('committed', 'aborted'))"
                ),
                {"prefix": f"{prefix}-%"},
            )
            return int(found.scalar_one())
    finally:
        await db.dispose()


async def drain(dsn: str, prefix: str, limit: float) -> None:
    give_up = time.monotonic() + limit
    while time.monotonic() < give_up:
        if not await open_transactions(dsn, prefix):
            return
        await asyncio.sleep(1.0)


async def run(dsn: str, urls: list[str], settings: argparse.Namespace) -> None:
    rates, duration, coordinators, drain_for = (
        settings.rate,
        settings.duration,
        settings.coordinators,
        settings.drain,
    )
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
            await seed_ledger(dsn, accounts(settings.accounts))
            print(
                "| offered orders/s | acknowledged orders/s | committed txn/s "
                "| API->DoCommit p50 / p99 ms | ack p50 / p99 ms |"
            )
            print("|---:|---:|---:|---:|---:|")
            best = 0.0
            for rate in rates:
                prefix = f"r{int(rate)}"
                load = LoadGenerator(
                    pipeline.execution_url,
                    pipeline.tokens["api"],
                    accounts(settings.accounts),
                    rate=rate,
                    prefix=prefix,
                    in_flight=256,
                )
                done = asyncio.Event()
                driver = asyncio.create_task(load.run(done))
                await asyncio.sleep(duration)  # the measured interval
                done.set()
                report = await driver
                await drain(dsn, prefix, drain_for)
                found = await commits(dsn, prefix)
                latencies = found.latencies()
                acked = report.rate()
                best = max(best, found.rate())
                print(
                    f"| {rate:.0f} | {acked:.1f} | {found.rate():.1f} | "
                    f"{1000 * percentile(latencies, 0.5):.0f} / "
                    f"{1000 * percentile(latencies, 0.99):.0f} | {report.latency_ms(0.5) or 0:.0f} / "
                    f"{report.latency_ms(0.99) or 0:.0f} |",
                    flush=True,
                )
                if settings.stages:
                    spent, reasons = await stages(dsn, prefix)
                    print(
                        "    p50 s: " + ", ".join(f"{name} {value:.2f}" for name, value in spent.items()),
                        f"(aborted: {reasons})" if reasons else "",
                        flush=True,
                    )
        finally:
            stop.set()
            await task
            pipeline.stop_members()
    raw = await raw_quorum_rate(urls)
    print(f"\nraw 3-replica quorum queue, pipelined confirmed publish -> consume: {raw:.0f} messages/s")
    print(f"pipeline best committed txn/s as a share of it: {100 * best / raw:.1f}% (target 50%)")


async def raw_quorum_rate(urls: list[str]) -> float:
    cfg = argparse.Namespace(messages=5000, window=256, prefetch=500, rate=200.0, paced=200)
    runs = await raw_round(urls, cfg, 256, {"x-queue-type": "quorum"}, "raw quorum")
    return next(r.rate for r in runs if "e2e" in r.name)


async def main_async(args: argparse.Namespace) -> None:
    async with scratch_database(args.dsn, "pipeline_bench") as dsn:
        await run(dsn, args.rabbitmq, args)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", required=True, help="admin DSN; a scratch database is created next to it")
    parser.add_argument("--rabbitmq", action="append", required=True, help="broker URL (repeat per node)")
    parser.add_argument("--rate", type=float, nargs="+", default=[25, 50, 100, 200], help="offered orders/s")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per rate")
    parser.add_argument("--coordinators", type=int, default=3)
    parser.add_argument(
        "--accounts",
        type=int,
        default=16,
        help="funded accounts the orders spread over (each one's balance rows are a lock hot spot)",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="also print where the time went (median per stage) and how many transactions aborted",
    )
    parser.add_argument(
        "--drain", type=float, default=60.0, help="seconds to wait for the backlog to end after each rate"
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

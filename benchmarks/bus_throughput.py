"""Throughput and latency of the message bus against plain aio-pika, in one run.

Run:  .venv/bin/python -m benchmarks.bus_throughput [--urls URL,URL,URL] [--messages 5000]

URLs come from ``--urls``, else from the test environment's state file
(``TS_TESTENV_STATE``). Nothing is started: point it at a running cluster.

Every scenario uses a fresh 3-replica quorum queue, persistent messages, publisher
confirms and manual acks, and the same body size (the bus's encoded envelope of an
``order.new``; the raw body is padded to that length). Raw and bus runs alternate for
``--rounds`` rounds and the median of each is reported, so load drift on a shared
machine hits both alike. Scenarios:

- raw publish      aio-pika ``Exchange.publish`` of N messages, up to W unconfirmed (pipelined),
                   to a queue declared with the same arguments the bus gives its work queues
                   ("raw plain-quorum": the same on a quorum queue with no other arguments)
- raw e2e          the same publish with a consumer (prefetch P, ack per message) running
                   alongside; rate = N / (last consumed - first published)
- bus publish 1x1  ``bus.publish`` awaited one at a time (each waits for its confirm)
- bus publish      ``bus.publish_many`` (pipelined confirms, window W)
- bus e2e          ``publish_many`` with a ``bus.subscribe`` consumer running alongside
- bus batch e2e    ``publish_batch`` of B logical messages per AMQP message
- raw/bus paced    L messages published one by one at a steady R msg/s (below saturation)
                   with a consumer running; latency = publish call -> consumer callback

Latency of the saturated e2e runs is mostly time spent waiting in the publish window and
the queue, so it is only reported for the paced runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import CollectorRegistry

from trading_system.bus import Envelope, MessageBus, RetryPolicy, Topology, WorkQueue
from trading_system.bus.catalog import OrderNew, default_registry
from trading_system.bus.codec import Codec
from trading_system.bus.messages import BusMessage

PLAIN_QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


@dataclass
class Run:
    name: str
    messages: int
    seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def order(i: int) -> OrderNew:
    return OrderNew(
        order_id=f"o-{i}",
        client_order_id=f"c-{i}",
        account="acct-1",
        symbol="BTC-USD",
        side="buy",
        order_type="limit",
        qty=Decimal("1.25"),
        price=Decimal("50123.5"),
    )


def urls_from(args: argparse.Namespace) -> list[str]:
    if args.urls:
        return [u.strip() for u in args.urls.split(",") if u.strip()]
    state = os.environ.get("TS_TESTENV_STATE")
    if state and Path(state).exists():
        return list(json.loads(Path(state).read_text())["rabbitmq"]["urls"])
    raise SystemExit("no URLs: pass --urls or set TS_TESTENV_STATE to the test environment's state file")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- raw aio-pika -----------------------------------------------------------------------


async def paced(n: int, rate: float, send: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Start ``send(i)`` for i < n at a steady ``rate``, each in its own task."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: list[asyncio.Task[None]] = []
    for i in range(n):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i)))
    await asyncio.gather(*tasks)


async def raw_round(
    urls: list[str], cfg: argparse.Namespace, body_size: int, arguments: dict[str, Any], label: str
) -> list[Run]:
    n, window = cfg.messages, cfg.window
    queue_name = f"bench-raw-{uuid.uuid4().hex[:8]}"
    body = b"x" * body_size
    pub_conn = await aio_pika.connect(urls[0])
    sub_conn = await aio_pika.connect(urls[1 % len(urls)])
    async with pub_conn, sub_conn:
        channel = await pub_conn.channel(publisher_confirms=True)
        raw_queue = await channel.declare_queue(queue_name, durable=True, arguments=arguments)
        exchange = channel.default_exchange
        sent: dict[str, float] = {}

        async def send(message_id: str) -> None:
            sent[message_id] = time.perf_counter()
            await exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message_id),
                routing_key=queue_name,
            )

        async def pipelined(tag: str) -> None:
            sem = asyncio.Semaphore(window)

            async def one(i: int) -> None:
                async with sem:
                    await send(f"{tag}{i}")

            await asyncio.gather(*(one(i) for i in range(n)))

        start = time.perf_counter()
        await pipelined("p")
        publish = Run(f"{label} publish (pipelined)", n, time.perf_counter() - start)
        await raw_queue.purge()

        sub_channel = await sub_conn.channel()
        await sub_channel.set_qos(prefetch_count=cfg.prefetch)
        queue = await sub_channel.declare_queue(queue_name, passive=True)
        current: Run | None = None
        expected = 0
        done = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            await message.ack()
            published = sent.pop(message.message_id or "", None)
            if current is not None and published is not None:
                now = time.perf_counter()
                current.latencies.append(now - published)
                current.seconds = now
                if len(current.latencies) >= expected:
                    done.set()

        tag = await queue.consume(on_message)
        e2e = current = Run(f"{label} e2e (pipelined)", n, 0.0)
        expected, start = n, time.perf_counter()
        await pipelined("e")
        await asyncio.wait_for(done.wait(), timeout=max(60, n / 50))
        e2e.seconds -= start

        done.clear()
        latency = current = Run(f"{label} paced {cfg.rate:.0f}/s", cfg.paced, 0.0)
        expected, start = cfg.paced, time.perf_counter()
        await paced(cfg.paced, cfg.rate, lambda i: send(f"l{i}"))
        await asyncio.wait_for(done.wait(), timeout=60)
        latency.seconds -= start
        await queue.cancel(tag)
        await channel.queue_delete(queue_name)
    return [publish, e2e, latency]


# -- the bus ----------------------------------------------------------------------------


async def bus_round(urls: list[str], cfg: argparse.Namespace) -> list[Run]:
    n = cfg.messages
    queue_name = f"bench-bus-{uuid.uuid4().hex[:8]}"
    bus = MessageBus.from_env(
        mode="rabbitmq",
        urls=urls,
        service="bench",
        metrics_registry=CollectorRegistry(),
        max_in_flight=cfg.window,
        prefetch=cfg.prefetch,
        depth_poll_interval=0,
    )
    runs: list[Run] = []
    await bus.start()
    try:
        await bus.declare(Topology(queues=(WorkQueue(queue_name, retry=RetryPolicy(max_attempts=2)),)))
        messages: list[BusMessage] = [order(i) for i in range(n)]

        start = time.perf_counter()
        for message in messages[: cfg.sequential]:
            await bus.publish(message, exchange="", routing_key=queue_name)
        runs.append(Run("bus publish (1 at a time)", cfg.sequential, time.perf_counter() - start))

        start = time.perf_counter()
        await bus.publish_many(messages, exchange="", routing_key=queue_name)
        runs.append(Run("bus publish (pipelined)", n, time.perf_counter() - start))
        await purge(bus, queue_name)

        probe = Probe()
        subscription = await bus.subscribe(queue_name, probe.handler)

        async def pipelined() -> None:
            await bus.publish_many(messages, exchange="", routing_key=queue_name)

        async def batched() -> None:
            window = asyncio.Semaphore(max(1, cfg.window // cfg.batch))

            async def one(lo: int) -> None:
                async with window:
                    await bus.publish_batch(
                        messages[lo : lo + cfg.batch], exchange="", routing_key=queue_name
                    )

            await asyncio.gather(*(one(lo) for lo in range(0, n, cfg.batch)))

        async def steady() -> None:
            async def send(i: int) -> None:
                env = bus.envelope(messages[i])
                probe.sent[env.message_id] = time.perf_counter()
                await bus.publish(env, exchange="", routing_key=queue_name)

            await paced(cfg.paced, cfg.rate, send)

        runs.append(await probe.measure("bus e2e (pipelined)", n, pipelined))
        runs.append(await probe.measure(f"bus e2e (batches of {cfg.batch})", n, batched))
        runs.append(await probe.measure(f"bus paced {cfg.rate:.0f}/s", cfg.paced, steady))
        await bus.unsubscribe(subscription)
    finally:
        await delete_queues(bus)
        await bus.close()
    return runs


class Probe:
    """Counts handled messages and, where the send time is known, their latency."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.run = Run("", 0, 0.0)
        self.handled = 0
        self.done = asyncio.Event()

    async def handler(self, env: Envelope[Any]) -> None:
        now = time.perf_counter()
        self.handled += 1
        self.run.seconds = now
        published = self.sent.pop(env.message_id, None)
        if published is not None:
            self.run.latencies.append(now - published)
        if self.handled >= self.run.messages:
            self.done.set()

    async def measure(self, name: str, n: int, publish: Callable[[], Awaitable[None]]) -> Run:
        self.run, self.handled = Run(name, n, 0.0), 0
        self.done.clear()
        start = time.perf_counter()
        await publish()
        await asyncio.wait_for(self.done.wait(), timeout=max(60, n / 50))
        self.run.seconds -= start
        return self.run


async def purge(bus: MessageBus, queue: str) -> None:
    async with await aio_pika.connect(bus.settings.urls[0]) as conn:
        channel = await conn.channel()
        await (await channel.get_queue(queue, ensure=False)).purge()


async def delete_queues(bus: MessageBus) -> None:
    async with await aio_pika.connect(bus.settings.urls[0]) as conn:
        channel = await conn.channel()
        for decl in bus.topology.plan().queues:
            await channel.queue_delete(decl.name)


# -- report -----------------------------------------------------------------------------


def report(runs: dict[str, list[Run]], out: Any = sys.stdout) -> dict[str, tuple[float, float]]:
    def median_rate(name: str) -> float:
        return statistics.median(r.rate for r in runs[name])

    header = f"{'scenario':<36} {'msg/s (median)':>15} {'min':>8} {'max':>8} {'p50 ms':>8} {'p99 ms':>8}"
    print(header, file=out)
    for name, items in runs.items():
        latencies = [lat for r in items for lat in r.latencies] if "paced" in name else []
        p50 = percentile(latencies, 0.50) * 1000
        p99 = percentile(latencies, 0.99) * 1000
        lat = f"{p50:8.1f} {p99:8.1f}" if latencies else f"{'-':>8} {'-':>8}"
        rates = [r.rate for r in items]
        print(
            f"{name:<36} {median_rate(name):>15,.0f} {min(rates):>8,.0f} {max(rates):>8,.0f} {lat}",
            file=out,
        )

    def ratio(bus: str, raw: str) -> tuple[float, float]:
        """Ratio of the medians, and the median of the per-round ratios: raw and bus of
        one round ran back to back, so the latter cancels load drift between rounds."""
        paired = [b.rate / r.rate for b, r in zip(runs[bus], runs[raw], strict=True) if r.rate]
        return median_rate(bus) / median_rate(raw), statistics.median(paired)

    batch_name = next(name for name in runs if name.startswith("bus e2e (batches"))
    ratios = {
        "publish (pipelined)": ratio("bus publish (pipelined)", "raw publish (pipelined)"),
        "publish->consume": ratio("bus e2e (pipelined)", "raw e2e (pipelined)"),
        "publish->consume, batched": ratio(batch_name, "raw e2e (pipelined)"),
        "publish->consume vs plain quorum": ratio("bus e2e (pipelined)", "raw plain-quorum e2e (pipelined)"),
    }
    print(f"\n{'bus/raw':<40} {'of medians':>10} {'per round':>10}", file=out)
    for key, (of_medians, per_round) in ratios.items():
        print(f"{key:<40} {of_medians:>10.2f} {per_round:>10.2f}", file=out)
    return ratios


async def main_async(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    urls = urls_from(args)
    body_size = len(Codec(default_registry()).encode(Envelope(order(0), source="bench")))
    runs: dict[str, list[Run]] = {}
    # "raw" publishes to a queue declared with exactly the arguments the bus gives its
    # work queues (delivery limit, at-least-once dead-lettering, reject-publish), so the
    # ratio shows what the library costs; "raw plain-quorum" shows what those broker
    # features cost on their own.
    [work] = [q for q in Topology(queues=(WorkQueue("bench"),)).plan().queues if q.name == "bench"]
    same_queue = dict(work.arguments)
    for round_no in range(args.rounds):
        # Alternate which side goes first, so a drift in machine load favours neither.
        if round_no % 2 == 0:
            raw = await raw_round(urls, args, body_size, same_queue, "raw")
            bus = await bus_round(urls, args)
            plain = await raw_round(urls, args, body_size, PLAIN_QUORUM, "raw plain-quorum")
        else:
            plain = await raw_round(urls, args, body_size, PLAIN_QUORUM, "raw plain-quorum")
            bus = await bus_round(urls, args)
            raw = await raw_round(urls, args, body_size, same_queue, "raw")
        for run in (*raw, *plain, *bus):
            runs.setdefault(run.name, []).append(run)
        rates = "  ".join(f"{run.name.split(' (')[0]} {run.rate:,.0f}" for run in (raw[1], bus[2]))
        print(f"round {round_no + 1}/{args.rounds}: e2e {rates}", file=sys.stderr)
    print(
        f"\n{args.messages} messages of {body_size} bytes per scenario, window {args.window}, "
        f"prefetch {args.prefetch}, 3-replica quorum queue, persistent, confirms, manual acks\n"
    )
    ordered = {k: runs[k] for k in sorted(runs, key=lambda name: (not name.startswith("raw"), name))}
    return report(ordered)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bus_throughput", description=__doc__)
    parser.add_argument("--urls", help="comma-separated AMQP URLs of the cluster")
    parser.add_argument("--messages", type=int, default=5000, help="messages per scenario")
    parser.add_argument("--sequential", type=int, default=500, help="messages for the 1-at-a-time run")
    parser.add_argument("--batch", type=int, default=50, help="logical messages per AMQP message")
    parser.add_argument("--window", type=int, default=1000, help="unconfirmed publishes in flight")
    parser.add_argument("--prefetch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paced", type=int, default=1000, help="messages in the paced latency run")
    parser.add_argument("--rate", type=float, default=250.0, help="msg/s of the paced latency run")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

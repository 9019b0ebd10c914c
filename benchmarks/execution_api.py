"""HTTP order submits per second, and latency to the confirmed publish, of the execution API.

Run:  TS_TESTENV_STATE=/tmp/.../state.json .venv/bin/python -m benchmarks.execution_api
      .venv/bin/python -m benchmarks.execution_api --urls amqp://... --dsn postgresql+asyncpg://...

The service runs as its own process (``trading-system execution serve``, active, epoch 1)
against the real RabbitMQ cluster and PostgreSQL; this process is the HTTP client. A 201
answer means the order row was written (fenced, committed with fsync) and the ``OrderNew``
placement was confirmed by the quorum queue ``coordinator.requests``, so the latency
measured is exactly "API call to confirmed publish". Each run uses a scratch database
and its own queue namespace; both are deleted afterwards.

Phases: ``--requests`` submits at each concurrency of ``--concurrency`` (HTTP keep-alive,
one connection per concurrent client), spread over ``--accounts`` accounts so the
per-account rate limit (set high here) does not throttle the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import aiohttp
from sqlalchemy.engine import make_url

from benchmarks.scratch_db import admin_execute as _admin
from trading_system.pipeline.messages import Names, topology

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"


@dataclass
class Phase:
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]
    errors: int
    server_cpu: float

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000.0

    def row(self) -> str:
        rate = self.requests / self.seconds
        return (
            f"| {self.concurrency} | {self.requests} | {self.seconds:.2f} | {rate:,.0f} | "
            f"{self.quantile(0.5):.2f} | {self.quantile(0.99):.2f} | "
            f"{self.server_cpu / self.requests * 1e6:,.0f} | {self.errors} |"
        )


def _state() -> dict[str, object]:
    path = os.environ.get("TS_TESTENV_STATE")
    if path and Path(path).exists():
        data: dict[str, object] = json.loads(Path(path).read_text())
        return data
    return {}


def _urls(arg: str | None) -> list[str]:
    if arg:
        return [u for u in arg.split(",") if u]
    rabbit = _state().get("rabbitmq")
    if isinstance(rabbit, dict):
        return list(rabbit["urls"])
    raise SystemExit("no broker: pass --urls or set TS_TESTENV_STATE")


def _admin_dsn(arg: str | None) -> str:
    if arg:
        return arg
    pg = _state().get("postgres")
    if isinstance(pg, dict):
        return str(pg["admin_dsn"])
    raise SystemExit("no database: pass --dsn or set TS_TESTENV_STATE")


async def _delete_namespace(urls: list[str], namespace: str) -> None:
    names = Names.namespaced(namespace)
    plan = topology(names).plan()
    connection = await aio_pika.connect(urls[0])
    try:
        channel = await connection.channel()
        for queue in plan.queues:
            await channel.queue_delete(queue.name)
        await channel.exchange_delete(names.exchange)
    finally:
        await connection.close()


def _spawn(dsn: str, urls: list[str], port: int, namespace: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "services"),
        "TRADING_SYSTEM_DATABASE_URL": dsn,
        "TRADING_SYSTEM_RABBITMQ_URL": ",".join(urls),
        "TRADING_SYSTEM_API_TOKEN": TOKEN,
        "TRADING_SYSTEM_ADMIN_TOKEN": TOKEN + "-admin",
    }
    args = [
        sys.executable,
        "-m",
        "trading_system.execution.service.cli",
        "execution",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--role",
        "active",
        "--epoch",
        "1",
        "--namespace",
        namespace,
        "--bus-mode",
        "rabbitmq",
        "--rate",
        "1000000",
        "--burst",
        "1000000",
    ]
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)


async def _wait_active(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            if proc.poll() is not None:
                break
            try:
                async with http.get(f"{base}/readyz") as resp:
                    body = await resp.json()
                    if resp.status == 200 and body.get("role") == "active":
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"execution service did not become active; its output is in {log}")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (Linux /proc), to tell server cost from waiting."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _phase(base: str, pid: int, concurrency: int, requests: int, accounts: int, tag: str) -> Phase:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))

    async def worker(w: int) -> None:
        nonlocal errors
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
            for i in counter:
                body = {
                    "client_order_id": f"{tag}-{i}",
                    "account": f"acct-{i % accounts}",
                    "symbol": "BTC-USD",
                    "side": "buy" if i % 2 else "sell",
                    "qty": 1 + i % 5,
                    "price": 1000 + i % 50,
                }
                started = time.perf_counter()
                async with http.post(f"{base}/orders", json=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 201:
                        errors += 1
                latencies.append(time.perf_counter() - started)

    cpu = _cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    return Phase(concurrency, requests, elapsed, latencies, errors, _cpu_seconds(pid) - cpu)


async def main_async(args: argparse.Namespace) -> None:
    urls = _urls(args.urls)
    admin = _admin_dsn(args.dsn)
    url = make_url(admin)
    scratch = f"exec_bench_{uuid.uuid4().hex[:8]}"
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    await _admin(admin, f'CREATE DATABASE "{scratch}"')
    log = Path(args.log)
    proc = _spawn(
        url.set(database=scratch).render_as_string(hide_password=False), urls, args.port, namespace, log
    )
    base = f"http://127.0.0.1:{args.port}"
    phases: list[Phase] = []
    try:
        await _wait_active(base, proc, log)
        await _phase(base, proc.pid, 4, args.warmup, args.accounts, "warm")
        for c in args.concurrency:
            phases.append(await _phase(base, proc.pid, c, args.requests, args.accounts, f"c{c}"))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        await _admin(admin, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        await _delete_namespace(urls, namespace)
    print(f"\nexecution API: HTTP submit -> fenced insert -> confirmed OrderNew ({len(urls)}-node RabbitMQ)")
    print(
        "| concurrency | requests | seconds | submits/s | p50 ms | p99 ms | server CPU µs/submit | errors |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(p.row() for p in phases))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--urls", default=None, help="amqp://... comma-separated (default: TS_TESTENV_STATE)")
    parser.add_argument("--dsn", default=None, help="admin PostgreSQL URL (default: TS_TESTENV_STATE)")
    parser.add_argument("--requests", type=int, default=2000, help="submits per phase (default 2000)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients per phase"
    )
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--port", type=int, default=48080)
    parser.add_argument("--log", default="/tmp/execution_api_bench.log", help="the service's output")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

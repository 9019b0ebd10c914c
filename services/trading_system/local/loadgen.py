"""Order flow for the local pipeline: seed the ledger, post orders, record every answer.

``LoadGenerator`` posts limit orders that cross around a mid price to whichever execution
member ``routes.json`` names, at a chosen rate, and keeps one ``Ack`` per client order id:
the order id and the time it was acknowledged (HTTP 201: the order is durable and its
placement request confirmed by the broker). When the member it talks to fails (a
connection error, a 503 from a standby or a fenced member) it re-reads the route and
sends the same request again with the same ``client_order_id``; a 409 naming the
existing order means the first attempt had been acknowledged after all. Those records
are what the chaos checks hold the pipeline to: every acknowledged order must be found
afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from trading_system.demo.run import INSTRUMENTS, QUOTE, SPECS
from trading_system.ledger import (
    AccountKind,
    create_asset,
    deposit,
    migrate_ledger,
    open_account,
)
from trading_system.storage import create_engine
from trading_system.storage.fencing import current_token

RETRYABLE = (503, 502, 504)


@dataclass
class Ack:
    client_order_id: str
    account: str
    symbol: str
    sent_at: float
    order_id: str | None = None
    acked_at: float | None = None
    attempts: int = 0
    status: int | None = None
    error: str | None = None

    @property
    def acknowledged(self) -> bool:
        return self.order_id is not None

    @property
    def latency(self) -> float | None:
        return None if self.acked_at is None else self.acked_at - self.sent_at


@dataclass
class LoadReport:
    acks: list[Ack] = field(default_factory=list)
    started_at: float = 0.0
    ended_at: float = 0.0

    @property
    def acknowledged(self) -> list[Ack]:
        return [a for a in self.acks if a.acknowledged]

    def rate(self) -> float:
        span = self.ended_at - self.started_at
        return len(self.acknowledged) / span if span > 0 else 0.0

    def latency_ms(self, q: float) -> float | None:
        samples = sorted(a.latency for a in self.acks if a.latency is not None)
        if not samples:
            return None
        return 1000 * samples[min(len(samples) - 1, int(q * len(samples)))]


async def seed_ledger(db_url: str, accounts: list[str], fence_pair: str = "execution") -> None:
    """Assets and funded accounts for the load, written under the pair's current epoch.

    Idempotent: deposits are keyed by account and asset, so seeding twice changes nothing.
    """
    db = create_engine(db_url)
    try:
        await migrate_ledger(db)
        fence = await current_token(db, fence_pair)
        assets = sorted({QUOTE, *(i.base_asset for i in INSTRUMENTS.values())})
        for asset in assets:
            await create_asset(db, fence, asset, decimals=2 if asset == QUOTE else 0)
        for account in accounts:
            await open_account(db, fence, account, AccountKind.USER)
            for asset in assets:
                amount = 10_000_000_000 if asset == QUOTE else 10_000_000
                await deposit(
                    db,
                    fence,
                    deposit_id=f"seed-{account}-{asset}",
                    account_id=account,
                    asset=asset,
                    amount=amount,
                )
    finally:
        await db.dispose()


class LoadGenerator:
    def __init__(
        self,
        url: Callable[[], str | None],
        api_token: str,
        accounts: list[str],
        *,
        rate: float = 50.0,
        prefix: str = "load",
        seed: int = 1,
        in_flight: int = 32,
        retry_for: float = 60.0,
    ) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {api_token}"}
        self.accounts = accounts
        self.rate = rate
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.window = asyncio.Semaphore(in_flight)
        self.retry_for = retry_for
        self.report = LoadReport()
        self._n = 0

    def _next_order(self) -> dict[str, Any]:
        self._n += 1
        spec = self.rng.choice(SPECS)
        side = self.rng.choice(("buy", "sell"))
        # Within a few ticks of the reference on both sides, so about half the orders trade.
        offset = self.rng.randrange(-3, 4) * spec.tick_size
        return {
            "client_order_id": f"{self.prefix}-{self._n}",
            "account": self.rng.choice(self.accounts),
            "symbol": spec.symbol,
            "side": side,
            "order_type": "limit",
            "qty": spec.lot_size * self.rng.randrange(1, 5),
            "price": spec.reference_price + offset,
        }

    async def run(self, stop: asyncio.Event) -> LoadReport:
        """Post orders at ``rate`` until ``stop``; then wait for those in flight."""
        self.report.started_at = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(headers=self.headers) as http:
            next_at = time.monotonic()
            while not stop.is_set():
                await self.window.acquire()
                task = asyncio.create_task(self._submit(http, self._next_order()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += 1.0 / self.rate
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            if tasks:
                await asyncio.gather(*tasks)
        self.report.ended_at = time.monotonic()
        return self.report

    async def _submit(self, http: aiohttp.ClientSession, body: dict[str, Any]) -> None:
        ack = Ack(body["client_order_id"], body["account"], body["symbol"], time.monotonic())
        self.report.acks.append(ack)
        try:
            deadline = ack.sent_at + self.retry_for
            while time.monotonic() < deadline and not ack.acknowledged:
                ack.attempts += 1
                if await self._attempt(http, body, ack) is False:
                    return  # refused for good (4xx): recorded, not retried
                if not ack.acknowledged:
                    await asyncio.sleep(0.2)  # the route is changing: look again shortly
        finally:
            self.window.release()

    async def _attempt(self, http: aiohttp.ClientSession, body: dict[str, Any], ack: Ack) -> bool:
        """One POST; False when the answer is final and negative."""
        base = self.url()
        if base is None:
            return True
        try:
            async with http.post(
                f"{base}/orders", json=body, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                ack.status = resp.status
                answer = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            ack.error = f"{type(exc).__name__}: {exc}"
            return True
        if resp.status == 201:
            ack.order_id, ack.acked_at = answer["order_id"], time.monotonic()
        elif resp.status == 409 and isinstance(answer, dict) and answer.get("order_id"):
            # An earlier attempt was acknowledged although its answer never arrived.
            ack.order_id, ack.acked_at = str(answer["order_id"]), time.monotonic()
        elif resp.status in RETRYABLE or resp.status == 429:
            ack.error = str(answer)[:200]
        else:
            ack.error = str(answer)[:200]
            return False
        return True

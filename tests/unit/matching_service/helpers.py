"""Command streams and a recording publisher for the matching service tests."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

from tests.unit.bus.support import eventually as eventually  # re-exported for the matching tests
from trading_system.matching.core import Cancel, Command, MatchingEngine, NewOrder, Side, SymbolSpec
from trading_system.matching.service import EventBatch, Journal

SPECS = (SymbolSpec("BTC-USD", tick_size=5, lot_size=1), SymbolSpec("ETH-USD", tick_size=1, lot_size=1))


def command_stream(seed: int = 7, start: int = 1, prefix: str = "c") -> Iterator[Command]:
    """An endless, deterministic mix of limit orders (that cross) and cancels."""
    rng = random.Random(seed)
    live: list[tuple[str, str, str]] = []
    n = start
    while True:
        cid = f"{prefix}{n}"
        if live and rng.random() < 0.25:
            symbol, order_id, account = live.pop(rng.randrange(len(live)))
            yield Cancel(cid, n, symbol, order_id, account)
        else:
            symbol = rng.choice(("BTC-USD", "ETH-USD"))
            tick = 5 if symbol == "BTC-USD" else 1
            order_id = f"o-{prefix}{n}"
            account = f"a{rng.randrange(8)}"
            side = Side.BUY if rng.random() < 0.5 else Side.SELL
            price = tick * (1000 + rng.randrange(-20, 21))
            live.append((symbol, order_id, account))
            yield NewOrder(cid, n, symbol, order_id, account, side, rng.randrange(1, 50), price)
        n += 1


def take(stream: Iterator[Command], n: int) -> list[Command]:
    return [next(stream) for _ in range(n)]


class RecordingPublisher:
    """Records batches; can be told to fail or to block until released."""

    def __init__(self) -> None:
        self.batches: list[EventBatch] = []
        self.fail: BaseException | None = None
        self.calls = 0

    async def __call__(self, batch: EventBatch) -> None:
        self.calls += 1
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        self.batches.append(batch)

    @property
    def keys(self) -> list[tuple[int, int]]:
        return [(b.epoch, e.seq) for b in self.batches for e in b.entries]


async def replay(journal: Journal) -> tuple[MatchingEngine, int]:
    """A fresh engine fed the whole journal (no snapshot), and the last seq applied."""
    engine = MatchingEngine(SPECS)
    last = 0
    async for page in journal.iterate():
        for entry in page:
            assert entry.seq == last + 1
            engine.process(entry.command)
            last = entry.seq
    return engine, last


async def replay_digest(journal: Journal) -> tuple[str, int]:
    """Digest of a fresh engine fed the whole journal (no snapshot)."""
    engine, last = await replay(journal)
    return engine.digest(), last

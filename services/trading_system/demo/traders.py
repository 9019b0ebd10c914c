"""Simulated traders: a seeded RNG decides what each one does next (pure)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from trading_system.matching.core import Side, SymbolSpec
from trading_system.pipeline.orders import OrderRequest


@dataclass(frozen=True, slots=True)
class Place:
    order: OrderRequest


@dataclass(frozen=True, slots=True)
class CancelOrder:
    order: OrderRequest


@dataclass(frozen=True, slots=True)
class ReplaceOrder:
    """Replace as cancel + new (a new 3PC transaction holds the new order's funds)."""

    old: OrderRequest
    new: OrderRequest


Action = Place | CancelOrder | ReplaceOrder


@dataclass(slots=True)
class TraderSim:
    """Draws actions; ``mids`` wander so books cross and trade now and then."""

    accounts: list[str]
    specs: list[SymbolSpec]
    seed: int = 7
    cancel_ratio: float = 0.2
    replace_ratio: float = 0.1
    prefix: str = ""  # makes order ids unique across runs sharing one database
    rng: random.Random = field(init=False)
    mids: dict[str, int] = field(init=False)
    live: dict[str, list[OrderRequest]] = field(init=False)
    _next_id: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.mids = {s.symbol: s.reference_price for s in self.specs}
        self.live = {a: [] for a in self.accounts}

    def next_action(self) -> Action:
        account = self.rng.choice(self.accounts)
        mine = self.live[account]
        roll = self.rng.random()
        if mine and roll < self.cancel_ratio:
            return CancelOrder(mine.pop(self.rng.randrange(len(mine))))
        if mine and roll < self.cancel_ratio + self.replace_ratio:
            old = mine.pop(self.rng.randrange(len(mine)))
            new = self._order(account, old.symbol, old.side)
            mine.append(new)
            return ReplaceOrder(old, new)
        spec = self.rng.choice(self.specs)
        order = self._order(account, spec.symbol, self.rng.choice((Side.BUY, Side.SELL)))
        mine.append(order)
        if len(mine) > 20:
            mine.pop(0)  # forget the oldest: it most likely traded already
        return Place(order)

    def _order(self, account: str, symbol: str, side: Side) -> OrderRequest:
        spec = next(s for s in self.specs if s.symbol == symbol)
        step = spec.tick_size
        mid = self.mids[symbol] = max(step * 50, self.mids[symbol] + step * self.rng.randint(-1, 1))
        # Most orders rest near the mid; a third cross it by a few ticks and trade.
        offset = self.rng.randint(-2, 5) * step
        price = mid - offset if side == Side.BUY else mid + offset
        self._next_id += 1
        qty = spec.lot_size * self.rng.randint(1, 10)
        return OrderRequest(f"{self.prefix}{account}-{self._next_id}", account, symbol, side, qty, price)

    def forget(self, account: str, order_id: str) -> None:
        self.live[account] = [o for o in self.live[account] if o.order_id != order_id]

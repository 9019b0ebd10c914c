"""Random interleavings of ledger operations, checked against a model of per-asset totals.

Used by the property tests on SQLite (many examples) and PostgreSQL (fewer). Each step
is one ledger call; after each step the reconciliation must pass, and the totals per
(account, asset) must equal what deposits and settled trades imply.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from hypothesis import event
from hypothesis import strategies as st

from tests.unit.ledger.helpers import (
    BTC_DEPOSIT,
    BTC_USD,
    FEE_BPS,
    USD_DEPOSIT,
    World,
    place_buy,
    place_sell,
    trade,
)
from trading_system.ledger import (
    FEE_ACCOUNT,
    InsufficientFundsError,
    SettlementStatus,
    TradeSettlement,
    buy_reservation,
    deposit,
    get_balances,
    reconcile,
    release,
    settle_trade,
    settle_trades,
)

ACCOUNTS = ("alice", "bob", "carol")


@dataclass(frozen=True)
class Deposit:
    account: int
    asset: str
    amount: int


@dataclass(frozen=True)
class Buy:
    account: int
    price: int
    qty: int


@dataclass(frozen=True)
class Sell:
    account: int
    qty: int


@dataclass(frozen=True)
class Fill:
    buy: int  # index into the open orders, modulo their number
    sell: int
    size: float  # share of the largest possible fill
    improvement: float  # share of the buy limit given back as a better price
    batch_with_duplicate: bool  # settle in a batch together with an old trade again


@dataclass(frozen=True)
class Cancel:
    order: int


@dataclass(frozen=True)
class LateFill:
    """A fill of an order whose hold was already released (a cancel that won the race)."""

    order: int
    other: int


@dataclass(frozen=True)
class Redeliver:
    trade: int


Step = Deposit | Buy | Sell | Fill | Cancel | LateFill | Redeliver

account_index = st.integers(0, len(ACCOUNTS) - 1)
_fill = st.builds(
    Fill, st.integers(0, 50), st.integers(0, 50), st.floats(0, 1), st.floats(0, 0.2), st.booleans()
)
# Orders and fills are drawn more often than the rest so most examples really trade.
steps: st.SearchStrategy[Step] = st.one_of(
    st.builds(Deposit, account_index, st.sampled_from(["USD", "BTC"]), st.integers(1, 50_000)),
    st.builds(Buy, account_index, st.integers(1_000, 60_000), st.integers(1, 40)),
    st.builds(Buy, account_index, st.integers(1_000, 30_000), st.integers(1, 10)),
    st.builds(Sell, account_index, st.integers(1, 40)),
    st.builds(Sell, account_index, st.integers(1, 10)),
    _fill,
    _fill,
    _fill,
    st.builds(Cancel, st.integers(0, 50)),
    st.builds(LateFill, st.integers(0, 50), st.integers(0, 50)),
    st.builds(Redeliver, st.integers(0, 50)),
)


@dataclass
class Order:
    order_id: str
    account: str
    buy: bool
    limit: int
    leaves: int
    open: bool = True


@dataclass
class Model:
    totals: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    orders: list[Order] = field(default_factory=list)
    trades: list[TradeSettlement] = field(default_factory=list)
    counter: int = 0

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def book(self, t: TradeSettlement) -> None:
        self.totals[(t.buyer_account, "BTC")] += t.qty
        self.totals[(t.buyer_account, "USD")] -= t.notional + t.buyer_fee
        self.totals[(t.seller_account, "BTC")] -= t.qty
        self.totals[(t.seller_account, "USD")] += t.notional - t.seller_fee
        self.totals[(FEE_ACCOUNT, "USD")] += t.buyer_fee + t.seller_fee
        self.trades.append(t)


class ScenarioRunner:
    def __init__(self, world: World) -> None:
        self.world = world
        self.model = Model()
        for name in ACCOUNTS:
            self.model.totals[(name, "USD")] = USD_DEPOSIT
            self.model.totals[(name, "BTC")] = BTC_DEPOSIT

    async def run(self, plan: list[Step]) -> None:
        for step in plan:
            await self.apply(step)
            await self.check()

    async def apply(self, step: Step) -> None:
        w, m = self.world, self.model
        if isinstance(step, Deposit):
            name = ACCOUNTS[step.account]
            await deposit(
                w.engine,
                w.fence,
                deposit_id=m.next_id("d"),
                account_id=name,
                asset=step.asset,
                amount=step.amount,
            )
            m.totals[(name, step.asset)] += step.amount
        elif isinstance(step, Buy | Sell):
            await self._place(step)
        elif isinstance(step, Fill):
            await self._fill(step)
        elif isinstance(step, Cancel):
            open_orders = [o for o in m.orders if o.open]
            if open_orders:
                order = open_orders[step.order % len(open_orders)]
                await release(w.engine, w.fence, f"tx-{order.order_id}", reason="cancel")
                order.open = False
        elif isinstance(step, LateFill):
            await self._late_fill(step)
        elif isinstance(step, Redeliver) and m.trades:
            old = m.trades[step.trade % len(m.trades)]
            assert (await settle_trade(w.engine, w.fence, old)).status is SettlementStatus.DUPLICATE
            event("redelivered")

    async def _place(self, step: Buy | Sell) -> None:
        w, m = self.world, self.model
        name = ACCOUNTS[step.account]
        order_id = m.next_id("o")
        if isinstance(step, Buy):
            asset, amount = "USD", buy_reservation(BTC_USD, step.price, step.qty, FEE_BPS)
        else:
            asset, amount = "BTC", step.qty
        available = {b.asset: b.available for b in await get_balances(w.engine, name)}.get(asset, 0)
        try:
            if isinstance(step, Buy):
                await place_buy(w, name, order_id, step.price, step.qty)
            else:
                await place_sell(w, name, order_id, step.qty)
        except InsufficientFundsError:
            event("reserve refused")
            assert available < amount
            return
        assert available >= amount
        limit = step.price if isinstance(step, Buy) else 0
        m.orders.append(Order(order_id, name, isinstance(step, Buy), limit, step.qty))

    async def _fill(self, step: Fill) -> None:
        w, m = self.world, self.model
        buys = [o for o in m.orders if o.open and o.buy and o.leaves]
        sells = [o for o in m.orders if o.open and not o.buy and o.leaves]
        if not buys or not sells:
            return
        b, s = buys[step.buy % len(buys)], sells[step.sell % len(sells)]
        qty = max(1, round(min(b.leaves, s.leaves) * step.size))
        price = max(1, b.limit - int(b.limit * step.improvement))
        t = trade(m.next_id("t"), price, qty, (b.account, b.order_id), (s.account, s.order_id))
        if step.batch_with_duplicate and m.trades:
            result = await settle_trades(w.engine, w.fence, [m.trades[-1], t, t])
            assert [r.trade_id for r in result.settled] == [t.trade_id] and not result.failed
            assert len(result.duplicates) == 2
        else:
            assert (await settle_trade(w.engine, w.fence, t)).status is SettlementStatus.SETTLED
        event(
            "fill settled" + (" in a batch with duplicates" if step.batch_with_duplicate and m.trades else "")
        )
        m.book(t)
        for order in (b, s):
            order.leaves -= qty
            order.open = order.leaves > 0

    async def _late_fill(self, step: LateFill) -> None:
        w, m = self.world, self.model
        closed = [o for o in m.orders if not o.open and o.leaves]
        others = [o for o in m.orders if o.leaves]
        if not closed:
            return
        late = closed[step.order % len(closed)]
        partners = [o for o in others if o.buy != late.buy and o.order_id != late.order_id]
        if not partners:
            return
        other = partners[step.other % len(partners)]
        b, s = (late, other) if late.buy else (other, late)
        qty = min(b.leaves, s.leaves)
        t = trade(m.next_id("t"), max(b.limit, 1_000), qty, (b.account, b.order_id), (s.account, s.order_id))
        try:
            await settle_trade(w.engine, w.fence, t)
        except InsufficientFundsError:
            event("late fill refused")
            return  # refused as a whole; the model (and the check) say nothing moved
        event("late fill settled from available")
        m.book(t)
        for order in (b, s):
            order.leaves -= qty
            order.open = order.open and order.leaves > 0

    async def check(self) -> None:
        report = await reconcile(self.world.engine)
        assert report.ok, report.breaks
        actual: dict[tuple[str, str], int] = {}
        for name in (*ACCOUNTS, FEE_ACCOUNT):
            for b in await get_balances(self.world.engine, name):
                actual[(name, b.asset)] = b.total
        expected = {k: v for k, v in self.model.totals.items() if v or k in actual}
        assert {k: actual.get(k, 0) for k in expected} == expected


async def run_scenario(world: World, plan: list[Step]) -> None:
    await ScenarioRunner(world).run(plan)

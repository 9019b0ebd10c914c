"""Hypothesis strategies: small, collision-heavy command streams.

Few order ids, accounts and prices on purpose, so levels stack up, self-trades happen
and stops trigger. The stream is generated against the reference model, so most
cancels and replaces target an order that is live at that point, and new orders
mostly use an id that is free; a few deliberately miss, to exercise the rejects.
"""

from __future__ import annotations

from random import Random
from typing import Any

from hypothesis import strategies as st

from tests.unit.matching.reference import ReferenceEngine
from trading_system.matching.core import (
    AdvanceTime,
    Cancel,
    Command,
    MassCancel,
    NewOrder,
    OrderType,
    Replace,
    Side,
    StpMode,
    SymbolSpec,
    TimeInForce,
)

ORDER_IDS = [f"o{i}" for i in range(20)]
ACCOUNTS = ["a", "b", "c"]
SYMBOLS = ["AAA", "BBB"]

# Mostly valid values; BBB also has an off-tick price, prices outside its band, an
# off-lot and an oversize quantity. Buyers bid a little higher than sellers ask, so
# plenty of orders cross.
PRICES = {"AAA": list(range(96, 105)), "BBB": [*range(90, 115, 5)] * 4 + [85, 101, 115]}
_SIDE_PRICES = {
    ("AAA", Side.BUY): list(range(98, 105)),
    ("AAA", Side.SELL): list(range(96, 103)),
    ("BBB", Side.BUY): [*range(95, 115, 5)] * 4 + [85, 101, 115],
    ("BBB", Side.SELL): [*range(90, 110, 5)] * 4 + [85, 101, 115],
}
QTYS = {"AAA": [1, 2, 3, 5, 8], "BBB": [10, 20, 30, 50] * 4 + [5, 400]}
_TYPES = [OrderType.LIMIT] * 6 + [OrderType.MARKET, OrderType.STOP, OrderType.STOP_LIMIT]
_TIFS = [TimeInForce.GTC] * 5 + [TimeInForce.GTD, TimeInForce.GTD, TimeInForce.IOC, TimeInForce.FOK]

Ref = tuple[str, str, str]  # order id, account, symbol


def specs(stp_mode: StpMode) -> list[SymbolSpec]:
    """AAA: unit tick and lot, no band. BBB: tick 5, lot 10, quantity limits, a 20% band."""
    return [
        SymbolSpec("AAA"),
        SymbolSpec(
            "BBB",
            tick_size=5,
            lot_size=10,
            min_qty=10,
            max_qty=300,
            band_bps=2_000,
            reference_price=100,
            stp_mode=stp_mode,
        ),
    ]


def _live(model: ReferenceEngine) -> list[Ref]:
    return sorted((o.order_id, o.account, b.spec.symbol) for b, o in model.live())


def _target(rng: Random, live: list[Ref]) -> Ref:
    """A live order most of the time, now and then with a wrong owner or symbol."""
    if live and rng.randrange(6):
        order_id, account, symbol = rng.choice(live)
    else:
        order_id, account, symbol = rng.choice(ORDER_IDS), rng.choice(ACCOUNTS), rng.choice(SYMBOLS)
    if rng.randrange(20) == 0:
        account = rng.choice(ACCOUNTS)
    if rng.randrange(20) == 0:
        symbol = rng.choice(SYMBOLS)
    return order_id, account, symbol


def new_order(rng: Random, cmd_id: int, ts: int, live: list[Ref]) -> NewOrder:
    taken = {ref[0] for ref in live}
    free = [i for i in ORDER_IDS if i not in taken]
    order_id = rng.choice(free if free and rng.randrange(10) else ORDER_IDS)
    symbol = rng.choice(SYMBOLS)
    order_type = rng.choice(_TYPES)
    tif = rng.choice(_TIFS)
    if order_type == OrderType.MARKET and tif == TimeInForce.GTD:
        tif = TimeInForce.IOC
    priced = order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
    stops = order_type in (OrderType.STOP, OrderType.STOP_LIMIT)
    resting_limit = order_type == OrderType.LIMIT and tif in (TimeInForce.GTC, TimeInForce.GTD)
    side = rng.choice([Side.BUY, Side.SELL])
    return NewOrder(
        cmd_id,
        ts,
        symbol,
        order_id,
        rng.choice(ACCOUNTS),
        side,
        rng.choice(QTYS[symbol]),
        price=rng.choice(_SIDE_PRICES[symbol, side]) if priced else 0,
        order_type=order_type,
        tif=tif,
        expire_ts=ts + rng.randint(1, 6) if tif == TimeInForce.GTD else 0,
        stop_price=rng.choice(PRICES[symbol]) if stops else 0,
        display_qty=rng.choice([0, 0, 0, *QTYS[symbol][:2]]) if resting_limit else 0,
        post_only=resting_limit and rng.randrange(6) == 0,
    )


def other_command(rng: Random, cmd_id: int, ts: int, live: list[Ref]) -> Command:
    kind = rng.choice(["cancel"] * 3 + ["replace"] * 4 + ["mass", "time", "time"])
    order_id, account, symbol = _target(rng, live)
    if kind == "cancel":
        return Cancel(cmd_id, ts, symbol, order_id, account)
    if kind == "replace":
        price = rng.choice(PRICES[symbol])
        return Replace(cmd_id, ts, symbol, order_id, account, price, rng.choice(QTYS[symbol]))
    if kind == "mass":
        scope = rng.choice(["symbol", "account", "both"])
        return MassCancel(
            cmd_id, ts, symbol if scope != "account" else None, account if scope != "symbol" else None
        )
    return AdvanceTime(cmd_id, ts)


def malformed(cmd_id: int, ts: int, choice: int) -> Any:
    wrong: Any = {"float": 100.0, "int": 7, "list": ["AAA"], "text": "later"}
    bad: list[Any] = [
        NewOrder(cmd_id, ts, "ZZZ", "o1", "a", Side.BUY, 1, 100),
        NewOrder(cmd_id, ts, "AAA", "o1", "a", Side.BUY, 1, wrong["float"]),
        NewOrder(cmd_id, ts, "AAA", wrong["int"], "a", Side.BUY, 1, 100),
        NewOrder(cmd_id, ts, "AAA", "o1", "a", wrong["int"], 1, 100),
        Cancel(cmd_id, ts, wrong["list"], "o1", "a"),
        Cancel(cmd_id, wrong["text"], "AAA", "o1", "a"),
        MassCancel(cmd_id, ts),
        ("not", "a", "command"),
    ]
    return bad[choice % len(bad)]


@st.composite
def command_streams(
    draw: st.DrawFn, stp_mode: StpMode = StpMode.CANCEL_RESTING, max_size: int = 40
) -> list[Any]:
    # Choices come from a Hypothesis-controlled Random: per-choice draws would make most
    # streams one-sided (every "simplest" choice is a buy at the lowest price).
    rng = draw(st.randoms(use_true_random=False))
    model = ReferenceEngine(specs(stp_mode))
    ts = 1
    stream: list[Any] = []
    for cmd_id in range(draw(st.integers(1, max_size))):
        ts += rng.choice([0, 0, 0, 1, 1, 2])
        roll = rng.randrange(30)
        live = _live(model)
        cmd: Any
        if roll < 21:
            cmd = new_order(rng, cmd_id, ts, live)
        elif roll < 29:
            cmd = other_command(rng, cmd_id, ts, live)
        else:
            cmd = malformed(cmd_id, ts, rng.randrange(20))
        model.process(cmd)
        stream.append(cmd)
    return stream


def stp_and_stream(max_size: int = 60) -> st.SearchStrategy[tuple[StpMode, list[Any]]]:
    return st.sampled_from(list(StpMode)).flatmap(
        lambda mode: st.tuples(st.just(mode), command_streams(mode, max_size))
    )

"""Reservation and fill arithmetic: a hold made by ``buy_reservation`` pays every fill."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading_system.ledger.consumption import draw
from trading_system.ledger.pricing import Instrument, buy_reservation, fee, notional, trade_settlement

pytestmark = pytest.mark.unit


def test_rounding_directions() -> None:
    inst = Instrument("BTC-USD", "BTC", "USD", price_divisor=100)
    assert notional(inst, 333, 1) == 3  # settlement rounds down
    assert buy_reservation(inst, 333, 1, 0) == 4  # reservation rounds up
    assert fee(399, 25) == 0 and fee(400, 25) == 1
    assert buy_reservation(inst, 100, 100, 25) == 100 + 1  # 0.25 of fee rounds up to 1


def test_trade_settlement_charges_both_sides() -> None:
    t = trade_settlement(
        Instrument("X-Y", "X", "Y"),
        trade_id="t",
        price=200,
        qty=50,
        buyer=("a", "o1"),
        seller=("b", "o2"),
        buyer_fee_bps=10,
        seller_fee_bps=20,
    )
    assert (t.notional, t.buyer_fee, t.seller_fee) == (10_000, 10, 20)
    assert (t.buyer_account, t.buyer_order_id, t.seller_account, t.seller_order_id) == ("a", "o1", "b", "o2")


def test_draw_releases_price_improvement_and_the_rest_at_the_end() -> None:
    first = draw(reserved=1000, remaining=1000, order_qty=10, filled_qty=0, cost=350, fill_qty=4)
    assert (first.from_hold, first.shortfall, first.released, first.remaining) == (350, 0, 50, 600)
    last = draw(reserved=1000, remaining=600, order_qty=10, filled_qty=4, cost=500, fill_qty=6)
    assert (last.from_hold, last.released, last.remaining, last.filled_qty) == (500, 100, 0, 10)


def test_draw_on_an_empty_hold_takes_everything_from_available() -> None:
    d = draw(reserved=100, remaining=0, order_qty=10, filled_qty=0, cost=70, fill_qty=7)
    assert (d.from_hold, d.shortfall, d.released, d.available_delta, d.held_delta) == (0, 70, 0, -70, 0)


@st.composite
def orders(draw_: st.DrawFn) -> tuple[int, int, int, int, list[tuple[int, int]]]:
    divisor = draw_(st.sampled_from([1, 7, 100, 100_000_000]))
    limit = draw_(st.integers(1, 10**9))
    qty = draw_(st.integers(1, 10**6))
    fee_bps = draw_(st.integers(0, 500))
    cuts = sorted(draw_(st.sets(st.integers(1, qty - 1), max_size=6))) if qty > 1 else []
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, qty], strict=True)]
    fills = [(draw_(st.integers(1, limit)), size) for size in sizes]
    return divisor, limit, qty, fee_bps, fills


@settings(max_examples=300, deadline=None)
@given(orders())
def test_a_buy_hold_covers_every_partition_of_fills(
    order: tuple[int, int, int, int, list[tuple[int, int]]],
) -> None:
    divisor, limit, qty, fee_bps, fills = order
    inst = Instrument("S", "B", "Q", price_divisor=divisor)
    reserved = remaining = buy_reservation(inst, limit, qty, fee_bps)
    filled = paid = released = 0
    for price, size in fills:
        gross = notional(inst, price, size)
        cost = gross + fee(gross, fee_bps)
        d = draw(
            reserved=reserved, remaining=remaining, order_qty=qty, filled_qty=filled, cost=cost, fill_qty=size
        )
        assert d.shortfall == 0
        assert 0 <= d.remaining <= remaining
        remaining, filled = d.remaining, d.filled_qty
        paid += d.from_hold
        released += d.released
    assert filled == qty and remaining == 0
    assert paid + released == reserved


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=1, max_size=8))
def test_a_sell_hold_is_consumed_unit_for_unit(sizes: list[int]) -> None:
    qty = sum(sizes)
    remaining, filled = qty, 0
    for size in sizes:
        d = draw(
            reserved=qty, remaining=remaining, order_qty=qty, filled_qty=filled, cost=size, fill_qty=size
        )
        assert (d.from_hold, d.shortfall, d.released) == (size, 0, 0)
        remaining, filled = d.remaining, d.filled_qty
    assert remaining == 0

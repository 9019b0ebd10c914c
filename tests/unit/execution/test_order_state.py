"""Order state transitions, partial fills and redelivered fills."""

from __future__ import annotations

import pytest

from trading_system.execution.order_state import InvalidTransition, OrderState, OrderStatus
from trading_system.execution.rate_limit import RateLimiter
from trading_system.execution.slippage import report, slippage_bps

pytestmark = pytest.mark.unit


def test_partial_fills_then_filled_with_average_price() -> None:
    order = OrderState("o1", qty=10)
    order.accept()
    assert order.status is OrderStatus.OPEN
    assert order.fill("t1", 4, 100)
    assert order.status is OrderStatus.PARTIALLY_FILLED
    assert order.fill("t2", 6, 110)
    assert order.status is OrderStatus.FILLED
    assert order.average_price == pytest.approx(106.0)


def test_a_redelivered_fill_is_ignored() -> None:
    order = OrderState("o1", qty=10)
    assert order.fill("t1", 4, 100)
    assert not order.fill("t1", 4, 100)
    assert order.filled_qty == 4


def test_terminal_states_never_change() -> None:
    order = OrderState("o1", qty=10)
    order.cancel()
    for event in (order.accept, order.expire, lambda: order.fill("t", 1, 1)):
        with pytest.raises(InvalidTransition):
            event()
    assert order.status is OrderStatus.CANCELLED


def test_overfill_and_late_reject_are_refused() -> None:
    order = OrderState("o1", qty=5)
    order.accept()
    with pytest.raises(InvalidTransition, match="remaining"):
        order.fill("t1", 6, 100)
    with pytest.raises(InvalidTransition, match="only pending"):
        order.reject("too late")
    assert order.status is OrderStatus.OPEN and order.filled_qty == 0


def test_rate_limiter_allows_bursts_then_refills_with_time() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.allow("a", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.retry_after("a") == pytest.approx(0.5)
    assert limiter.allow("b", now=0.0)  # accounts are independent
    assert limiter.allow("a", now=0.5)
    assert not limiter.allow("a", now=0.5)


def test_slippage_is_a_cost_for_both_sides() -> None:
    assert slippage_bps("buy", 101, 100) == pytest.approx(100.0)
    assert slippage_bps("sell", 99, 100) == pytest.approx(100.0)
    rep = report("buy", [(1, 100), (3, 104)], arrival_price=100, limit_price=105)
    assert rep is not None
    assert rep.average_price == pytest.approx(103.0)
    assert rep.vs_arrival_bps == pytest.approx(300.0)
    assert rep.vs_limit_bps == pytest.approx(-190.476, rel=1e-3)
    assert report("buy", [], arrival_price=100) is None

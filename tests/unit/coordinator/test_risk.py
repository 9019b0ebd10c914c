"""The risk participant's vote."""

from __future__ import annotations

import pytest

from trading_system.coordinator.risk import RiskContext, RiskPolicy, evaluate
from trading_system.matching.core import Side
from trading_system.pipeline.orders import OrderRequest, RiskLimits

pytestmark = pytest.mark.unit

BUY = OrderRequest("o", "alice", "BTC-USD", Side.BUY, 10, 100)
SELL = OrderRequest("o", "alice", "BTC-USD", Side.SELL, 10, 100)


def test_basic_limits_need_no_context() -> None:
    policy = RiskPolicy(RiskLimits(max_qty=5, max_notional=10**9))
    assert not policy.needs_context
    assert evaluate(policy, BUY, 1_000, RiskContext()) == (False, "qty 10 above limit 5")
    assert evaluate(RiskPolicy(RiskLimits(max_notional=999)), BUY, 1_000, RiskContext())[0] is False
    assert evaluate(RiskPolicy(), BUY, 1_000, RiskContext()) == (True, "within limits")


@pytest.mark.parametrize(
    ("policy", "context", "yes", "words"),
    [
        (RiskPolicy(max_position=100), RiskContext(position=90), True, "within"),
        (RiskPolicy(max_position=100), RiskContext(position=91), False, "position"),
        (RiskPolicy(max_exposure=5_000), RiskContext(exposure=4_000), True, "within"),
        (RiskPolicy(max_exposure=5_000), RiskContext(exposure=4_001), False, "exposure"),
        (RiskPolicy(max_orders=3), RiskContext(recent_orders=2), True, "within"),
        (RiskPolicy(max_orders=3), RiskContext(recent_orders=3), False, "order rate"),
    ],
)
def test_context_limits(policy: RiskPolicy, context: RiskContext, yes: bool, words: str) -> None:
    assert policy.needs_context
    ok, reason = evaluate(policy, BUY, 1_000, context)
    assert ok is yes and words in reason


def test_sells_are_not_bound_by_buy_position_or_exposure() -> None:
    policy = RiskPolicy(max_position=0, max_exposure=0)
    assert evaluate(policy, SELL, 0, RiskContext(position=50, exposure=50))[0] is True

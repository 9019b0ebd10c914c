"""The pure parts of the in-process pipeline: conversions, settlement plans, order states."""

from __future__ import annotations

from decimal import Decimal

import pytest

from trading_system.bus.catalog import OrderCancel, OrderNew
from trading_system.bus.catalog.common import OrderType as WireOrderType
from trading_system.bus.catalog.common import Side as WireSide
from trading_system.demo.summary import Check, render_checks
from trading_system.demo.traders import Place, TraderSim
from trading_system.ledger import Instrument
from trading_system.matching.core import Cancel, MatchingEngine, NewOrder, Side, SymbolSpec
from trading_system.pipeline.orders import OrderRequest, RiskLimits, reservation, risk_vote, txn_id_for
from trading_system.pipeline.settlement import Release, plan_events
from trading_system.pipeline.tracker import OrderBook, percentile
from trading_system.pipeline.venue import ABORT_CANCEL_PREFIX, to_engine_command

pytestmark = pytest.mark.unit

SPEC = SymbolSpec("ABC-USD", tick_size=1, lot_size=1)
INSTRUMENTS = {"ABC-USD": Instrument("ABC-USD", "ABC", "USD")}


def _events() -> list[tuple[object, ...]]:
    engine = MatchingEngine([SPEC])
    events = []
    events += engine.process(NewOrder(1, 1, "ABC-USD", "s1", "alice", Side.SELL, 5, 100))
    events += engine.process(NewOrder(2, 2, "ABC-USD", "b1", "bob", Side.BUY, 3, 101))
    events += engine.process(Cancel(3, 3, "ABC-USD", "s1", "alice"))
    return [tuple(e) for e in events]


def test_catalog_messages_become_engine_commands() -> None:
    new = OrderNew(
        order_id="o1",
        client_order_id="o1",
        account="a",
        symbol="ABC-USD",
        side=WireSide.SELL,
        order_type=WireOrderType.LIMIT,
        qty=Decimal(3),
        price=Decimal(101),
    )
    command = to_engine_command(new, "m1", 7)
    assert isinstance(command, NewOrder)
    assert (command.cmd_id, command.side, command.qty, command.price, command.ts) == (
        "new:o1",
        Side.SELL,
        3,
        101,
        7,
    )
    cancel = to_engine_command(OrderCancel(order_id="o1", account="a", symbol="ABC-USD"), "m2", 8)
    assert cancel == Cancel("cancel:m2", 8, "ABC-USD", "o1", "a")


def test_settlement_plan_settles_trades_before_releasing_the_cancelled_rest() -> None:
    work = plan_events("v", _events(), INSTRUMENTS, fee_bps=10)
    assert len(work) == 2
    trades, rest = work
    assert isinstance(trades, list) and len(trades) == 1
    trade = trades[0]
    assert (trade.buyer_account, trade.seller_account, trade.qty, trade.price) == ("bob", "alice", 3, 100)
    assert trade.trade_id.startswith("v:ABC-USD:")
    assert rest == Release(txn_id_for("s1"), "cancel")


def test_an_aborts_cancel_of_an_order_the_venue_no_longer_knows_releases_its_hold() -> None:
    """The order filled completely before the abort's cancel arrived: settlement settles the
    fill first, then releases the hold; a client's cancel refused the same way releases nothing."""
    engine = MatchingEngine([SPEC])
    events = engine.process(NewOrder(1, 1, "ABC-USD", "s1", "alice", Side.SELL, 3, 100))
    events += engine.process(NewOrder(2, 2, "ABC-USD", "b1", "bob", Side.BUY, 3, 100))
    events += engine.process(Cancel(f"cancel:{ABORT_CANCEL_PREFIX}m1", 3, "ABC-USD", "b1", "bob"))
    events += engine.process(Cancel("cancel:m2", 4, "ABC-USD", "s1", "alice"))
    work = plan_events("v", [tuple(e) for e in events], INSTRUMENTS, fee_bps=10)
    assert len(work) == 2
    trades, release = work
    assert isinstance(trades, list) and trades[0].buyer_order_id == "b1"
    assert release == Release(txn_id_for("b1"), "abort")


def test_order_book_follows_the_venue_and_ignores_a_redelivered_trade() -> None:
    book = OrderBook()
    book.submitted("s1", 5)
    book.submitted("b1", 3)
    events = _events()
    for event in events:
        book.apply("v", event)
    for event in events:
        if event[1] == 3:  # the trade again
            book.apply("v", event)
    assert book.orders["b1"].status.value == "filled"
    assert book.orders["s1"].status.value == "cancelled"
    assert book.counts["trades"] == 1 and book.duplicate_trades == 1
    assert book.accepted == ["s1", "b1"]
    assert book.bbo["ABC-USD"].ask_price is None


def test_reservation_and_risk_vote() -> None:
    buy = OrderRequest("o", "a", "ABC-USD", Side.BUY, 10, 100)
    assert reservation(buy, INSTRUMENTS["ABC-USD"], 10).asset == "USD"
    assert reservation(buy, INSTRUMENTS["ABC-USD"], 10).amount == 1001
    sell = OrderRequest("o", "a", "ABC-USD", Side.SELL, 10, 100)
    assert reservation(sell, INSTRUMENTS["ABC-USD"], 10).amount == 10
    assert risk_vote(buy, RiskLimits(max_qty=10))[0]
    assert not risk_vote(buy, RiskLimits(max_qty=9))[0]


def test_traders_are_reproducible_from_their_seed() -> None:
    def actions(seed: int) -> list[object]:
        sim = TraderSim(["a", "b"], [SymbolSpec("ABC-USD", reference_price=100)], seed=seed)
        return [sim.next_action() for _ in range(200)]

    first = actions(3)
    assert first == actions(3)
    assert first != actions(4)
    assert any(isinstance(a, Place) for a in first)
    assert {type(a).__name__ for a in first} == {"Place", "CancelOrder", "ReplaceOrder"}


def test_percentile_and_check_report() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    text = render_checks([Check("x", True, "fine"), Check("y", False, "broken")])
    assert "[PASS] x: fine" in text and "[FAIL] y: broken" in text
    assert text.endswith("INVARIANTS BROKEN")

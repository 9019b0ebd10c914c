"""The execution book (pure): which orders change on which events, and the spec checks."""

from __future__ import annotations

import pytest

from trading_system.execution.book import ExecutionBook, OrderRecord
from trading_system.execution.service.app import spec_problem
from trading_system.matching.core import CancelReason, EventKind, SymbolSpec

pytestmark = pytest.mark.unit


def record(order_id: str = "o1", side: str = "buy", price: int | None = 100, qty: int = 10) -> OrderRecord:
    return OrderRecord(
        order_id=order_id,
        client_order_id=f"c-{order_id}",
        account="alice",
        symbol="S",
        side=side,
        order_type="limit" if price else "market",
        time_in_force="gtc",
        qty=qty,
        price=price,
        created_at=0.0,
        arrival_price=100.0,
    )


def test_only_known_orders_change_and_fills_are_reported() -> None:
    book = ExecutionBook()
    book.add(record("o1"))
    applied = book.apply_events(
        "v",
        [
            (1, EventKind.ACCEPTED, "S", "o1", "alice", 1, 100, 10, 1),
            (2, EventKind.ACCEPTED, "S", "other", "bob", 1, 100, 10, 1),
            (3, EventKind.TRADE, "S", 102, 4, 2, "other", "bob", 0, "o1", "alice", 6),
        ],
    )
    assert applied.changed == {"o1"} and set(book.orders) == {"o1"}
    (fill,) = applied.fills
    assert (fill.order_id, fill.qty, fill.price) == ("o1", 4, 102)
    assert fill.vs_arrival_bps == pytest.approx(200.0) and fill.vs_limit_bps == pytest.approx(200.0)
    again = book.apply_events(
        "v", [(3, EventKind.TRADE, "S", 102, 4, 2, "other", "bob", 0, "o1", "alice", 6)]
    )
    assert again.changed == set() and book.orders["o1"].state.filled_qty == 4


def test_events_on_terminal_orders_are_counted_not_applied() -> None:
    book = ExecutionBook()
    book.add(record("o1", qty=2))
    book.apply_events("v", [(1, EventKind.TRADE, "S", 100, 2, 1, "o1", "alice", 0, "m", "x", 0)])
    applied = book.apply_events(
        "v",
        [
            (2, EventKind.CANCELLED, "S", "o1", "alice", 0, CancelReason.USER),
            (3, EventKind.TRADE, "S", 100, 1, 1, "o1", "alice", 0, "m", "x", 0),
        ],
    )
    assert applied.changed == set() and book.orders["o1"].status.value == "filled"
    assert book.counts["anomalies"] == 1


def test_bbo_mid_one_sided_and_empty() -> None:
    book = ExecutionBook()
    book.apply_events("v", [(1, EventKind.BBO, "S", 99, 1, 101, 1)])
    assert book.mid("S") == 100.0
    book.apply_events("v", [(2, EventKind.BBO, "S", None, 0, 105, 1)])
    assert book.mid("S") == 105.0
    book.apply_events("v", [(3, EventKind.BBO, "S", None, 0, None, 0)])
    assert book.mid("S") == 105.0  # an empty book keeps the last reference


def test_outcome_rejects_only_pending() -> None:
    book = ExecutionBook()
    book.add(record("o1"))
    book.add(record("o2"))
    book.apply_events("v", [(1, EventKind.ACCEPTED, "S", "o2", "alice", 1, 100, 10, 1)])
    assert book.outcome("o1", committed=False, reason="no funds") is True
    assert book.orders["o1"].state.reason == "no funds"
    assert book.outcome("o2", committed=False, reason="late") is False
    assert book.outcome("o3", committed=False, reason="unknown") is False
    assert book.outcome("o2", committed=True, reason="") is False


def test_client_ids_and_selection() -> None:
    book = ExecutionBook()
    book.add(record("o1"))
    assert book.has_client_id("alice", "c-o1") and not book.has_client_id("bob", "c-o1")
    assert [r.order_id for r in book.select(account="alice", live_only=True)] == ["o1"]
    book.remove("o1")
    assert not book.has_client_id("alice", "c-o1") and book.select() == []


@pytest.mark.parametrize(
    ("qty", "price", "mid", "problem"),
    [
        (10, 100, None, None),
        (12, 100, None, "lot size"),
        (10, 103, None, "tick size"),
        (10, None, None, None),
        (10, 200, None, "bps from the reference 100"),  # the spec's reference before any BBO
        (10, 110, 100.0, None),
        (10, 115, 100.0, "bps"),
        (10, 85, 100.0, "bps"),
    ],
)
def test_spec_problem(qty: int, price: int | None, mid: float | None, problem: str | None) -> None:
    spec = SymbolSpec("S", tick_size=5, lot_size=5, band_bps=1000, reference_price=100)
    found = spec_problem(spec, qty, price, mid)
    assert (found is None) if problem is None else (found is not None and problem in found)

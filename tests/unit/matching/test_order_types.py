"""Worked examples of every order type and book operation, event by event."""

from __future__ import annotations

from typing import Any

import pytest

from trading_system.matching.core import (
    AdvanceTime,
    BookTop,
    Cancel,
    CancelReason,
    DepthLevel,
    EventKind,
    MassCancel,
    MatchingEngine,
    NewOrder,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RejectReason,
    Replace,
    Side,
    StpMode,
    SymbolSpec,
    TimeInForce,
    decode_event,
    event_to_dict,
    order_updates,
)

pytestmark = pytest.mark.unit

BUY, SELL = Side.BUY, Side.SELL


class Venue:
    """Test helper: numbered commands on one symbol, events by kind."""

    def __init__(self, stp_mode: StpMode = StpMode.CANCEL_RESTING, **spec: Any) -> None:
        self.engine = MatchingEngine([SymbolSpec("XYZ", stp_mode=stp_mode, **spec)])
        self.next_id = 0
        self.ts = 1

    def send(self, cmd_type: type, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        self.next_id += 1
        return self.engine.process(cmd_type(self.next_id, self.ts, *args, **kwargs))

    def order(
        self, order_id: str, account: str, side: Side, qty: int, price: int = 0, **kw: Any
    ) -> list[Any]:
        return self.send(NewOrder, "XYZ", order_id, account, side, qty, price, **kw)

    def cancel(self, order_id: str, account: str) -> list[Any]:
        return self.send(Cancel, "XYZ", order_id, account)

    def top(self) -> BookTop:
        return self.engine.bbo("XYZ")


def kinds(events: list[Any]) -> list[EventKind]:
    return [EventKind(e[1]) for e in events]


def trades(events: list[Any]) -> list[tuple[int, int, str, str]]:
    """(price, qty, taker, maker) of each trade."""
    return [(e[3], e[4], e[6], e[9]) for e in events if e[1] == EventKind.TRADE]


def cancelled(events: list[Any]) -> list[tuple[str, int, CancelReason]]:
    return [(e[3], e[5], e[6]) for e in events if e[1] == EventKind.CANCELLED]


def test_limit_orders_rest_and_publish_the_top() -> None:
    venue = Venue()
    assert kinds(venue.order("b1", "x", BUY, 10, 99)) == [EventKind.ACCEPTED, EventKind.BBO]
    assert kinds(venue.order("b2", "x", BUY, 5, 98)) == [
        EventKind.ACCEPTED
    ]  # behind the touch: top unchanged
    venue.order("s1", "y", SELL, 7, 101)
    assert venue.top() == BookTop("XYZ", 99, 10, 101, 7)
    depth = venue.engine.depth("XYZ", levels=5)
    assert depth.bids == (DepthLevel(99, 10, 1), DepthLevel(98, 5, 1))
    assert depth.asks == (DepthLevel(101, 7, 1),)


def test_price_time_priority_partial_fills_and_resting_price() -> None:
    venue = Venue()
    venue.order("s1", "a", SELL, 5, 101)
    venue.order("s2", "b", SELL, 5, 100)
    venue.order("s3", "c", SELL, 5, 100)
    events = venue.order("b1", "d", BUY, 12, 102)
    # Best price first, then arrival order; trades print at the resting price.
    assert trades(events) == [(100, 5, "b1", "s2"), (100, 5, "b1", "s3"), (101, 2, "b1", "s1")]
    assert [e[8] for e in events if e[1] == EventKind.TRADE] == [7, 2, 0]  # taker leaves
    assert venue.top() == BookTop("XYZ", None, 0, 101, 3)
    assert venue.engine.open_order("s1") is not None
    assert venue.engine.open_order("s1")["filled"] == 2  # type: ignore[index]


def test_aggressor_remainder_rests_at_its_limit() -> None:
    venue = Venue()
    venue.order("s1", "a", SELL, 5, 100)
    venue.order("b1", "b", BUY, 8, 101)
    assert venue.top() == BookTop("XYZ", 101, 3, None, 0)


def test_market_order_never_rests_and_reports_its_unfilled_rest() -> None:
    venue = Venue()
    venue.order("s1", "a", SELL, 4, 100)
    events = venue.order("m1", "b", BUY, 10, order_type=OrderType.MARKET)
    assert trades(events) == [(100, 4, "m1", "s1")]
    assert cancelled(events) == [("m1", 6, CancelReason.UNFILLED)]
    assert venue.top() == BookTop("XYZ", None, 0, None, 0)
    empty = venue.order("m2", "b", SELL, 1, order_type=OrderType.MARKET)
    assert kinds(empty) == [EventKind.ACCEPTED, EventKind.CANCELLED]


def test_market_order_is_collared_by_the_price_band() -> None:
    venue = Venue(band_bps=500, reference_price=100)
    venue.order("s1", "a", SELL, 1, 104)
    venue.order("s2", "a", SELL, 1, 105)
    # The band moves with the last trade: after a print at 104 the ceiling is 109.
    events = venue.order("m1", "b", BUY, 3, order_type=OrderType.MARKET)
    assert trades(events) == [(104, 1, "m1", "s1"), (105, 1, "m1", "s2")]
    assert cancelled(events) == [("m1", 1, CancelReason.UNFILLED)]


def test_ioc_fills_what_it_can_and_cancels_the_rest() -> None:
    venue = Venue()
    venue.order("s1", "a", SELL, 3, 100)
    events = venue.order("i1", "b", BUY, 5, 100, tif=TimeInForce.IOC)
    assert trades(events) == [(100, 3, "i1", "s1")]
    assert cancelled(events) == [("i1", 2, CancelReason.UNFILLED)]


def test_fok_is_all_or_nothing_before_any_fill() -> None:
    venue = Venue()
    venue.order("s1", "a", SELL, 3, 100)
    venue.order("s2", "a", SELL, 3, 101)
    before = venue.engine.digest()
    killed = venue.order("f1", "b", BUY, 7, 101, tif=TimeInForce.FOK)
    assert kinds(killed) == [EventKind.ACCEPTED, EventKind.CANCELLED]
    assert cancelled(killed) == [("f1", 7, CancelReason.FOK_UNFILLABLE)]
    assert venue.engine.digest() == before
    filled = venue.order("f2", "b", BUY, 6, 101, tif=TimeInForce.FOK)
    assert sum(t[1] for t in trades(filled)) == 6


def test_fok_counts_iceberg_reserve_but_not_own_orders_it_would_stop_at() -> None:
    venue = Venue(stp_mode=StpMode.CANCEL_AGGRESSOR)
    venue.order("ice", "a", SELL, 10, 100, display_qty=2)
    filled = venue.order("f1", "b", BUY, 10, 100, tif=TimeInForce.FOK)
    assert [t[1] for t in trades(filled)] == [2, 2, 2, 2, 2]
    venue.order("s1", "a", SELL, 2, 100)
    venue.order("own", "c", SELL, 2, 100)
    venue.order("ice2", "a", SELL, 10, 100, display_qty=2)
    # s1 (2) is reachable; then the aggressor meets its own order and would die.
    killed = venue.order("f2", "c", BUY, 3, 100, tif=TimeInForce.FOK)
    assert cancelled(killed) == [("f2", 3, CancelReason.FOK_UNFILLABLE)]


def test_post_only_is_rejected_if_it_would_cross() -> None:
    venue = Venue()
    venue.order("s1", "a", SELL, 3, 100)
    before = venue.engine.digest()
    events = venue.order("p1", "b", BUY, 1, 100, post_only=True)
    assert [(e[1], e[5]) for e in events] == [(EventKind.REJECTED, RejectReason.POST_ONLY_WOULD_CROSS)]
    assert venue.engine.digest() == before
    assert kinds(venue.order("p2", "b", BUY, 1, 99, post_only=True)) == [EventKind.ACCEPTED, EventKind.BBO]


def test_gtd_orders_expire_on_the_command_clock() -> None:
    venue = Venue()
    venue.order("g1", "a", BUY, 1, 99, tif=TimeInForce.GTD, expire_ts=5)
    venue.order("g2", "a", BUY, 1, 98, tif=TimeInForce.GTD, expire_ts=5)
    venue.order("g3", "a", BUY, 1, 97, tif=TimeInForce.GTD, expire_ts=9)
    venue.ts = 4
    assert venue.send(AdvanceTime) == []
    venue.ts = 5
    events = venue.send(AdvanceTime)
    assert [(EventKind(e[1]), e[3]) for e in events] == [
        (EventKind.EXPIRED, "g1"),
        (EventKind.EXPIRED, "g2"),
        (EventKind.BBO, 97),
    ]
    assert venue.top() == BookTop("XYZ", 97, 1, None, 0)
    # Expiry also happens ahead of any other command that moves the clock.
    venue.ts = 9
    events = venue.order("s1", "b", SELL, 1, 97)
    assert kinds(events)[:2] == [EventKind.EXPIRED, EventKind.ACCEPTED]
    assert trades(events) == []


def test_gtd_in_the_past_is_rejected() -> None:
    venue = Venue()
    venue.ts = 10
    events = venue.order("g1", "a", BUY, 1, 99, tif=TimeInForce.GTD, expire_ts=10)
    assert events[0][5] == RejectReason.INVALID_EXPIRY


def test_stop_triggers_on_last_trade_price_and_becomes_market() -> None:
    venue = Venue()
    accepted = venue.order("stop", "a", BUY, 2, order_type=OrderType.STOP, stop_price=101)
    assert kinds(accepted) == [EventKind.ACCEPTED]
    venue.order("s1", "b", SELL, 1, 101)
    venue.order("s2", "b", SELL, 5, 102)
    events = venue.order("b1", "c", BUY, 1, 101)
    assert kinds(events) == [
        EventKind.ACCEPTED,
        EventKind.TRADE,
        EventKind.TRIGGERED,
        EventKind.TRADE,
        EventKind.BBO,
    ]
    assert trades(events) == [(101, 1, "b1", "s1"), (102, 2, "stop", "s2")]


def test_stop_limit_rests_at_its_limit_after_triggering() -> None:
    venue = Venue()
    venue.order("sl", "a", SELL, 3, 98, order_type=OrderType.STOP_LIMIT, stop_price=99)
    venue.order("b1", "b", BUY, 1, 99)
    events = venue.order("s1", "c", SELL, 1, 99)
    assert EventKind.TRIGGERED in kinds(events)
    assert venue.top() == BookTop("XYZ", None, 0, 98, 3)


def test_stops_already_satisfied_trigger_immediately_and_cascade() -> None:
    venue = Venue()
    venue.order("s1", "b", SELL, 1, 100)
    venue.order("b1", "c", BUY, 1, 100)  # last = 100
    venue.order("s2", "b", SELL, 1, 103)
    events = venue.order("stop", "a", BUY, 1, order_type=OrderType.STOP, stop_price=100)
    assert kinds(events)[:3] == [EventKind.ACCEPTED, EventKind.TRIGGERED, EventKind.TRADE]


def test_iceberg_shows_only_its_display_and_refreshes_to_the_back() -> None:
    venue = Venue()
    venue.order("ice", "a", SELL, 10, 100, display_qty=3)
    venue.order("s2", "b", SELL, 2, 100)
    assert venue.top() == BookTop("XYZ", None, 0, 100, 5)
    events = venue.order("b1", "c", BUY, 6, 100)
    # 3 from the iceberg's first tranche, then s2 (the refresh queued behind it), then 1 more.
    assert trades(events) == [(100, 3, "b1", "ice"), (100, 2, "b1", "s2"), (100, 1, "b1", "ice")]
    assert venue.top() == BookTop("XYZ", None, 0, 100, 2)
    assert venue.engine.open_order("ice")["hidden"] == 4  # type: ignore[index]


def test_cancel_by_id_requires_the_owner() -> None:
    venue = Venue()
    venue.order("b1", "a", BUY, 1, 99)
    assert venue.cancel("b1", "intruder")[0][5] == RejectReason.UNKNOWN_ORDER
    assert cancelled(venue.cancel("b1", "a")) == [("b1", 1, CancelReason.USER)]
    assert venue.cancel("b1", "a")[0][5] == RejectReason.UNKNOWN_ORDER


def test_mass_cancel_by_account_and_by_symbol_in_arrival_order() -> None:
    engine = MatchingEngine([SymbolSpec("AAA"), SymbolSpec("BBB")])
    engine.process_many(
        [
            NewOrder(1, 1, "BBB", "1", "x", BUY, 1, 10),
            NewOrder(2, 1, "AAA", "2", "x", SELL, 1, 20),
            NewOrder(3, 1, "AAA", "3", "y", BUY, 1, 10),
            NewOrder(4, 1, "AAA", "4", "x", BUY, 1, 10, order_type=OrderType.STOP_LIMIT, stop_price=15),
        ]
    )
    by_account = engine.process(MassCancel(5, 1, account="x"))
    assert [(e[2], e[3]) for e in by_account if e[1] == EventKind.CANCELLED] == [
        ("BBB", "1"),
        ("AAA", "2"),
        ("AAA", "4"),
    ]
    assert [e[2] for e in by_account if e[1] == EventKind.BBO] == ["AAA", "BBB"]
    by_symbol = engine.process(MassCancel(6, 1, symbol="AAA"))
    assert [e[3] for e in by_symbol if e[1] == EventKind.CANCELLED] == ["3"]
    assert engine.process(MassCancel(7, 1))[0][5] == RejectReason.MALFORMED


def test_replace_quantity_decrease_keeps_priority() -> None:
    venue = Venue()
    venue.order("s1", "a", SELL, 5, 100)
    venue.order("s2", "b", SELL, 5, 100)
    events = venue.send(Replace, "XYZ", "s1", "a", 100, 2)
    assert [e[7] for e in events if e[1] == EventKind.REPLACED] == [True]
    assert trades(venue.order("b1", "c", BUY, 3, 100)) == [(100, 2, "b1", "s1"), (100, 1, "b1", "s2")]


def test_replace_increase_or_new_price_loses_priority_and_may_trade() -> None:
    venue = Venue()
    venue.order("s1", "a", SELL, 5, 100)
    venue.order("s2", "b", SELL, 5, 100)
    venue.send(Replace, "XYZ", "s1", "a", 100, 6)
    assert trades(venue.order("b1", "c", BUY, 1, 100)) == [(100, 1, "b1", "s2")]
    venue.order("b2", "c", BUY, 1, 98)
    events = venue.send(Replace, "XYZ", "s1", "a", 98, 6)
    assert kinds(events)[:2] == [EventKind.REPLACED, EventKind.TRADE]
    assert trades(events) == [(98, 1, "s1", "b2")]


def test_replace_counts_filled_quantity_like_fix() -> None:
    venue = Venue()
    venue.order("s1", "a", SELL, 10, 100)
    venue.order("b1", "b", BUY, 4, 100)
    events = venue.send(Replace, "XYZ", "s1", "a", 100, 6)  # 4 filled, so 2 remain open
    assert [e[6] for e in events if e[1] == EventKind.REPLACED] == [2]
    done = venue.send(Replace, "XYZ", "s1", "a", 100, 4)
    assert cancelled(done) == [("s1", 2, CancelReason.REPLACED_BELOW_FILLED)]


@pytest.mark.parametrize(
    ("mode", "expected_cancels", "trade_count"),
    [
        (StpMode.CANCEL_RESTING, [("own", 2, CancelReason.SELF_TRADE)], 2),
        (StpMode.CANCEL_AGGRESSOR, [("b1", 3, CancelReason.SELF_TRADE)], 1),
        (StpMode.CANCEL_BOTH, [("own", 2, CancelReason.SELF_TRADE), ("b1", 3, CancelReason.SELF_TRADE)], 1),
        (StpMode.ALLOW, [], 3),
    ],
)
def test_self_trade_prevention_modes(
    mode: StpMode, expected_cancels: list[tuple[str, int, CancelReason]], trade_count: int
) -> None:
    venue = Venue(stp_mode=mode)
    venue.order("s1", "other", SELL, 1, 100)
    venue.order("own", "me", SELL, 2, 100)
    venue.order("s3", "other", SELL, 5, 101)
    events = venue.order("b1", "me", BUY, 4, 101)
    assert cancelled(events) == expected_cancels
    assert len(trades(events)) == trade_count


def test_bbo_is_published_once_per_command_and_only_on_change() -> None:
    venue = Venue()
    venue.order("s1", "a", SELL, 1, 100)
    venue.order("s2", "a", SELL, 1, 100)
    venue.order("s3", "a", SELL, 1, 101)
    events = venue.order("b1", "b", BUY, 3, 101)
    assert kinds(events).count(EventKind.BBO) == 1
    assert events[-1][3:] == (None, 0, None, 0)
    assert venue.order("b2", "b", BUY, 1, 90)[-1][1] == EventKind.BBO
    assert kinds(venue.order("b3", "b", BUY, 1, 80)) == [EventKind.ACCEPTED]


def test_events_decode_to_named_records_and_order_updates() -> None:
    venue = Venue()
    venue.order("s1", "a", SELL, 5, 100)
    events = venue.order("b1", "b", BUY, 2, 100)
    trade = decode_event(events[1])
    assert trade.trade_id == trade.seq  # type: ignore[union-attr]
    assert trade.buyer == ("b1", "b")  # type: ignore[union-attr]
    assert trade.seller == ("s1", "a")  # type: ignore[union-attr]
    assert order_updates(events[1]) == [
        OrderUpdate("b1", "b", OrderStatus.FILLED, 0),
        OrderUpdate("s1", "a", OrderStatus.PARTIALLY_FILLED, 3),
    ]
    as_dict = event_to_dict(events[0])
    assert as_dict["kind"] == int(EventKind.ACCEPTED)
    assert as_dict["side"] == int(BUY)


def test_cancelling_from_the_middle_of_a_long_queue_keeps_fifo() -> None:
    venue = Venue()
    for n in range(100):
        venue.order(f"s{n}", "a", SELL, 1, 100)
    # Cancel every odd order but the last: enough dead entries to force a compaction.
    for n in range(1, 99, 2):
        venue.cancel(f"s{n}", "a")
    survivors = [f"s{n}" for n in range(100) if n % 2 == 0 or n == 99]
    assert venue.engine.depth("XYZ").asks == (DepthLevel(100, len(survivors), len(survivors)),)
    events = venue.order("sweep", "b", BUY, len(survivors), 100)
    assert [maker for _, _, _, maker in trades(events)] == survivors
    assert venue.top() == BookTop("XYZ", None, 0, None, 0)

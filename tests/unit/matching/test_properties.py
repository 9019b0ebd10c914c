"""Property-based tests: the engine against the slow reference model, plus invariants."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.matching.reference import ReferenceEngine
from tests.unit.matching.strategies import command_streams, specs, stp_and_stream
from trading_system.matching.core import (
    CancelReason,
    Command,
    Event,
    EventKind,
    MatchingEngine,
    NewOrder,
    StpMode,
    TimeInForce,
    TradeEvent,
)

pytestmark = pytest.mark.unit

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def engine_view(engine: MatchingEngine) -> dict[str, Any]:
    """The engine's books in the reference model's ``view`` shape."""
    views: dict[str, Any] = {}
    for book in engine.snapshot()["books"]:
        view: dict[str, Any] = {}
        for name in ("bids", "asks"):
            view[name] = [
                [price, [(o["order_id"], o["qty"], o["hidden"]) for o in orders]]
                for price, orders in book[name]
            ]
        view["stops"] = sorted(o["order_id"] for o in book["stops"])
        view["last_price"] = book["last_price"]
        views[book["spec"]["symbol"]] = view
    return views


def check_book_invariants(engine: MatchingEngine) -> None:
    for book in engine.snapshot()["books"]:
        symbol = book["spec"]["symbol"]
        top = engine.bbo(symbol)
        if top.bid_price is not None and top.ask_price is not None:
            assert top.bid_price < top.ask_price, f"crossed book at rest: {top}"
        depth = engine.depth(symbol, levels=1_000)
        for name, levels in (("bids", depth.bids), ("asks", depth.asks)):
            raw = book[name]
            assert [lv.price for lv in levels] == [price for price, _ in raw]
            for level, (_, orders) in zip(levels, raw, strict=True):
                # Published depth is the visible quantity only, and it matches the orders.
                assert level.qty == sum(o["qty"] for o in orders)
                assert level.orders == len(orders)
            for _, orders in raw:
                for o in orders:
                    _check_iceberg(o)
        prices = [price for price, _ in book["bids"]]
        assert prices == sorted(prices, reverse=True)
        prices = [price for price, _ in book["asks"]]
        assert prices == sorted(prices)


def _check_iceberg(order: dict[str, Any]) -> None:
    assert order["qty"] > 0
    extra = order["extra"]
    display = extra[4] if extra is not None else 0
    if display:
        # Never more on show than the display size; the reserve stays hidden.
        assert order["qty"] <= display
    else:
        assert order["hidden"] == 0


class LeavesTracker:
    """Quantity conservation: every fill, cancel and expiry is accounted to the unit."""

    def __init__(self) -> None:
        self.leaves: dict[str, int] = {}

    def apply(self, event: Event) -> None:
        kind = event[1]
        if kind == EventKind.ACCEPTED:
            self.leaves[event[3]] = event[7]
        elif kind == EventKind.TRADE:
            trade = TradeEvent._make(event)
            for order_id, reported in (
                (trade.taker_order_id, trade.taker_leaves),
                (trade.maker_order_id, trade.maker_leaves),
            ):
                self.leaves[order_id] -= trade.qty
                assert self.leaves[order_id] == reported >= 0
                if not reported:
                    del self.leaves[order_id]
        elif kind == EventKind.REPLACED:
            self.leaves[event[3]] = event[6]
        elif kind in (EventKind.CANCELLED, EventKind.EXPIRED):
            assert self.leaves.pop(event[3]) == event[5]

    def check_live(self, engine: MatchingEngine) -> None:
        live = {}
        for book in engine.snapshot()["books"]:
            orders = [o for _, level in book["bids"] + book["asks"] for o in level] + book["stops"]
            live.update({o["order_id"]: o["qty"] + o["hidden"] for o in orders})
        assert live == self.leaves


def check_fok(cmd: Command, events: list[Event], digest_before: str, digest_after: str) -> None:
    if not (isinstance(cmd, NewOrder) and cmd.tif == TimeInForce.FOK):
        return
    if any(e[1] == EventKind.REJECTED for e in events) or cmd.order_type.name.startswith("STOP"):
        return
    mine = [TradeEvent._make(e) for e in events if e[1] == EventKind.TRADE and e[6] == cmd.order_id]
    killed = [
        e
        for e in events
        if e[1] == EventKind.CANCELLED and e[3] == cmd.order_id and e[6] == CancelReason.FOK_UNFILLABLE
    ]
    if killed:
        assert not mine
        if not any(e[1] == EventKind.EXPIRED for e in events):
            assert digest_before == digest_after, "a killed FOK changed the book"
    else:
        assert sum(t.qty for t in mine) == cmd.qty


@PROPERTY_SETTINGS
@given(case=stp_and_stream())
def test_engine_matches_reference_and_keeps_invariants(case: tuple[StpMode, list[Command]]) -> None:
    stp_mode, stream = case
    engine = MatchingEngine(specs(stp_mode))
    reference = ReferenceEngine(specs(stp_mode))
    tracker = LeavesTracker()
    for cmd in stream:
        before = engine.digest()
        events = engine.process(cmd)
        assert events == reference.process(cmd), f"diverged on {cmd}"
        assert engine_view(engine) == {s: b.view() for s, b in reference.books.items()}
        check_book_invariants(engine)
        for event in events:
            tracker.apply(event)
        check_fok(cmd, events, before, engine.digest())
    tracker.check_live(engine)


@PROPERTY_SETTINGS
@given(case=stp_and_stream(), cut=st.integers(0, 40))
def test_replay_and_snapshot_restore_equal_live(case: tuple[StpMode, list[Command]], cut: int) -> None:
    stp_mode, stream = case
    live = MatchingEngine(specs(stp_mode))
    live_events = [e for cmd in stream for e in live.process(cmd)]

    replay = MatchingEngine(specs(stp_mode))
    assert replay.process_many(stream) == live_events
    assert replay.digest() == live.digest()

    cut = min(cut, len(stream))
    first = MatchingEngine(specs(stp_mode))
    head = first.process_many(stream[:cut])
    state = json.loads(json.dumps(first.snapshot()))
    restored = MatchingEngine.from_snapshot(state)
    assert restored.digest() == first.digest()
    assert head + restored.process_many(stream[cut:]) == live_events
    assert restored.snapshot() == live.snapshot()


@settings(max_examples=40, deadline=None)
@given(stream=command_streams(max_size=25))
def test_sequence_numbers_are_gapless_and_increasing(stream: list[Command]) -> None:
    engine = MatchingEngine(specs(StpMode.CANCEL_RESTING))
    seqs = [e[0] for cmd in stream for e in engine.process(cmd)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert engine.seq == len(seqs)


@settings(max_examples=40, deadline=None)
@given(stream=command_streams(max_size=25))
def test_trades_conserve_quantity_between_buyers_and_sellers(stream: list[Command]) -> None:
    engine = MatchingEngine(specs(StpMode.CANCEL_RESTING))
    bought: dict[str, int] = defaultdict(int)
    sold: dict[str, int] = defaultdict(int)
    for event in engine.process_many(stream):
        if event[1] == EventKind.TRADE:
            trade = TradeEvent._make(event)
            bought[trade.symbol] += trade.qty
            sold[trade.symbol] += trade.qty
            assert trade.buyer[1] != trade.seller[1], "STP cancel-resting let a self-trade through"
    assert bought == sold

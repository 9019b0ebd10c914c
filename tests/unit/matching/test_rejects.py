"""Bad input: every rejected command yields one reject event with a reason and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from trading_system.matching.core import (
    AddSymbol,
    Cancel,
    EventKind,
    MassCancel,
    MatchingEngine,
    NewOrder,
    OrderType,
    RejectReason,
    Replace,
    Side,
    SymbolSpec,
    TimeInForce,
)

pytestmark = pytest.mark.unit

R = RejectReason
SPEC = SymbolSpec(
    "XYZ", tick_size=5, lot_size=10, min_qty=20, max_qty=1_000, band_bps=1_000, reference_price=1_000
)
TS = 1
# Typed as Any so the deliberately wrong values below get past the type checker.
WRONG: Any = {"list": ["bid"], "float": 995.0}


def order(**overrides: Any) -> NewOrder:
    fields: dict[str, Any] = {
        "cmd_id": 99,
        "ts": TS,
        "symbol": "XYZ",
        "order_id": "new",
        "account": "acct",
        "side": Side.BUY,
        "qty": 100,
        "price": 1_000,
    }
    fields.update(overrides)
    return NewOrder(**fields)


@pytest.fixture
def engine() -> MatchingEngine:
    """A book with resting orders on both sides, an iceberg and a pending stop."""
    engine = MatchingEngine([SPEC])
    engine.process_many(
        [
            NewOrder(1, TS, "XYZ", "bid", "a", Side.BUY, 100, 995),
            NewOrder(2, TS, "XYZ", "ask", "b", Side.SELL, 100, 1_005, display_qty=20),
            NewOrder(3, TS, "XYZ", "stop", "a", Side.SELL, 50, order_type=OrderType.STOP, stop_price=990),
        ]
    )
    return engine


BAD_COMMANDS: list[tuple[str, Any, RejectReason]] = [
    ("unknown symbol", order(symbol="NOPE"), R.UNKNOWN_SYMBOL),
    ("unhashable symbol", order(symbol=["XYZ"]), R.MALFORMED),
    ("float price", order(price=1_000.0), R.MALFORMED),
    ("bool quantity", order(qty=True), R.MALFORMED),
    ("non-string order id", order(order_id=5), R.MALFORMED),
    ("timestamp missing", order(ts=None), R.MALFORMED),
    ("duplicate order id", order(order_id="bid"), R.DUPLICATE_ORDER_ID),
    ("duplicate of a pending stop", order(order_id="stop"), R.DUPLICATE_ORDER_ID),
    ("side as plain int", order(side=1), R.INVALID_SIDE),
    ("side as text", order(side="BUY"), R.INVALID_SIDE),
    ("off-lot quantity", order(qty=105), R.QTY_OFF_LOT),
    ("below minimum", order(qty=10), R.QTY_BELOW_MIN),
    ("above maximum", order(qty=1_010), R.QTY_ABOVE_MAX),
    ("zero price", order(price=0), R.INVALID_PRICE),
    ("off-tick price", order(price=1_001), R.PRICE_OFF_TICK),
    ("above the band", order(price=1_105), R.PRICE_OUT_OF_BAND),
    ("below the band", order(price=895), R.PRICE_OUT_OF_BAND),
    ("unknown order type", order(order_type=9, tif=TimeInForce.IOC), R.INVALID_ORDER_TYPE),
    ("unknown tif", order(tif=7), R.INVALID_TIF),
    ("market with a price", order(order_type=OrderType.MARKET), R.INVALID_PRICE),
    (
        "market GTD",
        order(order_type=OrderType.MARKET, price=0, tif=TimeInForce.GTD, expire_ts=5),
        R.INVALID_TIF,
    ),
    ("stop without trigger", order(order_type=OrderType.STOP, price=0), R.INVALID_STOP_PRICE),
    ("limit with a trigger", order(stop_price=1_000), R.INVALID_STOP_PRICE),
    ("GTD without expiry", order(tif=TimeInForce.GTD), R.INVALID_EXPIRY),
    ("GTC with expiry", order(expire_ts=50), R.INVALID_EXPIRY),
    ("iceberg off lot", order(display_qty=15), R.INVALID_DISPLAY_QTY),
    ("iceberg IOC", order(display_qty=20, tif=TimeInForce.IOC), R.INVALID_FLAGS),
    ("post-only IOC", order(post_only=True, tif=TimeInForce.IOC), R.INVALID_FLAGS),
    ("post-only crossing", order(post_only=True, price=1_005), R.POST_ONLY_WOULD_CROSS),
    ("cancel unknown id", Cancel(9, TS, "XYZ", "nope", "a"), R.UNKNOWN_ORDER),
    ("cancel someone else's", Cancel(9, TS, "XYZ", "bid", "b"), R.UNKNOWN_ORDER),
    ("cancel on the wrong symbol", Cancel(9, TS, "ABC", "bid", "a"), R.UNKNOWN_SYMBOL),
    ("cancel with unhashable id", Cancel(9, TS, "XYZ", WRONG["list"], "a"), R.UNKNOWN_ORDER),
    ("replace unknown id", Replace(9, TS, "XYZ", "nope", "a", 1_000, 100), R.UNKNOWN_ORDER),
    ("replace a pending stop", Replace(9, TS, "XYZ", "stop", "a", 1_000, 100), R.NOT_REPLACEABLE),
    ("replace off tick", Replace(9, TS, "XYZ", "bid", "a", 996, 100), R.PRICE_OFF_TICK),
    ("replace off lot", Replace(9, TS, "XYZ", "bid", "a", 995, 101), R.QTY_OFF_LOT),
    ("replace float price", Replace(9, TS, "XYZ", "bid", "a", WRONG["float"], 100), R.MALFORMED),
    ("mass cancel without scope", MassCancel(9, TS), R.MALFORMED),
    ("mass cancel unknown symbol", MassCancel(9, TS, symbol="NOPE"), R.UNKNOWN_SYMBOL),
    ("add existing symbol", AddSymbol(9, TS, SPEC), R.SYMBOL_EXISTS),
    ("add symbol with zero tick", AddSymbol(9, TS, SymbolSpec("NEW", tick_size=0)), R.INVALID_SPEC),
    ("add symbol min above max", AddSymbol(9, TS, SymbolSpec("NEW", min_qty=5, max_qty=4)), R.INVALID_SPEC),
    ("add something else", AddSymbol(9, TS, {"symbol": "NEW"}), R.MALFORMED),  # type: ignore[arg-type]
    ("not a command", ("NewOrder", 1, 2), R.MALFORMED),
]


@pytest.mark.parametrize(("name", "cmd", "reason"), BAD_COMMANDS, ids=[c[0] for c in BAD_COMMANDS])
def test_bad_command_is_rejected_with_reason_and_changes_nothing(
    engine: MatchingEngine, name: str, cmd: Any, reason: RejectReason
) -> None:
    before, seq = engine.digest(), engine.seq
    events = engine.process(cmd)
    assert len(events) == 1, events
    event = events[0]
    assert event[:2] == (seq + 1, EventKind.REJECTED)
    assert event[5] == reason
    assert engine.digest() == before


def test_reject_names_the_command_and_order() -> None:
    engine = MatchingEngine([SPEC])
    (event,) = engine.process(order(cmd_id="c-17", symbol="NOPE", order_id="o-1"))
    assert event[2:5] == ("c-17", "NOPE", "o-1")


def test_engine_refuses_a_bad_spec_at_construction() -> None:
    with pytest.raises(ValueError, match="INVALID_SPEC"):
        MatchingEngine([SymbolSpec("X", lot_size=0)])


def test_add_symbol_opens_a_new_book() -> None:
    engine = MatchingEngine()
    assert engine.process(AddSymbol(1, 1, SymbolSpec("NEW")))[0][1:] == (EventKind.SYMBOL_ADDED, "NEW")
    assert engine.symbols == ["NEW"]
    assert engine.process(NewOrder(2, 1, "NEW", "o", "a", Side.BUY, 1, 1))[0][1] == EventKind.ACCEPTED

"""Books to plain JSON-ready data and back.

The plain form lists each side's levels best first and each level's live orders in
queue order, so it captures time priority exactly while dropping the internal
bookkeeping (dead queue entries, stale expiry entries) that never affects events.
"""

from __future__ import annotations

from typing import Any

from trading_system.matching.core.book import Book, BookSide, Order, OrderExtra
from trading_system.matching.core.types import OrderType, Side, StpMode, SymbolSpec, TimeInForce

FORMAT = 1


def order_to_dict(order: Order) -> dict[str, Any]:
    extra = order.extra
    return {
        "order_id": order.order_id,
        "account": order.account,
        "side": int(order.side),
        "price": order.price,
        "qty": order.qty,
        "hidden": order.hidden,
        "filled": order.filled,
        "seq": order.seq,
        "extra": None if extra is None else _extra_to_list(extra),
    }


def _extra_to_list(extra: OrderExtra) -> list[Any]:
    return [
        int(extra.order_type),
        int(extra.tif),
        extra.expire_ts,
        extra.stop_price,
        extra.display_qty,
        extra.post_only,
    ]


def order_from_dict(data: dict[str, Any]) -> Order:
    raw = data["extra"]
    extra = None
    if raw is not None:
        order_type, tif, expire_ts, stop_price, display_qty, post_only = raw
        extra = OrderExtra(
            OrderType(order_type), TimeInForce(tif), expire_ts, stop_price, display_qty, post_only
        )
    order = Order(
        data["order_id"],
        data["account"],
        Side(data["side"]),
        data["price"],
        data["qty"],
        data["filled"],
        data["seq"],
        extra,
    )
    order.hidden = data["hidden"]
    return order


def spec_to_dict(spec: SymbolSpec) -> dict[str, Any]:
    return {**spec._asdict(), "stp_mode": int(spec.stp_mode)}


def spec_from_dict(data: dict[str, Any]) -> SymbolSpec:
    return SymbolSpec(**{**data, "stp_mode": StpMode(data["stp_mode"])})


def book_to_plain(book: Book) -> dict[str, Any]:
    stops = sorted((entry[2] for entry in book.buy_stops + book.sell_stops), key=lambda o: o.seq)
    return {
        "spec": spec_to_dict(book.spec),
        "last_price": book.last_price,
        "last_bbo": list(book.last_bbo),
        "bids": _side_to_plain(book.bids),
        "asks": _side_to_plain(book.asks),
        "stops": [order_to_dict(o) for o in stops],
    }


def _side_to_plain(side: BookSide) -> list[list[Any]]:
    return [[level.price, [order_to_dict(o) for o in level.live_orders()]] for level in side.best_first()]


def book_from_plain(data: dict[str, Any]) -> tuple[Book, list[Order]]:
    """The book and all its live orders (resting and pending stops)."""
    book = Book(spec_from_dict(data["spec"]))
    book.last_price = data["last_price"]
    if book.last_price:
        book.set_reference(book.last_price)
    bid_price, bid_qty, ask_price, ask_qty = data["last_bbo"]
    book.last_bbo = (bid_price, bid_qty, ask_price, ask_qty)
    live: list[Order] = []
    for side, levels in ((book.bids, data["bids"]), (book.asks, data["asks"])):
        for price, orders in levels:
            level = side.level_for(price)
            for raw in orders:
                order = order_from_dict(raw)
                order.level = level
                level.orders.append(order)
                level.qty += order.qty
                live.append(order)
    for raw in data["stops"]:
        order = order_from_dict(raw)
        assert order.extra is not None
        order.extra.book = book
        book.add_stop(order, order.extra.stop_price)
        live.append(order)
    return book, live

"""Command validation: pure checks that run before the engine changes anything.

Every function returns a :class:`RejectReason` on failure, so a rejected command
provably leaves the book untouched. Types are checked explicitly because a float or
bool price would otherwise slip through the modulo checks and break exactness.
"""

from __future__ import annotations

from trading_system.matching.core.book import Book, Order
from trading_system.matching.core.types import (
    PRICED_TYPES,
    RESTING_TIFS,
    STOP_TYPES,
    OrderType,
    RejectReason,
    Side,
    StpMode,
    SymbolSpec,
    TimeInForce,
    Untrusted,
)

_LIMIT = OrderType.LIMIT
_MARKET = OrderType.MARKET
_STOP = OrderType.STOP
_STOP_LIMIT = OrderType.STOP_LIMIT
_GTC = TimeInForce.GTC
_GTD = TimeInForce.GTD
_BUY = Side.BUY
_SELL = Side.SELL


def lookup_book(books: dict[str, Book], symbol: object) -> Book | RejectReason:
    if type(symbol) is not str:
        return RejectReason.MALFORMED
    book = books.get(symbol)
    return RejectReason.UNKNOWN_SYMBOL if book is None else book


def check_qty(book: Book, qty: int) -> RejectReason | None:
    if qty % book.lot:
        return RejectReason.QTY_OFF_LOT
    if qty < book.min_qty:
        return RejectReason.QTY_BELOW_MIN
    if qty > book.max_qty:
        return RejectReason.QTY_ABOVE_MAX
    return None


def check_limit_price(book: Book, price: int) -> RejectReason | None:
    if price <= 0:
        return RejectReason.INVALID_PRICE
    if price % book.tick:
        return RejectReason.PRICE_OFF_TICK
    if price < book.band_low or price > book.band_high:
        return RejectReason.PRICE_OUT_OF_BAND
    return None


def would_cross(book: Book, side: int, price: int) -> bool:
    opposite = book.asks if side == _BUY else book.bids
    keys = opposite.keys
    return bool(keys) and keys[-1] + side * price >= 0


def validate_new(
    books: dict[str, Book], orders: dict[str, Order], clock: int, cmd: Untrusted
) -> Book | RejectReason:
    """The book the order goes to, or why it is rejected.

    The plain GTC limit order, by far the most common, is decided in the first half
    without touching the rarely used fields.
    """
    book = lookup_book(books, cmd.symbol)
    if type(book) is not Book:
        return book
    order_id, qty, price = cmd.order_id, cmd.qty, cmd.price
    if (
        type(qty) is not int
        or type(price) is not int
        or type(order_id) is not str
        or type(cmd.account) is not str
    ):
        return RejectReason.MALFORMED
    if order_id in orders:
        return RejectReason.DUPLICATE_ORDER_ID
    side = cmd.side
    if side is not _BUY and side is not _SELL:
        return RejectReason.INVALID_SIDE
    reason = check_qty(book, qty)
    if reason is not None:
        return reason
    if (
        cmd.order_type == _LIMIT
        and cmd.tif == _GTC
        and not (cmd.expire_ts or cmd.stop_price or cmd.display_qty or cmd.post_only)
    ):
        return check_limit_price(book, price) or book
    return _validate_special(book, clock, cmd) or book


def _validate_special(book: Book, clock: int, cmd: Untrusted) -> RejectReason | None:
    order_type, tif = cmd.order_type, cmd.tif
    if type(order_type) is not OrderType:
        return RejectReason.INVALID_ORDER_TYPE
    if type(tif) is not TimeInForce or (order_type == _MARKET and tif == _GTD):
        return RejectReason.INVALID_TIF
    return (
        _check_type_price(book, cmd)
        or _check_expiry(clock, tif, cmd.expire_ts)
        or _check_display(book, cmd)
        or _check_post_only(book, cmd)
    )


def _check_type_price(book: Book, cmd: Untrusted) -> RejectReason | None:
    order_type, price, stop_price = cmd.order_type, cmd.price, cmd.stop_price
    if order_type in PRICED_TYPES:
        reason = check_limit_price(book, price)
        if reason is not None:
            return reason
    elif price != 0:
        return RejectReason.INVALID_PRICE
    if order_type in STOP_TYPES:
        if type(stop_price) is not int or stop_price <= 0 or stop_price % book.tick:
            return RejectReason.INVALID_STOP_PRICE
    elif stop_price != 0:
        return RejectReason.INVALID_STOP_PRICE
    return None


def _check_expiry(clock: int, tif: int, expire_ts: object) -> RejectReason | None:
    if tif == _GTD:
        if type(expire_ts) is not int or expire_ts <= clock:
            return RejectReason.INVALID_EXPIRY
    elif expire_ts != 0:
        return RejectReason.INVALID_EXPIRY
    return None


def _check_display(book: Book, cmd: Untrusted) -> RejectReason | None:
    display = cmd.display_qty
    if display == 0:
        return None
    if type(display) is not int or display < 0 or display % book.lot:
        return RejectReason.INVALID_DISPLAY_QTY
    if cmd.order_type != _LIMIT or cmd.tif not in RESTING_TIFS:
        return RejectReason.INVALID_FLAGS
    return None


def _check_post_only(book: Book, cmd: Untrusted) -> RejectReason | None:
    if not cmd.post_only:
        return None
    if cmd.post_only is not True or cmd.order_type != _LIMIT or cmd.tif not in RESTING_TIFS:
        return RejectReason.INVALID_FLAGS
    if would_cross(book, cmd.side, cmd.price):
        return RejectReason.POST_ONLY_WOULD_CROSS
    return None


def validate_replace(
    books: dict[str, Book], orders: dict[str, Order], cmd: Untrusted
) -> Order | RejectReason:
    """The resting order to replace, or why the replace is rejected."""
    book = lookup_book(books, cmd.symbol)
    if not isinstance(book, Book):
        return book
    price, qty = cmd.price, cmd.qty
    if type(price) is not int or type(qty) is not int or type(cmd.order_id) is not str:
        return RejectReason.MALFORMED
    order = find_own_order(book, orders, cmd.order_id, cmd.account)
    if order is None:
        return RejectReason.UNKNOWN_ORDER
    if order.level is None:
        return RejectReason.NOT_REPLACEABLE
    reason = check_qty(book, qty)
    if reason is None and price != order.price:
        reason = check_limit_price(book, price)
        extra = order.extra
        if reason is None and extra is not None and extra.post_only and would_cross(book, order.side, price):
            reason = RejectReason.POST_ONLY_WOULD_CROSS
    return order if reason is None else reason


def find_own_order(book: Book, orders: dict[str, Order], order_id: object, account: object) -> Order | None:
    """The live order with this id on this book and account.

    A foreign account's order is reported as unknown so ids of other accounts' orders
    cannot be probed.
    """
    if type(order_id) is not str:
        return None
    order = orders.get(order_id)
    if order is None or order.account != account or order_book(order) is not book:
        return None
    return order


def order_book(order: Order) -> Book:
    level = order.level
    if level is not None:
        return level.book
    extra = order.extra
    assert extra is not None and extra.book is not None, "a pending stop always knows its book"
    return extra.book


def validate_spec(books: dict[str, Book], spec: object) -> RejectReason | None:
    if not isinstance(spec, SymbolSpec):
        return RejectReason.MALFORMED
    ints = (spec.tick_size, spec.lot_size, spec.min_qty, spec.max_qty, spec.band_bps, spec.reference_price)
    if type(spec.symbol) is not str or not spec.symbol or any(type(v) is not int for v in ints):
        return RejectReason.INVALID_SPEC
    if spec.symbol in books:
        return RejectReason.SYMBOL_EXISTS
    if spec.tick_size <= 0 or spec.lot_size <= 0 or spec.min_qty <= 0 or spec.max_qty < spec.min_qty:
        return RejectReason.INVALID_SPEC
    if spec.band_bps < 0 or spec.reference_price < 0 or spec.stp_mode not in frozenset(StpMode):
        return RejectReason.INVALID_SPEC
    return None

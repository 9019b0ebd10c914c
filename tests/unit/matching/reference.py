"""A slow, obviously-correct model of the matching core, used only as a test oracle.

No clever data structures: every book is one flat list of orders, "best" is found by
sorting, FOK is decided by running the order on a deep copy, and the top of book is
recomputed for every book after every command. It emits the same event tuples as the
engine (docs/matching.md is the contract both follow), so tests compare them 1:1.
Symbols are fixed at construction (AddSymbol is covered by example tests instead).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trading_system.matching.core import (
    AdvanceTime,
    Cancel,
    CancelReason,
    EventKind,
    MassCancel,
    NewOrder,
    OrderType,
    RejectReason,
    Replace,
    Side,
    StpMode,
    SymbolSpec,
    TimeInForce,
)

Event = tuple[Any, ...]
MALFORMED = RejectReason.MALFORMED


@dataclass
class RefOrder:
    order_id: str
    account: str
    side: Side
    price: int
    visible: int
    order_type: OrderType
    tif: TimeInForce
    expire_ts: int
    stop_price: int
    display: int
    post_only: bool
    seq: int
    filled: int = 0
    hidden: int = 0
    priority: int = 0
    pending_stop: bool = False

    @property
    def leaves(self) -> int:
        return self.visible + self.hidden


@dataclass
class RefBook:
    spec: SymbolSpec
    orders: list[RefOrder] = field(default_factory=list)  # resting and pending stops
    last_price: int = 0
    last_bbo: tuple[int | None, int, int | None, int] = (None, 0, None, 0)

    def band(self) -> tuple[int, int]:
        reference = self.last_price or self.spec.reference_price
        bps = self.spec.band_bps
        if bps <= 0 or reference <= 0:
            return 0, 1 << 62
        low = reference * (10_000 - bps)
        return (low + 9_999) // 10_000, reference * (10_000 + bps) // 10_000

    def resting(self, side: Side) -> list[RefOrder]:
        """Resting orders of one side, best first (price, then time priority)."""
        mine = [o for o in self.orders if o.side == side and not o.pending_stop]
        return sorted(mine, key=lambda o: (-o.price * side, o.priority))

    def top(self) -> tuple[int | None, int, int | None, int]:
        result: list[Any] = []
        for side in (Side.BUY, Side.SELL):
            queue = self.resting(side)
            if not queue:
                result += [None, 0]
            else:
                price = queue[0].price
                result += [price, sum(o.visible for o in queue if o.price == price)]
        return result[0], result[1], result[2], result[3]

    def view(self) -> dict[str, Any]:
        """Levels best first with (order id, visible, hidden) in queue order."""
        sides: dict[str, Any] = {}
        for name, side in (("bids", Side.BUY), ("asks", Side.SELL)):
            levels: list[list[Any]] = []
            for o in self.resting(side):
                if not levels or levels[-1][0] != o.price:
                    levels.append([o.price, []])
                levels[-1][1].append((o.order_id, o.visible, o.hidden))
            sides[name] = levels
        sides["stops"] = sorted(o.order_id for o in self.orders if o.pending_stop)
        sides["last_price"] = self.last_price
        return sides


class ReferenceEngine:
    def __init__(self, specs: list[SymbolSpec]) -> None:
        self.books = {s.symbol: RefBook(s) for s in specs}
        self.seq = 0
        self.clock = 0
        self.priority = 0
        self.out: list[Event] = []

    # ------------------------------------------------------------------ helpers

    def emit(self, *fields: Any) -> int:
        self.seq += 1
        self.out.append((self.seq, *fields))
        return self.seq

    def next_priority(self) -> int:
        self.priority += 1
        return self.priority

    def live(self) -> list[tuple[RefBook, RefOrder]]:
        return [(b, o) for b in self.books.values() for o in b.orders]

    def find(self, order_id: object) -> tuple[RefBook, RefOrder] | None:
        for book, order in self.live():
            if order.order_id == order_id:
                return book, order
        return None

    def reject(self, cmd_id: Any, symbol: Any, order_id: Any, reason: RejectReason) -> None:
        self.emit(EventKind.REJECTED, cmd_id, symbol, order_id, reason)

    # ------------------------------------------------------------------ commands

    def process(self, cmd: Any) -> list[Event]:
        self.out = []
        handlers: dict[type, Callable[[Any], None]] = {
            NewOrder: self.new_order,
            Cancel: self.cancel,
            Replace: self.replace,
            MassCancel: self.mass_cancel,
            AdvanceTime: lambda c: None,
        }
        handler = handlers.get(type(cmd))
        if handler is None or type(cmd.ts) is not int:
            self.reject(getattr(cmd, "cmd_id", None), None, None, MALFORMED)
            return self.out
        if cmd.ts > self.clock:
            self.clock = cmd.ts
            self.expire()
        handler(cmd)
        for symbol in sorted(self.books):
            book = self.books[symbol]
            top = book.top()
            if top != book.last_bbo:
                book.last_bbo = top
                self.emit(EventKind.BBO, symbol, *top)
        return self.out

    def expire(self) -> None:
        due = [(o.expire_ts, o.seq, b, o) for b, o in self.live() if o.tif == TimeInForce.GTD]
        for expire_ts, _, book, order in sorted(due, key=lambda d: (d[0], d[1])):
            if expire_ts <= self.clock:
                book.orders.remove(order)
                self.emit(EventKind.EXPIRED, book.spec.symbol, order.order_id, order.account, order.leaves)

    def new_order(self, cmd: NewOrder) -> None:
        reason = self.check_new(cmd)
        if not isinstance(reason, RefBook):
            self.reject(cmd.cmd_id, cmd.symbol, cmd.order_id, reason)
            return
        book = reason
        fields = (cmd.symbol, cmd.order_id, cmd.account, cmd.side, cmd.price, cmd.qty, cmd.order_type)
        seq = self.emit(EventKind.ACCEPTED, *fields)
        order = RefOrder(
            *fields[1:5],
            visible=cmd.qty,
            order_type=cmd.order_type,
            tif=cmd.tif,
            expire_ts=cmd.expire_ts,
            stop_price=cmd.stop_price,
            display=cmd.display_qty,
            post_only=cmd.post_only,
            seq=seq,
        )
        self.submit(book, order)

    def submit(self, book: RefBook, order: RefOrder) -> None:
        if order.order_type in (OrderType.STOP, OrderType.STOP_LIMIT):
            order.pending_stop = True
            book.orders.append(order)
        else:
            self.execute(book, order)
        self.run_stops(book)

    def run_stops(self, book: RefBook) -> None:
        while True:
            last = book.last_price
            fired = [
                o
                for o in book.orders
                if o.pending_stop
                and last > 0
                and (
                    (o.side == Side.BUY and last >= o.stop_price)
                    or (o.side == Side.SELL and last <= o.stop_price)
                )
            ]
            if not fired:
                return
            for order in sorted(fired, key=lambda o: o.seq):
                book.orders.remove(order)
                order.pending_stop = False
                order.order_type = OrderType.MARKET if order.order_type == OrderType.STOP else OrderType.LIMIT
                self.emit(
                    EventKind.TRIGGERED, book.spec.symbol, order.order_id, order.account, book.last_price
                )
                self.execute(book, order)

    def execute(self, book: RefBook, order: RefOrder) -> None:
        symbol = book.spec.symbol
        if order.tif == TimeInForce.FOK:
            trial = copy.deepcopy(self)
            trial_order = copy.deepcopy(order)
            trial_book = trial.books[symbol]
            trial.match(trial_book, trial_order)
            if trial_order.visible:
                self.emit(
                    EventKind.CANCELLED,
                    symbol,
                    order.order_id,
                    order.account,
                    order.visible,
                    CancelReason.FOK_UNFILLABLE,
                )
                return
        killed = self.match(book, order)
        if not order.visible:
            return
        if killed:
            reason = CancelReason.SELF_TRADE
        elif order.order_type != OrderType.MARKET and order.tif in (TimeInForce.GTC, TimeInForce.GTD):
            self.rest(book, order)
            return
        else:
            reason = CancelReason.UNFILLED
        self.emit(EventKind.CANCELLED, symbol, order.order_id, order.account, order.visible, reason)

    def rest(self, book: RefBook, order: RefOrder) -> None:
        if order.display and order.visible > order.display:
            order.hidden = order.visible - order.display
            order.visible = order.display
        order.priority = self.next_priority()
        book.orders.append(order)

    def crosses(self, book: RefBook, taker: RefOrder, maker: RefOrder) -> bool:
        if taker.order_type == OrderType.MARKET:
            low, high = book.band()
            limit = high if taker.side == Side.BUY else low
        else:
            limit = taker.price
        return maker.price <= limit if taker.side == Side.BUY else maker.price >= limit

    def match(self, book: RefBook, taker: RefOrder) -> bool:
        """Fill the taker (``visible`` holds all it has left); True if STP killed it."""
        symbol, mode = book.spec.symbol, book.spec.stp_mode
        opposite = Side.SELL if taker.side == Side.BUY else Side.BUY
        traded_at = 0
        while taker.visible:
            queue = book.resting(opposite)
            if not queue or not self.crosses(book, taker, queue[0]):
                break
            maker = queue[0]
            if maker.account == taker.account and mode != StpMode.ALLOW:
                if mode in (StpMode.CANCEL_RESTING, StpMode.CANCEL_BOTH):
                    book.orders.remove(maker)
                    self.emit(
                        EventKind.CANCELLED,
                        symbol,
                        maker.order_id,
                        maker.account,
                        maker.leaves,
                        CancelReason.SELF_TRADE,
                    )
                if mode != StpMode.CANCEL_RESTING:
                    return self.set_last(book, traded_at, killed=True)
                continue
            qty = min(maker.visible, taker.visible)
            maker.visible -= qty
            maker.filled += qty
            taker.visible -= qty
            taker.filled += qty
            traded_at = maker.price
            if maker.visible == 0 and maker.hidden:
                maker.visible = min(maker.display, maker.hidden)
                maker.hidden -= maker.visible
                maker.priority = self.next_priority()
            elif maker.visible == 0:
                book.orders.remove(maker)
            self.emit(
                EventKind.TRADE, symbol, maker.price, qty, taker.side, taker.order_id, taker.account,
                taker.visible, maker.order_id, maker.account, maker.leaves,
            )  # fmt: skip
        return self.set_last(book, traded_at, killed=False)

    @staticmethod
    def set_last(book: RefBook, traded_at: int, killed: bool) -> bool:
        if traded_at:
            book.last_price = traded_at
        return killed

    def cancel(self, cmd: Cancel) -> None:
        book = self.book_or_reason(cmd.symbol)
        found = self.own_order(book, cmd.order_id, cmd.account) if isinstance(book, RefBook) else None
        if found is None:
            reason = book if isinstance(book, RejectReason) else RejectReason.UNKNOWN_ORDER
            self.reject(cmd.cmd_id, cmd.symbol, cmd.order_id, reason)
            return
        assert isinstance(book, RefBook)
        book.orders.remove(found)
        self.emit(
            EventKind.CANCELLED, cmd.symbol, found.order_id, found.account, found.leaves, CancelReason.USER
        )

    def replace(self, cmd: Replace) -> None:
        result = self.check_replace(cmd)
        if isinstance(result, RejectReason):
            self.reject(cmd.cmd_id, cmd.symbol, cmd.order_id, result)
            return
        book, order = result
        symbol = book.spec.symbol
        new_leaves = cmd.qty - order.filled
        if new_leaves <= 0:
            book.orders.remove(order)
            reason = CancelReason.REPLACED_BELOW_FILLED
            self.emit(EventKind.CANCELLED, symbol, order.order_id, order.account, order.leaves, reason)
            return
        if cmd.price == order.price and new_leaves <= order.leaves:
            cut = order.leaves - new_leaves
            from_hidden = min(cut, order.hidden)
            order.hidden -= from_hidden
            order.visible -= cut - from_hidden
            self.emit(
                EventKind.REPLACED, symbol, order.order_id, order.account, order.price, new_leaves, True
            )
            return
        book.orders.remove(order)
        seq = self.emit(
            EventKind.REPLACED, symbol, order.order_id, order.account, cmd.price, new_leaves, False
        )
        fresh = copy.copy(order)
        fresh.price, fresh.visible, fresh.hidden, fresh.seq = cmd.price, new_leaves, 0, seq
        self.submit(book, fresh)

    def mass_cancel(self, cmd: MassCancel) -> None:
        symbol, account = cmd.symbol, cmd.account
        if (symbol is None and account is None) or (account is not None and type(account) is not str):
            self.reject(cmd.cmd_id, symbol, None, MALFORMED)
            return
        book = None if symbol is None else self.book_or_reason(symbol)
        if isinstance(book, RejectReason):
            self.reject(cmd.cmd_id, symbol, None, book)
            return
        victims = [
            (o.seq, b, o)
            for b, o in self.live()
            if (book is None or b is book) and (account is None or o.account == account)
        ]
        for _, owner, order in sorted(victims, key=lambda v: v[0]):
            owner.orders.remove(order)
            self.emit(
                EventKind.CANCELLED,
                owner.spec.symbol,
                order.order_id,
                order.account,
                order.leaves,
                CancelReason.MASS_CANCEL,
            )

    # ---------------------------------------------------------------- validation

    def book_or_reason(self, symbol: object) -> RefBook | RejectReason:
        if type(symbol) is not str:
            return MALFORMED
        return self.books.get(symbol, RejectReason.UNKNOWN_SYMBOL)

    def own_order(self, book: RefBook, order_id: object, account: object) -> RefOrder | None:
        for order in book.orders:
            if order.order_id == order_id and order.account == account:
                return order
        return None

    @staticmethod
    def check_qty(book: RefBook, qty: int) -> RejectReason | None:
        spec = book.spec
        if qty % spec.lot_size:
            return RejectReason.QTY_OFF_LOT
        if qty < spec.min_qty:
            return RejectReason.QTY_BELOW_MIN
        if qty > spec.max_qty:
            return RejectReason.QTY_ABOVE_MAX
        return None

    @staticmethod
    def check_price(book: RefBook, price: int) -> RejectReason | None:
        low, high = book.band()
        if price <= 0:
            return RejectReason.INVALID_PRICE
        if price % book.spec.tick_size:
            return RejectReason.PRICE_OFF_TICK
        if not low <= price <= high:
            return RejectReason.PRICE_OUT_OF_BAND
        return None

    def would_cross(self, book: RefBook, side: Side, price: int) -> bool:
        queue = book.resting(Side.SELL if side == Side.BUY else Side.BUY)
        return bool(queue) and (queue[0].price <= price if side == Side.BUY else queue[0].price >= price)

    def check_new(self, cmd: NewOrder) -> RefBook | RejectReason:
        book = self.book_or_reason(cmd.symbol)
        if isinstance(book, RejectReason):
            return book
        if not (
            type(cmd.qty) is int
            and type(cmd.price) is int
            and type(cmd.order_id) is str
            and type(cmd.account) is str
        ):
            return MALFORMED
        if self.find(cmd.order_id) is not None:
            return RejectReason.DUPLICATE_ORDER_ID
        side: object = cmd.side  # identity, not equality: a plain 1 is not a Side
        if side is not Side.BUY and side is not Side.SELL:
            return RejectReason.INVALID_SIDE
        reason = self.check_qty(book, cmd.qty) or self.check_order_fields(book, cmd)
        return book if reason is None else reason

    def check_order_fields(self, book: RefBook, cmd: NewOrder) -> RejectReason | None:
        otype, tif = cmd.order_type, cmd.tif
        if (
            otype == OrderType.LIMIT
            and tif == TimeInForce.GTC
            and not (cmd.expire_ts or cmd.stop_price or cmd.display_qty or cmd.post_only)
        ):
            return self.check_price(book, cmd.price)
        if type(otype) is not OrderType:
            return RejectReason.INVALID_ORDER_TYPE
        if type(tif) is not TimeInForce or (otype == OrderType.MARKET and tif == TimeInForce.GTD):
            return RejectReason.INVALID_TIF
        if otype in (OrderType.LIMIT, OrderType.STOP_LIMIT):
            reason = self.check_price(book, cmd.price)
            if reason is not None:
                return reason
        elif cmd.price != 0:
            return RejectReason.INVALID_PRICE
        stop = cmd.stop_price
        if otype in (OrderType.STOP, OrderType.STOP_LIMIT):
            if type(stop) is not int or stop <= 0 or stop % book.spec.tick_size:
                return RejectReason.INVALID_STOP_PRICE
        elif stop != 0:
            return RejectReason.INVALID_STOP_PRICE
        if (tif == TimeInForce.GTD) != (cmd.expire_ts != 0) or (
            tif == TimeInForce.GTD and cmd.expire_ts <= self.clock
        ):
            return RejectReason.INVALID_EXPIRY
        resting_tif = tif in (TimeInForce.GTC, TimeInForce.GTD)
        if cmd.display_qty:
            if cmd.display_qty < 0 or cmd.display_qty % book.spec.lot_size:
                return RejectReason.INVALID_DISPLAY_QTY
            if otype != OrderType.LIMIT or not resting_tif:
                return RejectReason.INVALID_FLAGS
        if cmd.post_only:
            if otype != OrderType.LIMIT or not resting_tif:
                return RejectReason.INVALID_FLAGS
            if self.would_cross(book, cmd.side, cmd.price):
                return RejectReason.POST_ONLY_WOULD_CROSS
        return None

    def check_replace(self, cmd: Replace) -> tuple[RefBook, RefOrder] | RejectReason:
        book = self.book_or_reason(cmd.symbol)
        if isinstance(book, RejectReason):
            return book
        if type(cmd.price) is not int or type(cmd.qty) is not int or type(cmd.order_id) is not str:
            return MALFORMED
        order = self.own_order(book, cmd.order_id, cmd.account)
        if order is None:
            return RejectReason.UNKNOWN_ORDER
        if order.pending_stop:
            return RejectReason.NOT_REPLACEABLE
        reason = self.check_qty(book, cmd.qty)
        if reason is None and cmd.price != order.price:
            reason = self.check_price(book, cmd.price)
            if reason is None and order.post_only and self.would_cross(book, order.side, cmd.price):
                reason = RejectReason.POST_ONLY_WOULD_CROSS
        return (book, order) if reason is None else reason

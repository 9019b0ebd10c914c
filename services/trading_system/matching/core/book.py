"""Order book data structures.

Layout, chosen for CPython speed:

* A price level is a ``deque`` of orders in time priority plus the level's visible
  quantity. Cancelling from the middle of a deque is O(n), so a cancelled order is
  only marked dead (``qty == 0``) and skipped later; dead orders at either end are
  dropped at once and a level that is mostly dead is compacted.
* Each side keeps a plain dict ``key -> Level`` and a sorted list of the keys. The key
  is ``side * price`` (``Side.BUY == 1``, ``Side.SELL == -1``), so on both sides the
  best level is the *largest* key, i.e. ``keys[-1]``: taking the best level, and
  removing it when it empties, touch only the end of the list. Inserting a new level
  is a C-level ``bisect.insort`` memmove, cheap for the few hundred levels a real book
  has.
* Orders are ``__slots__`` objects; fields a plain GTC limit order never uses live in
  an optional :class:`OrderExtra` so the common order is cheaper to build.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque

from trading_system.matching.core.types import OrderType, Side, SymbolSpec, TimeInForce

NO_BAND_HIGH = 1 << 62
# Compact a level when dead entries exceed this many and outnumber the live ones.
_COMPACT_MIN_DEAD = 32


class OrderExtra:
    """Attributes of non-plain orders (anything but a GTC limit without flags)."""

    __slots__ = ("book", "display_qty", "expire_ts", "order_type", "post_only", "stop_price", "tif")

    def __init__(
        self,
        order_type: OrderType,
        tif: TimeInForce,
        expire_ts: int,
        stop_price: int,
        display_qty: int,
        post_only: bool,
    ) -> None:
        self.order_type = order_type
        self.tif = tif
        self.expire_ts = expire_ts
        self.stop_price = stop_price
        self.display_qty = display_qty
        self.post_only = post_only
        # Set while the order waits as an untriggered stop and so has no level.
        self.book: Book | None = None


class Order:
    """A live order.

    While resting, ``qty`` is the visible quantity at the level and ``hidden`` the
    iceberg reserve; while being matched as the aggressor, ``qty`` is everything left.
    ``seq`` is the event sequence number that gave the order its time priority.
    ``level`` is the level it rests at, None while it is a pending stop.
    """

    __slots__ = ("account", "extra", "filled", "hidden", "level", "order_id", "price", "qty", "seq", "side")

    def __init__(
        self,
        order_id: str,
        account: str,
        side: Side,
        price: int,
        qty: int,
        filled: int,
        seq: int,
        extra: OrderExtra | None,
    ) -> None:
        self.order_id = order_id
        self.account = account
        self.side = side
        self.price = price
        self.qty = qty
        self.hidden = 0
        self.filled = filled
        self.seq = seq
        self.level: Level | None = None
        self.extra = extra


class Level:
    __slots__ = ("book", "dead", "key", "orders", "price", "qty")

    def __init__(self, book: Book, price: int, key: int) -> None:
        self.book = book
        self.price = price
        self.key = key
        self.qty = 0
        self.dead = 0
        self.orders: deque[Order] = deque()

    def bury(self, order: Order) -> None:
        """Mark an order in the middle of the queue dead (the ends are simply popped)."""
        order.qty = 0
        self.dead += 1
        if self.dead > _COMPACT_MIN_DEAD and self.dead * 2 > len(self.orders):
            self.orders = deque(o for o in self.orders if o.qty)
            self.dead = 0

    def live_orders(self) -> list[Order]:
        return [o for o in self.orders if o.qty]


class BookSide:
    __slots__ = ("book", "keys", "levels", "sign")

    def __init__(self, book: Book, sign: int) -> None:
        self.book = book
        self.sign = sign
        self.keys: list[int] = []
        self.levels: dict[int, Level] = {}

    def level_for(self, price: int) -> Level:
        key = self.sign * price
        level = self.levels.get(key)
        if level is None:
            level = self.levels[key] = Level(self.book, price, key)
            keys = self.keys
            if not keys or key > keys[-1]:
                keys.append(key)
            else:
                insort(keys, key)
        return level

    def remove(self, level: Level) -> None:
        keys = self.keys
        key = level.key
        if keys[-1] == key:
            keys.pop()
        else:
            del keys[bisect_left(keys, key)]
        del self.levels[key]

    def best_first(self) -> list[Level]:
        levels = self.levels
        return [levels[k] for k in reversed(self.keys)]


StopEntry = tuple[int, int, Order]


class Book:
    """One symbol: both sides, pending stops and the symbol's validation parameters."""

    __slots__ = (
        "asks",
        "band_high",
        "band_low",
        "bids",
        "buy_stops",
        "last_bbo",
        "last_price",
        "lot",
        "max_qty",
        "min_qty",
        "sell_stops",
        "spec",
        "stp_mode",
        "symbol",
        "tick",
    )

    def __init__(self, spec: SymbolSpec) -> None:
        self.spec = spec
        self.symbol = spec.symbol
        self.tick = spec.tick_size
        self.lot = spec.lot_size
        self.min_qty = spec.min_qty
        self.max_qty = spec.max_qty
        self.stp_mode = spec.stp_mode
        self.bids = BookSide(self, Side.BUY)
        self.asks = BookSide(self, Side.SELL)
        # Sorted by (stop price, seq): triggered buy stops are a prefix, sell stops a suffix.
        self.buy_stops: list[StopEntry] = []
        self.sell_stops: list[StopEntry] = []
        self.last_price = 0
        self.last_bbo: tuple[int | None, int, int | None, int] = (None, 0, None, 0)
        self.band_low = 0
        self.band_high = NO_BAND_HIGH
        self.set_reference(spec.reference_price)

    def side(self, side: int) -> BookSide:
        return self.bids if side == Side.BUY else self.asks

    def set_reference(self, reference: int) -> None:
        bps = self.spec.band_bps
        if bps <= 0 or reference <= 0:
            self.band_low, self.band_high = 0, NO_BAND_HIGH
            return
        self.band_low = -((-reference * (10_000 - bps)) // 10_000)
        self.band_high = reference * (10_000 + bps) // 10_000

    def bbo(self) -> tuple[int | None, int, int | None, int]:
        bids, asks = self.bids, self.asks
        bid_price: int | None = None
        ask_price: int | None = None
        bid_qty = ask_qty = 0
        if bids.keys:
            level = bids.levels[bids.keys[-1]]
            bid_price, bid_qty = level.price, level.qty
        if asks.keys:
            level = asks.levels[asks.keys[-1]]
            ask_price, ask_qty = level.price, level.qty
        return bid_price, bid_qty, ask_price, ask_qty

    def stops_for(self, side: int) -> list[StopEntry]:
        return self.buy_stops if side == Side.BUY else self.sell_stops

    def add_stop(self, order: Order, stop_price: int) -> None:
        insort(self.stops_for(order.side), (stop_price, order.seq, order))

    def remove_stop(self, order: Order, stop_price: int) -> None:
        stops = self.stops_for(order.side)
        del stops[bisect_left(stops, (stop_price, order.seq))]

    def take_triggered(self) -> list[Order]:
        """Remove and return the stops the last trade price triggers, in seq order."""
        last = self.last_price
        buys, sells = self.buy_stops, self.sell_stops
        fired: list[StopEntry] = []
        if not last:
            return []
        if buys and buys[0][0] <= last:
            cut = bisect_left(buys, (last + 1,))
            fired += buys[:cut]
            del buys[:cut]
        if sells and sells[-1][0] >= last:
            cut = bisect_left(sells, (last,))
            fired += sells[cut:]
            del sells[cut:]
        fired.sort(key=_entry_seq)
        return [entry[2] for entry in fired]


def _entry_seq(entry: StopEntry) -> int:
    return entry[1]

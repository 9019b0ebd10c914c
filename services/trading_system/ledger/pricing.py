"""Amounts from prices: what to reserve for an order, what a trade costs. Pure integers.

Rounding is chosen so a reservation always covers every fill of its order:

* reservations round **up** (notional and fee),
* settlement rounds **down** (notional and fee), and the buyer pays exactly what the
  seller receives, so rounding never creates or destroys value.

Because floor is superadditive (the floors of the parts never add up to more than the
floor of the whole), the fees charged fill by fill never exceed the fee reserved for
the whole order, and a fill at or below the limit price never costs more than its share
of the hold (see ``ledger.consumption``).
"""

from __future__ import annotations

from dataclasses import dataclass

from trading_system.ledger.types import TradeSettlement

BPS = 10_000


@dataclass(frozen=True, slots=True)
class Instrument:
    """How a symbol's price and quantity turn into asset amounts.

    ``qty`` is in base-asset minor units, ``price`` in quote-asset minor units per
    ``price_divisor`` base minor units; e.g. BTC-USD with qty in satoshi and price in
    cents per BTC has ``price_divisor = 100_000_000``.
    """

    symbol: str
    base_asset: str
    quote_asset: str
    price_divisor: int = 1


def instrument_of_symbol(symbol: str) -> Instrument | None:
    """``BASE-QUOTE`` read as its base and quote assets (price divisor 1), else None."""
    base, sep, quote = symbol.partition("-")
    if not sep or not base or not quote or "-" in quote:
        return None
    return Instrument(symbol, base, quote)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def notional(instrument: Instrument, price: int, qty: int) -> int:
    """Quote amount a trade moves from buyer to seller (rounded down)."""
    return price * qty // instrument.price_divisor


def fee(amount: int, fee_bps: int) -> int:
    """Fee charged on a settled amount (rounded down)."""
    return amount * fee_bps // BPS


def buy_reservation(instrument: Instrument, limit_price: int, qty: int, fee_bps: int) -> int:
    """Quote amount to hold for a buy of ``qty`` at up to ``limit_price``, fee included."""
    gross = _ceil_div(limit_price * qty, instrument.price_divisor)
    return gross + _ceil_div(gross * fee_bps, BPS)


def sell_reservation(qty: int) -> int:
    """Base amount to hold for a sell: the quantity itself."""
    return qty


def trade_settlement(
    instrument: Instrument,
    *,
    trade_id: str,
    price: int,
    qty: int,
    buyer: tuple[str, str],
    seller: tuple[str, str],
    buyer_fee_bps: int = 0,
    seller_fee_bps: int = 0,
) -> TradeSettlement:
    """The settlement of one trade; ``buyer``/``seller`` are (account id, order id)."""
    amount = notional(instrument, price, qty)
    return TradeSettlement(
        trade_id=trade_id,
        symbol=instrument.symbol,
        base_asset=instrument.base_asset,
        quote_asset=instrument.quote_asset,
        price=price,
        qty=qty,
        notional=amount,
        buyer_account=buyer[0],
        buyer_order_id=buyer[1],
        seller_account=seller[0],
        seller_order_id=seller[1],
        buyer_fee=fee(amount, buyer_fee_bps),
        seller_fee=fee(amount, seller_fee_bps),
    )

"""Field types shared by the catalog: identifiers, symbols, prices, quantities, enums.

Prices and quantities are ``Decimal`` on the wire (JSON strings), never floats: a binary
float cannot hold 0.1 exactly and money must not drift between services.
"""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Annotated

from pydantic import AwareDatetime, Field, StringConstraints

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]
Symbol = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9._/-]{0,31}$")]
Asset = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{1,16}$")]
Price = Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]
Quantity = Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]
NonNegativeQuantity = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
Amount = Annotated[Decimal, Field(allow_inf_nan=False)]
Timestamp = AwareDatetime
Reason = Annotated[str, StringConstraints(max_length=1024)]


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(enum.StrEnum):
    LIMIT = "limit"
    MARKET = "market"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"


class TimeInForce(enum.StrEnum):
    GTC = "gtc"
    GTD = "gtd"
    IOC = "ioc"
    FOK = "fok"


class Liquidity(enum.StrEnum):
    MAKER = "maker"
    TAKER = "taker"

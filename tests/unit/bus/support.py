"""Helpers shared by the bus tests: bounded waiting and sample messages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

from trading_system.bus.catalog import OrderNew


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    within: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> float:
    """Wait until ``condition()`` holds, at most ``within`` seconds; return the time taken."""
    start = time.monotonic()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


def order(i: int = 1, **changes: object) -> OrderNew:
    values: dict[str, object] = {
        "order_id": f"o-{i}",
        "client_order_id": f"c-{i}",
        "account": "acct-1",
        "symbol": "BTC-USD",
        "side": "buy",
        "order_type": "limit",
        "qty": Decimal("1.5"),
        "price": Decimal("100.25"),
    }
    values.update(changes)
    return OrderNew.model_validate(values)

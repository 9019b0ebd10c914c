"""The message catalog: every type registered, versioned, strict, and round-trippable."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import ClassVar

import pytest
from pydantic import ValidationError

from tests.unit.bus.support import order
from trading_system.bus import BusMessage, MessageRegistry, MessageValidationError
from trading_system.bus.catalog import CATALOG, SUBSYSTEMS, OrderNew, default_registry

pytestmark = pytest.mark.unit


def test_every_subsystem_of_the_design_has_messages() -> None:
    assert set(SUBSYSTEMS) == {
        "system",
        "component",
        "market_data",
        "strategy",
        "order",
        "venue",
        "position",
        "risk",
        "transaction",
    }
    types = {cls.message_type for cls in CATALOG}
    for expected in (
        "system.startup",
        "system.shutdown",
        "system.error",
        "component.status",
        "component.heartbeat",
        "md.bbo",
        "md.depth",
        "md.trade",
        "strategy.signal",
        "order.new",
        "order.cancel",
        "order.replace",
        "order.accepted",
        "order.rejected",
        "order.fill",
        "order.cancelled",
        "order.expired",
        "risk.limit_breach",
        "risk.exposure",
        "txn.can_commit",
        "txn.vote",
        "txn.pre_commit",
        "txn.do_commit",
        "txn.abort",
        "txn.outcome",
    ):
        assert expected in types
    assert len(CATALOG) == sum(len(group) for group in SUBSYSTEMS.values())


def test_type_names_are_subsystem_first_and_unique() -> None:
    names = [cls.message_type for cls in CATALOG]
    assert len(names) == len(set(names))
    assert all("." in name and name == name.lower() for name in names)


def test_messages_are_frozen_and_refuse_unknown_fields() -> None:
    message = order(1)
    with pytest.raises(ValidationError):
        message.qty = Decimal(2)  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        order(1, colour="red")


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"price": None}, "needs a price"),
        ({"order_type": "market"}, "market order has no price"),
        ({"order_type": "stop_limit"}, "stop_price is required"),
        ({"time_in_force": "gtd"}, "expire_at is required"),
        ({"display_qty": Decimal("9")}, "display_qty cannot exceed qty"),
        ({"qty": Decimal("0")}, "greater than 0"),
        ({"symbol": "btc usd"}, "pattern"),
        ({"side": "up"}, "'buy' or 'sell'"),
    ],
)
def test_order_new_rejects_inconsistent_orders(changes: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        order(1, **changes)


def test_gtd_and_stop_orders_that_are_consistent_are_accepted() -> None:
    gtd = order(1, time_in_force="gtd", expire_at=datetime(2030, 1, 1, tzinfo=UTC))
    stop = order(2, order_type="stop", price=None, stop_price=Decimal("99"))
    assert gtd.expire_at is not None and stop.stop_price == Decimal("99")


def test_registry_resolves_versions_and_keeps_old_ones() -> None:
    class DemoV1(BusMessage):
        message_type: ClassVar[str] = "demo.thing"
        a: int

    class DemoV2(BusMessage):
        message_type: ClassVar[str] = "demo.thing"
        version: ClassVar[int] = 2
        a: int
        b: str

    registry = MessageRegistry([DemoV2, DemoV1])
    assert registry.resolve("demo.thing") is DemoV2
    assert registry.resolve("demo.thing", 1) is DemoV1
    assert DemoV1 in registry and OrderNew not in registry
    with pytest.raises(MessageValidationError, match=r"unknown message type 'demo\.thing v3'"):
        registry.resolve("demo.thing", 3)

    class Clash(BusMessage):
        message_type: ClassVar[str] = "demo.thing"
        z: int

    with pytest.raises(TypeError, match="already registered"):
        registry.register(Clash)


def test_registry_validate_gives_a_readable_error() -> None:
    registry = default_registry()
    with pytest.raises(MessageValidationError) as raised:
        registry.validate("order.cancel", {"order_id": "", "account": "a"})
    text = str(raised.value)
    assert text.startswith("invalid order.cancel v1 (OrderCancel):")
    assert "order_id:" in text and "symbol: Field required" in text


def test_a_message_class_needs_a_positive_version() -> None:
    with pytest.raises(TypeError, match="positive int"):

        class Bad(BusMessage):
            message_type: ClassVar[str] = "demo.bad"
            version: ClassVar[int] = 0

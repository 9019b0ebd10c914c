"""Encoding and decoding envelopes: round trips, batches, and refusing bad bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.bus.support import order
from trading_system.bus import Envelope, MessageDecodeError
from trading_system.bus.catalog import OrderFill, OrderNew, TxnVote, default_registry
from trading_system.bus.codec import BATCH_CONTENT_TYPE, ENVELOPE_CONTENT_TYPE, Codec, peek_message_ids

pytestmark = pytest.mark.unit

CODEC = Codec(default_registry())
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=40)


@given(
    qty=st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("1e9"), allow_nan=False, places=8),
    price=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1e7"), allow_nan=False, places=2),
    epoch=st.none() | st.integers(min_value=0, max_value=2**62),
    sequence=st.none() | st.integers(min_value=0, max_value=2**62),
    correlation=st.none() | ids,
    transaction=st.none() | ids,
)
def test_round_trip_keeps_payload_and_metadata_exactly(
    qty: Decimal,
    price: Decimal,
    epoch: int | None,
    sequence: int | None,
    correlation: str | None,
    transaction: str | None,
) -> None:
    env = Envelope(
        order(1, qty=qty, price=price),
        source="svc",
        correlation_id=correlation,
        transaction_id=transaction,
        epoch=epoch,
        sequence=sequence,
    )
    [back] = CODEC.decode(CODEC.encode(env), ENVELOPE_CONTENT_TYPE)
    assert back == env
    assert isinstance(back.payload, OrderNew) and back.payload.qty == qty  # exact, no float drift


def test_batch_round_trip_keeps_order_and_types() -> None:
    envs = [
        Envelope(order(1)),
        Envelope(TxnVote(transaction_id="t1", participant="ledger", vote="yes")),
        Envelope(
            OrderFill(
                order_id="o",
                trade_id="tr",
                account="a",
                symbol="ETH-USD",
                side="sell",
                qty=Decimal("2"),
                price=Decimal("3"),
                leaves_qty=Decimal("0"),
                liquidity="maker",
            )
        ),
    ]
    body = CODEC.encode_batch(envs)
    assert CODEC.decode(body, BATCH_CONTENT_TYPE) == envs
    assert peek_message_ids(body) == [e.message_id for e in envs]


def test_foreign_key_order_takes_the_general_path_with_the_same_result() -> None:
    env = Envelope(order(1), produced_at=datetime(2026, 1, 2, tzinfo=UTC))
    reordered = json.dumps(dict(reversed(list(json.loads(CODEC.encode(env)).items())))).encode()
    assert CODEC.decode(reordered, "application/json") == [env]


@pytest.mark.parametrize(
    ("body", "content_type", "problem"),
    [
        (b"{nope", ENVELOPE_CONTENT_TYPE, "malformed envelope"),
        (b'{"message_id": "x"}', ENVELOPE_CONTENT_TYPE, "malformed envelope"),
        (b"[]", "text/plain", "unsupported content type"),
    ],
)
def test_bad_bodies_are_decode_errors(body: bytes, content_type: str, problem: str) -> None:
    with pytest.raises(MessageDecodeError, match=problem):
        CODEC.decode(body, content_type)


def test_unknown_type_and_invalid_payload_name_the_message() -> None:
    good = CODEC.encode(Envelope(order(1), message_id="m-1"))
    with pytest.raises(MessageDecodeError, match=r"m-1: unknown message type 'order\.zzz v1'"):
        CODEC.decode(good.replace(b'"order.new"', b'"order.zzz"'), ENVELOPE_CONTENT_TYPE)
    with pytest.raises(MessageDecodeError, match=r"invalid order.new v1 .*payload.qty"):
        CODEC.decode(good.replace(b'"qty":"1.5"', b'"qty":"-1"'), ENVELOPE_CONTENT_TYPE)


def test_peek_never_raises() -> None:
    assert peek_message_ids(b"\xff garbage") == []

"""Envelopes to bytes and back.

The body is self-contained JSON: the envelope fields plus the payload, so a parked
message can be read and re-published without anything from the AMQP properties. A batch
is a JSON array of such envelopes in one AMQP message; it amortises the broker's
per-message cost (one quorum-log entry, one confirm, one ack for many logical messages).

Encoding trusts its input (a ``BusMessage`` was validated when it was built and is
frozen), so it only serialises. Decoding trusts nothing: envelope fields and payload are
validated, and any problem becomes a ``MessageDecodeError`` that consumers dead-letter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pydantic_core
from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict

from trading_system.bus.envelope import Envelope
from trading_system.bus.errors import MessageDecodeError, MessageValidationError
from trading_system.bus.messages import (
    BusMessage,
    MessageRegistry,
    describe_validation_error,
    format_errors,
)

ENVELOPE_CONTENT_TYPE = "application/vnd.trading-system.envelope+json"
BATCH_CONTENT_TYPE = "application/vnd.trading-system.batch+json"


class _WireEnvelope(TypedDict):
    message_id: str
    message_type: str
    version: int
    produced_at: datetime
    source: str | None
    correlation_id: str | None
    causation_id: str | None
    transaction_id: str | None
    epoch: int | None
    sequence: int | None
    payload: dict[str, Any]


_ONE = TypeAdapter(_WireEnvelope)
_MANY = TypeAdapter(list[_WireEnvelope])
_ENVELOPE_FIELDS = {k: v for k, v in _WireEnvelope.__annotations__.items() if k != "payload"}
# Our own encoder always starts a body like this, so type and version can be read before
# parsing and the whole body validated in one pass with the payload's own schema.
_HEAD = re.compile(rb'^\{"message_id":"[^"]*","message_type":"([^"]+)","version":(\d+),')


def _wire(env: Envelope[BusMessage]) -> dict[str, Any]:
    payload = env.payload
    return {
        "message_id": env.message_id,
        "message_type": payload.message_type,
        "version": payload.version,
        "produced_at": env.produced_at,
        "source": env.source,
        "correlation_id": env.correlation_id,
        "causation_id": env.causation_id,
        "transaction_id": env.transaction_id,
        "epoch": env.epoch,
        "sequence": env.sequence,
        "payload": payload,
    }


class Codec:
    def __init__(self, registry: MessageRegistry) -> None:
        self.registry = registry
        self._adapters: dict[type[BusMessage], TypeAdapter[Any]] = {}

    def _typed_adapter(self, cls: type[BusMessage]) -> TypeAdapter[Any]:
        adapter = self._adapters.get(cls)
        if adapter is None:
            wire = TypedDict(f"Wire{cls.__name__}", {**_ENVELOPE_FIELDS, "payload": cls})  # type: ignore[misc]
            adapter = self._adapters[cls] = TypeAdapter(wire)
        return adapter

    def encode(self, env: Envelope[BusMessage]) -> bytes:
        return pydantic_core.to_json(_wire(env))

    def encode_batch(self, envs: Sequence[Envelope[BusMessage]]) -> bytes:
        return pydantic_core.to_json([_wire(env) for env in envs])

    def decode(self, body: bytes, content_type: str | None) -> list[Envelope[BusMessage]]:
        """All envelopes in ``body`` (one, or a batch's items in order)."""
        try:
            if content_type == BATCH_CONTENT_TYPE:
                wires = _MANY.validate_json(body)
            elif content_type in (ENVELOPE_CONTENT_TYPE, None, "", "application/json"):
                fast = self._decode_known(body)
                if fast is not None:
                    return [fast]
                wires = [_ONE.validate_json(body)]
            else:
                raise MessageDecodeError(f"unsupported content type {content_type!r}")
        except ValidationError as exc:
            raise MessageDecodeError(f"malformed envelope: {format_errors(exc)}") from exc
        return [self._typed(wire) for wire in wires]

    def _decode_known(self, body: bytes) -> Envelope[BusMessage] | None:
        """One validation pass for bodies in our own layout with a known type, else None."""
        head = _HEAD.match(body)
        if head is None:
            return None
        try:
            cls = self.registry.resolve(head[1].decode(), int(head[2]))
        except (MessageValidationError, UnicodeDecodeError):
            return None  # the general path reports it properly
        try:
            wire = self._typed_adapter(cls).validate_json(body)
        except ValidationError as exc:
            raise MessageDecodeError(
                f"invalid {cls.message_type} v{cls.version} ({cls.__qualname__}): {format_errors(exc)}"
            ) from exc
        return self._envelope(wire, wire["payload"])

    def _typed(self, wire: _WireEnvelope) -> Envelope[BusMessage]:
        try:
            cls = self.registry.resolve(wire["message_type"], wire["version"])
        except MessageValidationError as exc:
            raise MessageDecodeError(f"message {wire['message_id']}: {exc}") from exc
        try:
            payload = cls.model_validate(wire["payload"])
        except ValidationError as exc:
            raise MessageDecodeError(
                f"message {wire['message_id']}: {describe_validation_error(cls, exc)}"
            ) from exc
        return self._envelope(wire, payload)

    @staticmethod
    def _envelope(wire: Mapping[str, Any], payload: BusMessage) -> Envelope[BusMessage]:
        return Envelope(
            payload,
            message_id=wire["message_id"],
            produced_at=wire["produced_at"],
            source=wire["source"],
            correlation_id=wire["correlation_id"],
            causation_id=wire["causation_id"],
            transaction_id=wire["transaction_id"],
            epoch=wire["epoch"],
            sequence=wire["sequence"],
        )


def peek_message_ids(body: bytes) -> list[str]:
    """Best-effort ids in a body, for tools and logs; never raises."""
    try:
        raw = pydantic_core.from_json(body)
    except ValueError:
        return []
    items = raw if isinstance(raw, list) else [raw]
    return [str(item.get("message_id")) for item in items if isinstance(item, dict)]

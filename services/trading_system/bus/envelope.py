"""The envelope every message travels in: identity, type, version, tracing and ordering.

``epoch`` and ``sequence`` carry the HA fencing order (DESIGN.md section 4): a producer
stamps each event with the pair's epoch and a per-epoch sequence, and consumers drop
anything from an older epoch with ``EpochGate``.

The envelope is a plain slotted dataclass rather than a pydantic model: it is built once
per message on the hot path from values the bus produced itself, so validating it again
would only cost time. Untrusted envelopes coming off the wire are validated in ``codec``.
It is not ``frozen`` only because a frozen dataclass's ``__init__`` is three times slower
(it sets every field through ``object.__setattr__``); treat it as immutable all the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from trading_system.bus.messages import BusMessage

M_co = TypeVar("M_co", bound=BusMessage, covariant=True)


def new_message_id() -> str:
    # 128 random bits as hex, the same shape as uuid4().hex at a quarter of the cost.
    return os.urandom(16).hex()


@dataclass(slots=True)
class Envelope(Generic[M_co]):
    payload: M_co
    message_id: str = field(default_factory=new_message_id)
    produced_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    source: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    transaction_id: str | None = None
    epoch: int | None = None
    sequence: int | None = None

    @property
    def message_type(self) -> str:
        return self.payload.message_type

    @property
    def version(self) -> int:
        return self.payload.version

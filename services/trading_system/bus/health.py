"""The bus's health as a service reports it on ``/healthz`` and ``/readyz``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trading_system.bus.breaker import BreakerState, CircuitBreaker
from trading_system.bus.transport import Transport

HealthStatus = Literal["ok", "degraded", "down"]


@dataclass(frozen=True, slots=True)
class BusHealth:
    status: HealthStatus
    mode: str
    transport: str
    connected: bool
    breaker: BreakerState
    reasons: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        """Whether the service may take traffic (``/readyz``): degraded still works."""
        return self.status != "down"


def assess(
    mode: str, transport: Transport | None, breaker: CircuitBreaker, fallback: str | None
) -> BusHealth:
    """down: not started or not connected; degraded: fallen back, or the breaker not closed."""
    reasons: list[str] = []
    status: HealthStatus = "ok"
    connected = transport is not None and transport.connected
    if fallback is not None:
        status = "degraded"
        reasons.append(fallback)
    if breaker.state is not BreakerState.CLOSED:
        status = "degraded"
        reasons.append(f"publish circuit breaker is {breaker.state} (last error: {breaker.last_error!r})")
    if transport is None:
        status = "down"
        reasons.append("not started")
    elif not connected:
        status = "down"
        reasons.append("not connected to the broker (reconnecting)")
    return BusHealth(
        status=status,
        mode=mode,
        transport=transport.name if transport is not None else "none",
        connected=connected,
        breaker=breaker.state,
        reasons=tuple(reasons),
    )

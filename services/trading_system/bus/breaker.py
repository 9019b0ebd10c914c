"""A circuit breaker for publishing: stop hammering a broker that keeps failing.

closed -> open after ``failure_threshold`` consecutive failures; open rejects every call
at once with ``CircuitOpenError`` until ``reset_timeout`` has passed; then half-open lets
exactly one trial call through: its success closes the breaker, its failure opens it
again for another ``reset_timeout``. Callers see a clear error instead of piling up
publishes that would time out one by one.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from trading_system.bus.errors import CircuitOpenError


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 5.0,
        *,
        name: str = "publish",
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        if failure_threshold < 1 or reset_timeout <= 0:
            raise ValueError("need failure_threshold >= 1 and reset_timeout > 0")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False
        self.last_error: BaseException | None = None

    @property
    def state(self) -> BreakerState:
        # Reading the state does not move it to half-open; only a call does, so a health
        # probe never consumes the single trial.
        return self._state

    def allow(self) -> None:
        """Raise ``CircuitOpenError`` unless a call may go through now."""
        if self._state is BreakerState.CLOSED:
            return
        if self._state is BreakerState.OPEN:
            remaining = self._opened_at + self.reset_timeout - self._clock()
            if remaining > 0:
                raise CircuitOpenError(
                    f"{self.name} circuit breaker is open after {self._failures} consecutive failures "
                    f"(last: {self.last_error!r}); next trial in {remaining:.2f}s"
                )
            self._set(BreakerState.HALF_OPEN)
        if self._trial_running:
            raise CircuitOpenError(
                f"{self.name} circuit breaker is half-open and its single trial call is still running"
            )
        self._trial_running = True

    def record_success(self) -> None:
        # Any confirmed call is evidence the broker works, including one that was already
        # in flight when the breaker opened, so it closes the breaker from any state.
        self._failures = 0
        self._trial_running = False
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def record_failure(self, exc: BaseException) -> None:
        self.last_error = exc
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or (
            self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold
        ):
            self._trial_running = False
            self._opened_at = self._clock()
            self._set(BreakerState.OPEN)

    def release(self) -> None:
        """A permitted call ended with neither success nor failure (e.g. it was cancelled)."""
        self._trial_running = False

    def _set(self, state: BreakerState) -> None:
        previous, self._state = self._state, state
        if self._on_change is not None and previous is not state:
            self._on_change(previous, state)

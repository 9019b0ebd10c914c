"""The publish circuit breaker's state machine and the retry backoff policy."""

from __future__ import annotations

import random

import pytest

from trading_system.bus import BreakerState, CircuitBreaker, CircuitOpenError, RetryPolicy
from trading_system.bus.retry import MAX_TIERS

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    # A call, not the property, so mypy does not narrow the state across the steps.
    return breaker.state


def make(threshold: int = 3, reset: float = 5.0) -> tuple[CircuitBreaker, Clock, list[BreakerState]]:
    clock, changes = Clock(), []
    breaker = CircuitBreaker(threshold, reset, clock=clock, on_change=lambda _old, new: changes.append(new))
    return breaker, clock, changes


def test_opens_after_consecutive_failures_only() -> None:
    breaker, _, changes = make()
    for _ in range(2):
        breaker.allow()
        breaker.record_failure(OSError("down"))
    breaker.allow()
    breaker.record_success()  # resets the count
    for _ in range(2):
        breaker.allow()
        breaker.record_failure(OSError("down"))
    assert state(breaker) is BreakerState.CLOSED
    breaker.allow()
    breaker.record_failure(OSError("down"))
    assert state(breaker) is BreakerState.OPEN and changes == [BreakerState.OPEN]


def test_open_rejects_with_a_clear_error_until_the_reset_timeout() -> None:
    breaker, clock, _ = make(threshold=1, reset=5)
    breaker.allow()
    breaker.record_failure(OSError("connection refused"))
    clock.now += 4.5
    with pytest.raises(CircuitOpenError, match=r"open after 1 consecutive failures .*refused.*0\.50s"):
        breaker.allow()


def test_half_open_lets_exactly_one_trial_through_and_closes_on_success() -> None:
    breaker, clock, changes = make(threshold=1, reset=5)
    breaker.allow()
    breaker.record_failure(OSError())
    clock.now += 5
    assert state(breaker) is BreakerState.OPEN  # reading the state does not use the trial
    breaker.allow()
    assert state(breaker) is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpenError, match="single trial"):
        breaker.allow()
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    breaker.allow()  # closed: anything goes


def test_failed_trial_opens_again_for_another_period() -> None:
    breaker, clock, _ = make(threshold=2, reset=5)
    for _ in range(2):
        breaker.allow()
        breaker.record_failure(OSError())
    clock.now += 5
    breaker.allow()
    breaker.record_failure(OSError("still down"))
    assert state(breaker) is BreakerState.OPEN
    clock.now += 4
    with pytest.raises(CircuitOpenError):
        breaker.allow()
    clock.now += 1
    breaker.allow()
    assert state(breaker) is BreakerState.HALF_OPEN


def test_a_released_trial_frees_the_slot() -> None:
    breaker, clock, _ = make(threshold=1, reset=1)
    breaker.allow()
    breaker.record_failure(OSError())
    clock.now += 1
    breaker.allow()
    breaker.release()  # e.g. the caller was cancelled
    breaker.allow()
    assert state(breaker) is BreakerState.HALF_OPEN


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=8, initial_delay=0.5, multiplier=2, max_delay=10, jitter=0)
    assert [policy.base_delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert policy.delay(3) == 2
    assert policy.base_delay(10_000) == 10  # no float overflow


def test_jitter_stays_within_its_band() -> None:
    policy = RetryPolicy(initial_delay=1, jitter=0.2)
    rng = random.Random(7)
    delays = [policy.delay(2, rng) for _ in range(500)]
    assert all(1.6 <= d <= 2.4 for d in delays)
    assert len(set(delays)) > 100


def test_each_retry_number_has_its_own_delay_queue() -> None:
    assert RetryPolicy(max_attempts=1).tiers == 1
    policy = RetryPolicy(max_attempts=4)
    assert policy.tiers == 3
    assert [policy.tier(n) for n in (1, 2, 3, 4)] == [1, 2, 3, 3]
    assert RetryPolicy(max_attempts=100).tiers == MAX_TIERS
    assert policy.exhausted(4) and not policy.exhausted(3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"initial_delay": 0},
        {"initial_delay": 5, "max_delay": 1},
        {"multiplier": 0.5},
        {"jitter": 1.0},
    ],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]

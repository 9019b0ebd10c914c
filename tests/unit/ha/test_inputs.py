"""Observations and policies refuse nonsense instead of deciding on it."""

from __future__ import annotations

import pytest

from trading_system.ha import FailoverPolicy, MemberObservation, Observation

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "settings",
    [
        {"failure_threshold": 0},
        {"max_promotion_lag": -1},
        {"history_limit": 0},
        {"cooldown_seconds": -1.0},
        {"fence_timeout_seconds": -1.0},
        {"promote_timeout_seconds": -1.0},
    ],
)
def test_a_policy_out_of_range_is_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FailoverPolicy(**settings)  # type: ignore[arg-type]


def test_an_observation_naming_a_member_twice_is_refused() -> None:
    twice = (MemberObservation("a", exists=True), MemberObservation("a", exists=False))
    with pytest.raises(ValueError, match="duplicate"):
        Observation(now=0.0, members=twice)


def test_a_member_nobody_reported_is_treated_as_gone() -> None:
    observation = Observation(now=0.0, members=(MemberObservation("a", exists=True),))
    assert observation.member("b") == MemberObservation.absent("b")
    assert not observation.member("b").probes_ok

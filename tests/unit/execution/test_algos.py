"""Parent-order schedules follow TWAP, VWAP and chunking exactly under a controlled clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trading_system.execution.algos import (
    ParentOrder,
    chunk_schedule,
    twap_schedule,
    vwap_schedule,
)

pytestmark = pytest.mark.unit


def test_twap_spreads_equal_slices_evenly_over_the_duration() -> None:
    schedule = twap_schedule(qty=100, slices=4, start=1000.0, duration=60.0)
    assert [(s.at, s.qty) for s in schedule] == [(1000.0, 25), (1015.0, 25), (1030.0, 25), (1045.0, 25)]


def test_twap_gives_leftover_lots_to_the_earliest_slices() -> None:
    assert [s.qty for s in twap_schedule(qty=10, slices=4, start=0, duration=4)] == [3, 3, 2, 2]


def test_vwap_follows_the_volume_profile() -> None:
    schedule = vwap_schedule(qty=100, volume_profile=[1, 2, 1], start=0, duration=30)
    assert [(s.at, s.qty) for s in schedule] == [(0, 25), (10, 50), (20, 25)]


def test_vwap_skips_buckets_with_no_expected_volume() -> None:
    schedule = vwap_schedule(qty=10, volume_profile=[0, 1, 0, 1], start=0, duration=40)
    assert [(s.at, s.qty) for s in schedule] == [(10, 5), (30, 5)]


def test_chunking_caps_each_child_and_keeps_the_remainder() -> None:
    assert [s.qty for s in chunk_schedule(qty=25, chunk=10, start=0)] == [10, 10, 5]


@pytest.mark.parametrize(
    "call",
    [
        lambda: twap_schedule(qty=0, slices=3, start=0, duration=1),
        lambda: twap_schedule(qty=5, slices=0, start=0, duration=1),
        lambda: twap_schedule(qty=5, slices=2, start=0, duration=-1),
        lambda: vwap_schedule(qty=5, volume_profile=[], start=0, duration=1),
        lambda: vwap_schedule(qty=5, volume_profile=[0, 0], start=0, duration=1),
        lambda: vwap_schedule(qty=5, volume_profile=[1, -1], start=0, duration=1),
        lambda: chunk_schedule(qty=5, chunk=0, start=0),
    ],
)
def test_bad_parameters_are_rejected(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


@given(
    qty=st.integers(1, 10_000),
    profile=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=24).filter(
        lambda p: sum(p) > 0
    ),
    duration=st.floats(0, 3600, allow_nan=False),
)
def test_vwap_slices_sum_to_the_parent_and_stay_within_one_lot_of_the_profile(
    qty: int, profile: list[float], duration: float
) -> None:
    schedule = vwap_schedule(qty, profile, start=0.0, duration=duration)
    assert sum(s.qty for s in schedule) == qty
    assert [s.at for s in schedule] == sorted(s.at for s in schedule)
    total = sum(profile)
    for s in schedule:
        assert abs(s.qty - qty * profile[s.index] / total) < 1.0 + 1e-9


def test_parent_releases_slices_as_the_clock_passes_and_stops_when_cancelled() -> None:
    parent = ParentOrder("p1", 100, twap_schedule(qty=100, slices=4, start=0, duration=40))
    assert [s.qty for s in parent.due(now=0)] == [25]
    assert parent.due(now=5) == []
    assert [s.index for s in parent.due(now=25)] == [1, 2]
    parent.record_fill(40)
    assert parent.progress()["released_qty"] == 75
    assert parent.progress()["filled_qty"] == 40
    parent.cancel()
    assert parent.due(now=100) == []
    assert parent.done


def test_parent_refuses_overfill() -> None:
    parent = ParentOrder("p1", 10, chunk_schedule(10, 5, start=0))
    parent.record_fill(10)
    assert parent.done
    with pytest.raises(ValueError, match="exceeds"):
        parent.record_fill(1)

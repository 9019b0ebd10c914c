"""Consumer-side guards: the (epoch, sequence) fence and the message-id deduplicator."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trading_system.bus import Deduplicator, EpochGate, Verdict

pytestmark = pytest.mark.unit


def test_older_epoch_is_refused_and_newer_epoch_resets_the_sequence() -> None:
    gate = EpochGate()
    assert gate.accept("pair", 3, 10) is Verdict.ACCEPT
    assert gate.accept("pair", 3, 10) is Verdict.DUPLICATE
    assert gate.accept("pair", 3, 9) is Verdict.DUPLICATE
    assert gate.accept("pair", 2, 99) is Verdict.STALE_EPOCH  # the fenced old active
    assert gate.accept("pair", 4, 1) is Verdict.ACCEPT  # new active starts over
    assert gate.accept("pair", 3, 11) is Verdict.STALE_EPOCH
    assert gate.position("pair") == (4, 1)
    assert gate.accept("other", 1, 1) is Verdict.ACCEPT  # streams are independent


def test_check_does_not_record_until_commit() -> None:
    gate = EpochGate()
    assert gate.check("s", 1, 5) is Verdict.ACCEPT
    assert gate.check("s", 1, 5) is Verdict.ACCEPT  # the handler failed: not recorded
    gate.commit("s", 1, 5)
    assert gate.check("s", 1, 5) is Verdict.DUPLICATE
    gate.commit("s", 1, 8)
    assert gate.gaps == 1


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 20)), max_size=60))
def test_accepted_events_strictly_increase(events: list[tuple[int, int]]) -> None:
    gate = EpochGate()
    accepted = [(e, s) for e, s in events if gate.accept("s", e, s) is Verdict.ACCEPT]
    assert all(a < b for a, b in itertools.pairwise(accepted))
    # Nothing from an epoch older than the newest accepted one ever got through after it.
    for i, (epoch, _) in enumerate(accepted):
        assert all(later_epoch >= epoch for later_epoch, _ in accepted[i:])


def test_gate_memory_is_bounded() -> None:
    gate = EpochGate(max_streams=2)
    for stream in "abc":
        gate.accept(stream, 1, 1)
    assert gate.position("a") is None and gate.position("c") == (1, 1)


def test_dedup_remembers_marked_ids_only() -> None:
    dedup = Deduplicator(max_entries=3)
    assert not dedup.seen("m1")
    dedup.mark("m1")
    assert dedup.seen("m1")
    assert dedup.first_time("m2") and not dedup.first_time("m2")
    for n in range(3, 6):
        dedup.mark(f"m{n}")
    assert len(dedup) == 3 and not dedup.seen("m1")  # oldest forgotten first


def test_dedup_forgets_by_age() -> None:
    now = [0.0]
    dedup = Deduplicator(max_age_seconds=10, clock=lambda: now[0])
    dedup.mark("a")
    now[0] = 5
    dedup.mark("b")
    now[0] = 12
    assert not dedup.seen("a") and dedup.seen("b")


@pytest.mark.parametrize("bad", [0, -1])
def test_bounds_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError):
        Deduplicator(max_entries=bad)
    with pytest.raises(ValueError):
        EpochGate(max_streams=bad)

"""Properties of the failover decision under arbitrary observations and fault schedules."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.ha.sim import FakeMember, FakePair, bootstrap, persisted, run_round
from tests.unit.ha.test_decision import POLICY, events, raises
from trading_system.ha import (
    Action,
    Decision,
    FailoverPolicy,
    Health,
    MemberObservation,
    Observation,
    PairState,
    PromoteMember,
    Reason,
    Role,
    SwitchoverRequest,
    decide,
)

pytestmark = pytest.mark.unit

NAMES = ("m-0", "m-1", "m-2", "m-3", "stray")


@dataclass
class Ledger:
    """What the rounds so far have shown, to check the properties across rounds."""

    actives: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    promoted: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    raises: int = 0
    finished: int = 0

    def check(
        self, before: PairState, decision: Decision, observation: Observation, policy: FailoverPolicy
    ) -> None:
        after = decision.state
        assert after.epoch >= before.epoch, "the epoch never decreases"
        self._check_raise(before, decision)
        self._check_one_active_per_epoch(after, decision.actions)
        assert after.failover is None or after.failover.epoch == after.epoch
        assert len(after.history) <= policy.history_limit
        assert persisted(after) == after
        replay = decide(after, observation, policy)
        assert not raises(list(replay.actions)), "a replayed round never raises again"
        assert not events(replay.actions), "a replayed round tells nobody anything twice"

    def _check_raise(self, before: PairState, decision: Decision) -> None:
        after, raised = decision.state, raises(list(decision.actions))
        assert len(raised) <= 1
        assert bool(raised) == (after.epoch != before.epoch)
        if raised:
            assert raised[0].epoch == after.epoch
            assert decision.actions[0] == raised[0]
        same_failover = before.failover is not None and _identity(before) == _identity(after)
        assert not (same_failover and raised), "one failover raises the epoch once"
        self.raises += len(raised)
        ended = (Reason.FAILOVER_COMPLETED, Reason.FAILOVER_ABANDONED)
        self.finished += sum(1 for event in events(decision.actions) if event.reason in ended)
        in_progress = 1 if after.failover is not None else 0
        assert self.raises == self.finished + in_progress, "every raise belongs to exactly one failover"

    def _check_one_active_per_epoch(self, after: PairState, actions: tuple[Action, ...]) -> None:
        if after.active is not None:
            self.actives[after.epoch].add(after.active)
            assert len(self.actives[after.epoch]) == 1, "at most one active per epoch"
        for action in actions:
            if isinstance(action, PromoteMember):
                self.promoted[action.epoch].add(action.name)
                assert len(self.promoted[action.epoch]) == 1, "one epoch is offered to one member"


def _identity(state: PairState) -> tuple[object, ...] | None:
    """Which failover is under way, whatever step it has reached."""
    progress = state.failover
    if progress is None:
        return None
    return (progress.kind, progress.source, progress.target, progress.epoch, progress.started_at)


KINDS = ("absent", "standby", "standby", "active", "active", "fenced", "noise")
TARGET_KINDS = ("active", "active", "active", "standby", "noise")  # a target mostly survives its failover


def member_observation(data: st.DataObject, name: str, epoch: int, target: bool) -> MemberObservation | None:
    """Mostly plausible members, so that failovers actually start and finish, plus noise."""
    kind = data.draw(st.sampled_from(TARGET_KINDS if target else KINDS))
    healthy = {"exists": True, "ready": True, "healthz_ok": True, "readyz_ok": True}
    epochs = st.sampled_from((epoch - 1, epoch, epoch) if target else (epoch - 1, epoch, epoch, epoch + 1))
    if kind == "standby":
        lag = data.draw(st.sampled_from((0, POLICY.max_promotion_lag, POLICY.max_promotion_lag + 1, None)))
        return MemberObservation(name, **healthy, role=Role.STANDBY, lag=lag)
    if kind == "active":
        return MemberObservation(name, **healthy, role=Role.ACTIVE, epoch=data.draw(epochs))
    if kind == "fenced":
        return MemberObservation(name, exists=True, role=Role.FENCED, epoch=data.draw(epochs))
    if kind == "noise":
        return data.draw(noise(name, epoch))
    return None


def noise(name: str, epoch: int) -> st.SearchStrategy[MemberObservation]:
    return st.builds(
        MemberObservation,
        name=st.just(name),
        exists=st.booleans(),
        ready=st.booleans(),
        healthz_ok=st.booleans(),
        readyz_ok=st.booleans(),
        role=st.none() | st.sampled_from(Role),
        epoch=st.none() | st.integers(0, epoch + 1),
        lag=st.none() | st.integers(0, 2 * POLICY.max_promotion_lag),
    )


def observation_for(data: st.DataObject, state: PairState, now: float) -> Observation:
    target = None if state.failover is None else state.failover.target
    names = (*NAMES, *_known(state))
    drawn = (member_observation(data, name, state.epoch, name == target) for name in names)
    members = {member.name: member for member in drawn if member is not None}
    switchover = data.draw(
        st.none()
        | st.builds(SwitchoverRequest, st.sampled_from(("a", "b")), st.none() | st.sampled_from(NAMES))
    )
    service_target = data.draw(st.sampled_from((None, state.active, target, "m-0")))
    return Observation(
        now=now, members=tuple(members.values()), service_target=service_target, switchover=switchover
    )


def _known(state: PairState) -> tuple[str, ...]:
    """Members the state names beyond ``NAMES`` (fresh standbys get ever higher numbers)."""
    target = None if state.failover is None else state.failover.target
    names = (state.active, state.standby, target)
    return tuple(dict.fromkeys(name for name in names if name is not None and name not in NAMES))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), manual=st.booleans())
def test_arbitrary_observations_keep_the_epoch_rules(data: st.DataObject, manual: bool) -> None:
    policy = FailoverPolicy(
        mode="manual" if manual else "automatic",  # type: ignore[arg-type]
        failure_threshold=2,
        max_promotion_lag=POLICY.max_promotion_lag,
        cooldown_seconds=20.0,
        fence_timeout_seconds=20.0,
        promote_timeout_seconds=30.0,
        history_limit=3,
    )
    state, now, ledger = PairState.initial("m"), 0.0, Ledger()
    for _ in range(data.draw(st.integers(1, 30))):
        now += data.draw(st.sampled_from((0.0, 5.0, 10.0, 40.0)))
        observation = observation_for(data, state, now)
        decision = decide(state, observation, policy)
        ledger.check(state, decision, observation, policy)
        state = decision.state


FAULTS = ("none", "kill", "hang", "heal", "lag", "stale_active", "conflict", "switchover", "crash")


def inject(fault: str, pair: FakePair, state: PairState, victim: str | None) -> None:
    member = pair.members.get(victim) if victim else None
    if fault == "kill" and member is not None:
        del pair.members[member.name]
    elif fault == "hang" and member is not None:
        member.healthy = False
    elif fault == "heal":
        for each in pair.members.values():
            each.healthy, each.lag = True, 0
    elif fault == "lag" and member is not None:
        member.lag = 10 * POLICY.max_promotion_lag
    elif fault == "stale_active":
        pair.members["stray"] = FakeMember("stray", role=Role.ACTIVE, epoch=max(0, state.epoch - 1))
    elif fault == "conflict" and member is not None:
        member.epoch = state.epoch + 3


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fault_schedules_keep_the_invariants_and_the_pair_recovers(data: st.DataObject) -> None:
    state, pair = bootstrap(POLICY)
    ledger = Ledger()
    for number in range(data.draw(st.integers(1, 25))):
        fault = data.draw(st.sampled_from(FAULTS))
        inject(fault, pair, state, data.draw(st.none() | st.sampled_from(sorted(pair.members) or ["-"])))
        request = SwitchoverRequest(f"s{number}") if fault == "switchover" else None
        crash_after = data.draw(st.integers(0, 3)) if fault == "crash" else None
        state = _checked_round(state, pair, ledger, request, crash_after)

    inject("heal", pair, state, None)
    final = SwitchoverRequest("settle")  # also clears a sticky epoch conflict
    for _ in range(40):
        state = _checked_round(state, pair, ledger, final, None)
    _assert_recovered(state, pair)


def _checked_round(
    state: PairState,
    pair: FakePair,
    ledger: Ledger,
    request: SwitchoverRequest | None,
    crash_after: int | None,
) -> PairState:
    observation = pair.observe(request)
    decision = run_round(state, pair, POLICY, switchover=request, execute_first=crash_after)
    ledger.check(state, decision, observation, POLICY)
    assert len(pair.actives(decision.state.epoch)) <= 1, "two members never serve the current epoch"
    return decision.state


def _assert_recovered(state: PairState, pair: FakePair) -> None:
    assert (state.health, state.reason) == (Health.HEALTHY, Reason.HEALTHY), state.message
    assert state.active is not None
    assert pair.actives(state.epoch) == [state.active]
    assert pair.service_target == state.active
    assert state.standby in pair.members

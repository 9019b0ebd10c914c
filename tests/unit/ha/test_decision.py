"""The failover decision, case by case: steady state, thresholds, blockers, the full sequence."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from tests.unit.ha.sim import ROUND_SECONDS, FakeMember, FakePair, bootstrap, run_round, run_rounds
from trading_system.ha import (
    Action,
    CreateStandby,
    DeleteMember,
    EventType,
    FailoverKind,
    FailoverMode,
    FailoverPolicy,
    FenceMember,
    Health,
    Outcome,
    PairState,
    Phase,
    PromoteMember,
    RaiseEpoch,
    Reason,
    RecordEvent,
    Role,
    SwitchoverRequest,
    SwitchService,
    Wait,
    decide,
)

pytestmark = pytest.mark.unit

POLICY = FailoverPolicy(
    failure_threshold=3,
    max_promotion_lag=100,
    cooldown_seconds=60.0,
    fence_timeout_seconds=30.0,
    promote_timeout_seconds=60.0,
)


# m-0 active and m-1 standby at epoch 1 -> m-1 active at epoch 2, m-2 the new standby
FULL_SEQUENCE: list[Action] = [
    RaiseEpoch(2),
    FenceMember("m-0"),
    DeleteMember("m-0"),
    PromoteMember("m-1", 2),
    SwitchService("m-1"),
    CreateStandby("m-2"),
]


def raises(actions: list[Action]) -> list[RaiseEpoch]:
    return [action for action in actions if isinstance(action, RaiseEpoch)]


def events(actions: list[Action] | tuple[Action, ...], reason: Reason | None = None) -> list[RecordEvent]:
    found = [action for action in actions if isinstance(action, RecordEvent)]
    return [event for event in found if reason is None or event.reason is reason]


def waits(actions: list[Action] | tuple[Action, ...]) -> list[Wait]:
    return [action for action in actions if isinstance(action, Wait)]


def effectful(actions: list[Action] | tuple[Action, ...]) -> list[Action]:
    return [action for action in actions if not isinstance(action, RecordEvent | Wait)]


def fail_active(pair: FakePair, name: str = "m-0") -> None:
    pair.members[name].healthy = False


def past_cooldown(pair: FakePair) -> None:
    pair.now += POLICY.cooldown_seconds


# --- bootstrap and steady state -------------------------------------------------------


def test_bootstrap_creates_a_member_elects_it_at_epoch_one_and_adds_a_standby() -> None:
    state, pair = PairState.initial("m"), FakePair()
    state, actions = run_rounds(state, pair, POLICY, rounds=6)

    assert effectful(actions) == [
        CreateStandby("m-0"),
        RaiseEpoch(1),
        PromoteMember("m-0", 1),
        SwitchService("m-0"),
        CreateStandby("m-1"),
    ]
    assert (state.active, state.standby, state.epoch, state.health) == ("m-0", "m-1", 1, Health.HEALTHY)
    assert [record.kind for record in state.history] == [FailoverKind.ELECTION]
    assert state.last_failover_at is None  # an election deposes nobody and starts no cooldown


def test_an_election_needs_no_threshold_even_in_manual_mode() -> None:
    manual = replace(POLICY, mode=FailoverMode.MANUAL)
    state, actions = run_rounds(PairState.initial("m"), FakePair(), manual, rounds=5)
    assert raises(actions) == [RaiseEpoch(1)]
    assert state.active == "m-0"


def test_healthy_steady_state_does_nothing() -> None:
    state, pair = bootstrap(POLICY)
    for _ in range(5):
        decision = run_round(state, pair, POLICY)
        assert decision.actions == ()
        assert replace(decision.state, last_observed_at=None) == replace(state, last_observed_at=None)
        state = decision.state


def test_failures_below_threshold_do_nothing_and_a_success_resets_the_counter() -> None:
    state, pair = bootstrap(POLICY)
    past_cooldown(pair)
    fail_active(pair)
    state, actions = run_rounds(state, pair, POLICY, rounds=POLICY.failure_threshold - 1)
    assert actions == []
    assert state.failures == POLICY.failure_threshold - 1
    assert state.health is Health.HEALTHY
    assert "failed 2 of 3" in state.message

    pair.members["m-0"].healthy = True
    state, actions = run_rounds(state, pair, POLICY, rounds=1)
    assert actions == []
    assert state.failures == 0

    fail_active(pair)
    state, actions = run_rounds(state, pair, POLICY, rounds=POLICY.failure_threshold - 1)
    assert raises(actions) == []


@pytest.mark.parametrize(
    "unhealthy",
    [
        {"ready": False},
        {"healthz_ok": False},
        {"readyz_ok": False},
        {"role": Role.STANDBY},
        {"epoch": 0},
        {"epoch": None},
    ],
    ids=lambda change: next(iter(change)) + "=" + str(next(iter(change.values()))),
)
def test_each_probe_counts_as_a_failure_of_the_active(unhealthy: dict[str, Any]) -> None:
    state, pair = bootstrap(POLICY)
    observation = pair.observe()
    members = tuple(
        replace(member, **unhealthy) if member.name == "m-0" else member for member in observation.members
    )
    decision = decide(state, replace(observation, members=members), POLICY)
    assert decision.state.failures == 1


def test_an_active_that_no_longer_exists_fails_over_in_the_next_round() -> None:
    """No threshold to wait out for a deleted pod or a reaped process: it is not flaky."""
    state, pair = bootstrap(POLICY)
    past_cooldown(pair)
    observation = pair.observe()
    members = tuple(
        replace(member, exists=False) if member.name == "m-0" else member for member in observation.members
    )
    decision = decide(state, replace(observation, members=members), POLICY)
    assert raises(list(decision.actions)) == [RaiseEpoch(2)]
    assert any("m-0 no longer exists" in event.message for event in events(decision.actions))
    assert decision.state.failover is not None and decision.state.failover.target == "m-1"


# --- the automatic failover -----------------------------------------------------------


def test_threshold_reached_runs_the_full_sequence() -> None:
    state, pair = bootstrap(POLICY)
    fail_active(pair)  # the process hangs: the pod still exists until it is deleted
    state, actions = run_rounds(state, pair, POLICY, rounds=POLICY.failure_threshold + 5)

    assert effectful(actions) == FULL_SEQUENCE
    assert (state.active, state.standby, state.epoch, state.phase) == ("m-1", "m-2", 2, Phase.IDLE)
    assert state.fenced == ()
    assert state.health is Health.HEALTHY
    assert pair.service_target == "m-1"
    last = state.history[-1]
    assert (last.kind, last.source, last.target, last.epoch, last.outcome) == (
        FailoverKind.FAILOVER,
        "m-0",
        "m-1",
        2,
        Outcome.COMPLETED,
    )
    assert state.failover_count == 2
    assert state.last_failover_at == last.ended_at
    assert [e.reason for e in events(actions)] == [
        Reason.FAILOVER_STARTED,
        Reason.FAILOVER_COMPLETED,
        Reason.HEALTHY,
    ]


def test_the_raise_is_the_first_action_of_its_round() -> None:
    state, pair = bootstrap(POLICY)
    fail_active(pair)
    state, _ = run_rounds(state, pair, POLICY, rounds=POLICY.failure_threshold - 1)
    decision = run_round(state, pair, POLICY)
    assert decision.actions[0] == RaiseEpoch(2)
    assert decision.state.epoch == 2
    assert decision.state.phase is Phase.EPOCH_RAISED
    assert decision.state.active is None  # nobody is active under the new epoch until promoted


def test_promotion_waits_until_the_old_active_is_gone() -> None:
    state, pair = bootstrap(POLICY)
    fail_active(pair)
    pair.members["m-0"].undeletable = True
    state, _ = run_rounds(state, pair, POLICY, rounds=POLICY.failure_threshold)
    assert state.phase is Phase.EPOCH_RAISED

    decision = run_round(state, pair, POLICY)
    assert effectful(decision.actions) == [FenceMember("m-0"), DeleteMember("m-0")]
    assert decision.state.phase is Phase.EPOCH_RAISED


def test_an_old_active_that_reports_fenced_counts_as_out_of_service() -> None:
    state, pair = bootstrap(POLICY)
    pair.members["m-0"].undeletable = True  # deletion hangs, but the fence call got through
    pair.members["m-0"].role = Role.STANDBY  # it restarted as a standby: a failed active
    state, _ = run_rounds(state, pair, POLICY, rounds=POLICY.failure_threshold)
    assert state.phase is Phase.EPOCH_RAISED
    decision = run_round(state, pair, POLICY)  # the fence from the previous round is seen now
    assert PromoteMember("m-1", 2) in decision.actions


def test_an_old_active_that_never_goes_away_is_left_to_the_epoch_fence_after_the_timeout() -> None:
    state, pair = bootstrap(POLICY)
    fail_active(pair)
    pair.members["m-0"].undeletable = True
    state, _ = run_rounds(state, pair, POLICY, rounds=POLICY.failure_threshold)
    started = state.failover
    assert started is not None

    rounds = int(POLICY.fence_timeout_seconds // ROUND_SECONDS) + 1
    state, actions = run_rounds(state, pair, POLICY, rounds=rounds)
    assert len(events(actions, Reason.FENCE_TIMEOUT)) == 1
    assert PromoteMember("m-1", 2) in actions
    assert raises(actions) == []
    # the old member stays on the fenced list and keeps being removed
    decision = run_round(state, pair, POLICY)
    assert state.fenced == ("m-0",)
    assert DeleteMember("m-0") in decision.actions


def test_flapping_active_does_not_fail_over() -> None:
    state, pair = bootstrap(POLICY)
    past_cooldown(pair)
    all_actions: list[Action] = []
    for round_number in range(30):
        pair.members["m-0"].healthy = round_number % 2 == 1
        decision = run_round(state, pair, POLICY)
        state = decision.state
        all_actions.extend(decision.actions)
        assert state.failures <= 1
    assert all_actions == []
    assert state.active == "m-0"


def test_flapping_just_below_the_threshold_does_not_fail_over() -> None:
    state, pair = bootstrap(POLICY)
    past_cooldown(pair)
    pattern = [False] * (POLICY.failure_threshold - 1) + [True]
    for healthy in pattern * 5:
        pair.members["m-0"].healthy = healthy
        decision = run_round(state, pair, POLICY)
        state = decision.state
        assert raises(list(decision.actions)) == []


# --- what blocks a failover -----------------------------------------------------------


def test_both_members_unhealthy_promotes_nothing_and_reports_degraded() -> None:
    state, pair = bootstrap(POLICY)
    fail_active(pair)
    fail_active(pair, "m-1")
    state, actions = run_rounds(state, pair, POLICY, rounds=POLICY.failure_threshold + 4)

    assert raises(actions) == []
    assert not any(isinstance(action, PromoteMember) for action in actions)
    assert (state.health, state.reason) == (Health.DEGRADED, Reason.STANDBY_UNHEALTHY)
    assert "no promotion" in state.message
    assert len(waits(actions)) == 5  # every blocked round says why
    # one event when the pair became degraded, not one per round
    warnings = [event for event in events(actions) if event.type is EventType.WARNING]
    assert [event.reason for event in warnings] == [Reason.STANDBY_UNHEALTHY]


def test_a_lagging_standby_is_not_promoted_until_it_catches_up() -> None:
    state, pair = bootstrap(POLICY)
    past_cooldown(pair)
    pair.members["m-1"].lag = POLICY.max_promotion_lag + 1
    state, _ = run_rounds(state, pair, POLICY, rounds=1)
    assert (state.health, state.reason) == (Health.DEGRADED, Reason.STANDBY_LAGGING)

    fail_active(pair)
    state, actions = run_rounds(state, pair, POLICY, rounds=POLICY.failure_threshold + 2)
    assert raises(actions) == []
    assert {wait.reason for wait in waits(actions)} == {Reason.STANDBY_LAGGING}
    assert "lags 101 entries (limit 100)" in state.message

    pair.members["m-1"].lag = POLICY.max_promotion_lag
    decision = run_round(state, pair, POLICY)
    assert decision.actions[0] == RaiseEpoch(2)


def test_a_standby_that_cannot_report_its_lag_is_not_promoted() -> None:
    state, pair = bootstrap(POLICY)
    past_cooldown(pair)
    pair.members["m-1"].lag = None
    fail_active(pair)
    state, actions = run_rounds(state, pair, POLICY, rounds=POLICY.failure_threshold + 1)
    assert raises(actions) == []
    assert state.reason is Reason.STANDBY_LAGGING


def test_a_missing_standby_is_created_without_a_failover() -> None:
    state, pair = bootstrap(POLICY)
    del pair.members["m-1"]
    decision = run_round(state, pair, POLICY)
    assert effectful(decision.actions) == [CreateStandby("m-1")]  # same name: creation is idempotent
    assert decision.state.reason is Reason.STANDBY_MISSING
    assert decision.state.epoch == 1

    state, actions = run_rounds(decision.state, pair, POLICY, rounds=2)
    assert effectful(actions) == []
    assert state.health is Health.HEALTHY
    assert [event.reason for event in events(actions)] == [Reason.HEALTHY]


def test_a_repeated_create_names_the_same_member() -> None:
    state, pair = bootstrap(POLICY)
    del pair.members["m-1"]
    first = decide(state, pair.observe(), POLICY)
    pair.now += ROUND_SECONDS
    second = decide(first.state, pair.observe(), POLICY)  # the create has not shown up yet
    assert CreateStandby("m-1") in first.actions
    assert CreateStandby("m-1") in second.actions


def test_manual_mode_reports_but_does_not_fail_over() -> None:
    manual = replace(POLICY, mode=FailoverMode.MANUAL)
    state, pair = bootstrap(manual)
    fail_active(pair)
    state, actions = run_rounds(state, pair, manual, rounds=POLICY.failure_threshold + 3)
    assert raises(actions) == []
    assert (state.health, state.reason) == (Health.DEGRADED, Reason.MANUAL_FAILOVER_REQUIRED)
    assert len(events(actions, Reason.MANUAL_FAILOVER_REQUIRED)) == 1

    request = SwitchoverRequest("ticket-1")
    state, actions = run_rounds(state, pair, manual, rounds=5, switchover=request)
    assert raises(actions) == [RaiseEpoch(2)]
    assert state.active == "m-1"


def test_the_cooldown_delays_a_second_failover() -> None:
    state, pair = bootstrap(POLICY)
    fail_active(pair)
    state, _ = run_rounds(state, pair, POLICY, rounds=POLICY.failure_threshold + 4)
    assert state.active == "m-1"
    completed_at = state.last_failover_at
    assert completed_at is not None

    fail_active(pair, "m-1")
    seen_cooldown = False
    while state.epoch == 2:
        decision = run_round(state, pair, POLICY)
        if raises(list(decision.actions)):
            assert pair.now - ROUND_SECONDS >= completed_at + POLICY.cooldown_seconds
        seen_cooldown |= decision.state.reason is Reason.COOLDOWN
        state = decision.state
    assert seen_cooldown
    assert state.epoch == 3


# --- switchover -----------------------------------------------------------------------


def test_a_switchover_runs_the_same_sequence_and_only_once() -> None:
    state, pair = bootstrap(POLICY)
    request = SwitchoverRequest("maintenance-7", target="m-1")
    state, actions = run_rounds(state, pair, POLICY, rounds=8, switchover=request)

    assert effectful(actions) == FULL_SEQUENCE
    assert (state.active, state.standby, state.epoch) == ("m-1", "m-2", 2)
    assert state.handled_switchover == "maintenance-7"
    assert state.history[-1].kind is FailoverKind.SWITCHOVER


def test_a_switchover_is_not_held_back_by_the_cooldown() -> None:
    state, pair = bootstrap(POLICY)
    state, _ = run_rounds(state, pair, POLICY, rounds=6, switchover=SwitchoverRequest("a"))
    assert state.epoch == 2
    state, actions = run_rounds(state, pair, POLICY, rounds=6, switchover=SwitchoverRequest("b"))
    assert raises(actions) == [RaiseEpoch(3)]
    assert state.active == "m-2"


def test_a_switchover_to_the_active_is_ignored() -> None:
    state, pair = bootstrap(POLICY)
    decision = run_round(state, pair, POLICY, switchover=SwitchoverRequest("x", target="m-0"))
    assert effectful(decision.actions) == []
    assert [event.reason for event in events(decision.actions)] == [Reason.SWITCHOVER_IGNORED]
    assert decision.state.handled_switchover == "x"


def test_a_switchover_to_an_unknown_member_is_rejected_once() -> None:
    state, pair = bootstrap(POLICY)
    request = SwitchoverRequest("x", target="nope")
    state, actions = run_rounds(state, pair, POLICY, rounds=3, switchover=request)
    assert effectful(actions) == []
    rejected = events(actions, Reason.SWITCHOVER_REJECTED)
    assert len(rejected) == 1
    assert rejected[0].type is EventType.WARNING
    assert state.epoch == 1


def test_a_switchover_waits_for_a_lagging_standby() -> None:
    state, pair = bootstrap(POLICY)
    pair.members["m-1"].lag = 10_000
    request = SwitchoverRequest("x")
    state, actions = run_rounds(state, pair, POLICY, rounds=3, switchover=request)
    assert raises(actions) == []
    assert all(wait.reason is Reason.STANDBY_LAGGING for wait in waits(actions))
    assert state.handled_switchover is None

    pair.members["m-1"].lag = 0
    state, actions = run_rounds(state, pair, POLICY, rounds=6, switchover=request)
    assert raises(actions) == [RaiseEpoch(2)]


def test_a_switchover_without_any_standby_waits() -> None:
    state, pair = bootstrap(POLICY)
    del pair.members["m-1"]
    state = replace(state, standby=None)
    decision = run_round(state, pair, POLICY, switchover=SwitchoverRequest("x"))
    assert raises(list(decision.actions)) == []
    assert Wait in {type(action) for action in decision.actions}
    assert CreateStandby("m-2") in decision.actions


# --- members that must not be trusted -------------------------------------------------


def test_a_standby_reporting_a_higher_epoch_is_fenced_and_the_next_raise_goes_past_it() -> None:
    state, pair = bootstrap(POLICY)
    pair.members["m-1"].epoch = 5
    decision = run_round(state, pair, POLICY)

    assert FenceMember("m-1") in decision.actions
    assert DeleteMember("m-1") in decision.actions
    assert CreateStandby("m-2") in decision.actions
    conflict = events(decision.actions, Reason.EPOCH_CONFLICT)
    assert len(conflict) == 1
    assert conflict[0].type is EventType.WARNING
    state = decision.state
    assert (state.highest_seen_epoch, state.epoch, state.standby) == (5, 1, "m-2")
    assert (state.health, state.reason) == (Health.DEGRADED, Reason.EPOCH_CONFLICT)

    state, actions = run_rounds(state, pair, POLICY, rounds=6, switchover=SwitchoverRequest("fix"))
    assert raises(actions) == [RaiseEpoch(6)]
    assert state.health is Health.HEALTHY


def test_an_active_reporting_a_higher_epoch_is_fenced_and_replaced() -> None:
    state, pair = bootstrap(POLICY)
    past_cooldown(pair)
    pair.members["m-0"].epoch = 9
    state, actions = run_rounds(state, pair, POLICY, rounds=POLICY.failure_threshold + 6)
    assert len(events(actions, Reason.EPOCH_CONFLICT)) == 1
    assert raises(actions) == [RaiseEpoch(10)]
    assert (state.active, state.epoch) == ("m-1", 10)


def test_a_stray_member_claiming_active_is_fenced() -> None:
    state, pair = bootstrap(POLICY)
    pair.members["ghost"] = FakeMember("ghost", role=Role.ACTIVE, epoch=1)
    decision = run_round(state, pair, POLICY)
    assert FenceMember("ghost") in decision.actions
    assert DeleteMember("ghost") in decision.actions
    assert len(events(decision.actions, Reason.STRAY_ACTIVE)) == 1
    state, actions = run_rounds(decision.state, pair, POLICY, rounds=2)
    assert "ghost" not in pair.members
    assert state.fenced == ()
    assert effectful(actions) == []


def test_an_unknown_standby_is_left_alone() -> None:
    state, pair = bootstrap(POLICY)
    pair.members["visitor"] = FakeMember("visitor")
    state, actions = run_rounds(state, pair, POLICY, rounds=3)
    assert actions == []


def test_a_fresh_standby_name_skips_names_still_in_use() -> None:
    state, pair = bootstrap(POLICY)
    pair.members["m-2"] = FakeMember("m-2", role=Role.FENCED)
    del pair.members["m-1"]
    state = replace(state, standby=None)
    decision = run_round(state, pair, POLICY)
    assert CreateStandby("m-3") in decision.actions


# --- a failover that cannot finish ----------------------------------------------------


def test_a_target_that_vanishes_mid_failover_is_abandoned_and_a_fresh_epoch_elects_another() -> None:
    state, pair = bootstrap(POLICY)
    fail_active(pair)
    pair.members["m-0"].undeletable = True
    state, _ = run_rounds(state, pair, POLICY, rounds=POLICY.failure_threshold)
    assert state.phase is Phase.EPOCH_RAISED

    del pair.members["m-1"]
    pair.members["m-0"].undeletable = False
    decision = run_round(state, pair, POLICY)
    assert len(events(decision.actions, Reason.FAILOVER_ABANDONED)) == 1
    state = decision.state
    assert (state.phase, state.active, state.epoch) == (Phase.IDLE, None, 2)
    assert state.history[-1].outcome is Outcome.ABANDONED

    state, actions = run_rounds(state, pair, POLICY, rounds=6)
    assert raises(actions) == [RaiseEpoch(3)]
    assert state.history[-1].kind is FailoverKind.ELECTION
    assert state.active is not None
    assert state.active not in {"m-0", "m-1"}


def test_a_target_that_never_confirms_its_promotion_is_fenced_after_the_timeout() -> None:
    state, pair = bootstrap(POLICY)
    fail_active(pair)
    state, _ = run_rounds(state, pair, POLICY, rounds=POLICY.failure_threshold + 1)
    assert state.phase is Phase.OLD_FENCED
    asked_at = pair.now - ROUND_SECONDS
    pair.members["m-1"].healthy = False  # it hangs and never confirms the promotion

    actions: list[Action] = []
    while not events(actions, Reason.FAILOVER_ABANDONED):
        assert raises(actions) == []
        decision = run_round(state, pair, POLICY)
        state, actions = decision.state, list(decision.actions)
    assert pair.now - ROUND_SECONDS - asked_at == POLICY.promote_timeout_seconds
    assert "m-1" in state.fenced
    assert DeleteMember("m-1") in actions


def test_a_new_active_lost_before_the_service_switch_is_abandoned() -> None:
    state, pair = bootstrap(POLICY)
    fail_active(pair)
    state, _ = run_rounds(state, pair, POLICY, rounds=POLICY.failure_threshold + 2)
    assert state.phase is Phase.PROMOTED
    del pair.members["m-1"]
    decision = run_round(state, pair, POLICY)
    assert decision.state.active is None
    assert decision.state.history[-1].outcome is Outcome.ABANDONED

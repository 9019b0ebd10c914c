"""Crashes of the executor at any point of a failover, replays, and the persisted state's shape."""

from __future__ import annotations

import json

import pytest

from tests.unit.ha.sim import ROUND_SECONDS, FakePair, bootstrap, persisted, run_round
from tests.unit.ha.test_decision import POLICY, effectful, events, fail_active, raises
from trading_system.ha import (
    Action,
    FailoverKind,
    FailoverProgress,
    FailoverRecord,
    Health,
    Outcome,
    PairState,
    Phase,
    RaiseEpoch,
    Reason,
    decide,
)

pytestmark = pytest.mark.unit

FAILOVER_ROUNDS = range(POLICY.failure_threshold - 1, POLICY.failure_threshold + 5)
BEFORE_PERSISTING = None


def failover_with_one_crash(
    crash_round: int, executed: int | None
) -> tuple[PairState, FakePair, list[Action]]:
    """The active fails; in ``crash_round`` the executor dies after ``executed`` actions.

    ``executed=None`` models a death before the state was persisted: nothing of that
    round happened, and the restarted executor decides again from the previous state.
    """
    state, pair = bootstrap(POLICY)
    fail_active(pair)
    durable: list[Action] = []
    for round_number in range(POLICY.failure_threshold + 8):
        if round_number == crash_round and executed is BEFORE_PERSISTING:
            decide(state, pair.observe(), POLICY)
            pair.now += ROUND_SECONDS
            continue
        limit = executed if round_number == crash_round else None
        decision = run_round(state, pair, POLICY, execute_first=limit)
        state = persisted(decision.state)  # what the restarted executor reads back
        durable.extend(decision.actions)
    return state, pair, durable


@pytest.mark.parametrize("executed", [BEFORE_PERSISTING, 0, 1, 2, 3])
@pytest.mark.parametrize("crash_round", FAILOVER_ROUNDS)
def test_a_crash_at_any_step_resumes_and_raises_the_epoch_once(
    crash_round: int, executed: int | None
) -> None:
    state, pair, durable = failover_with_one_crash(crash_round, executed)

    assert raises(durable) == [RaiseEpoch(2)]
    assert (state.active, state.epoch, state.phase, state.health) == ("m-1", 2, Phase.IDLE, Health.HEALTHY)
    assert [record.kind for record in state.history] == [FailoverKind.ELECTION, FailoverKind.FAILOVER]
    assert len(events(durable, Reason.FAILOVER_COMPLETED)) == 1
    assert pair.actives(2) == ["m-1"]
    assert "m-0" not in pair.members
    assert pair.service_target == "m-1"
    assert state.standby in pair.members


def test_an_executor_that_dies_after_every_first_action_still_finishes_once() -> None:
    state, pair = bootstrap(POLICY)
    fail_active(pair)
    durable: list[Action] = []
    for _ in range(30):
        decision = run_round(state, pair, POLICY, execute_first=1)
        state = decision.state
        durable.extend(decision.actions)
    assert raises(durable) == [RaiseEpoch(2)]
    assert (state.active, state.phase) == ("m-1", Phase.IDLE)


@pytest.mark.parametrize(
    "step", [Phase.EPOCH_RAISED, Phase.OLD_FENCED, Phase.PROMOTED, Phase.SERVICE_SWITCHED]
)
def test_a_step_whose_actions_were_lost_asks_for_them_again(step: Phase) -> None:
    state, pair = bootstrap(POLICY)
    fail_active(pair)
    while (decision := decide(state, pair.observe(), POLICY)).state.phase is not step:
        for action in decision.actions:
            pair.apply(action)
        pair.now += ROUND_SECONDS
        state = decision.state

    pair.now += ROUND_SECONDS  # the executor died before executing any of them
    again = decide(persisted(decision.state), pair.observe(), POLICY)
    lost = [action for action in effectful(decision.actions) if not isinstance(action, RaiseEpoch)]
    assert lost
    assert effectful(again.actions) == lost
    assert again.state.epoch == decision.state.epoch


def test_a_completed_failover_is_quiet_on_the_next_rounds() -> None:
    state, pair = bootstrap(POLICY)
    fail_active(pair)
    for _ in range(POLICY.failure_threshold + 5):
        state = run_round(state, pair, POLICY).state
    assert state.phase is Phase.IDLE
    for _ in range(3):
        decision = run_round(state, pair, POLICY)
        assert decision.actions == ()
        state = decision.state


def test_replaying_a_round_repeats_no_raise_no_event_and_no_count() -> None:
    state, pair = bootstrap(POLICY)
    fail_active(pair)
    for _ in range(POLICY.failure_threshold + 5):
        observation = pair.observe()
        decision = decide(state, observation, POLICY)
        replay = decide(decision.state, observation, POLICY)
        assert not raises(list(replay.actions))
        assert not events(replay.actions)
        assert replay.state.failures == decision.state.failures
        for action in decision.actions:
            pair.apply(action)
        pair.now += ROUND_SECONDS
        state = decision.state


# --- the persisted state --------------------------------------------------------------


def busy_state() -> PairState:
    progress = FailoverProgress(
        kind=FailoverKind.SWITCHOVER,
        source="m-0",
        target="m-1",
        epoch=4,
        reason="switchover x requested",
        started_at=10.5,
        step=Phase.PROMOTED,
        step_started_at=12.0,
    )
    record = FailoverRecord(
        kind=FailoverKind.FAILOVER,
        source=None,
        target="m-0",
        epoch=3,
        reason="r",
        started_at=1.0,
        ended_at=2.0,
        outcome=Outcome.ABANDONED,
    )
    return PairState(
        prefix="ts-matching",
        epoch=4,
        active="m-1",
        fenced=("m-0",),
        next_index=2,
        failover=progress,
        highest_seen_epoch=3,
        handled_switchover="x",
        last_failover_at=2.0,
        failover_count=1,
        history=(record,),
        health=Health.FAILING_OVER,
        reason=Reason.SWITCHING_OVER,
        message="m",
        last_observed_at=12.0,
    )


@pytest.mark.parametrize("state", [PairState.initial("p"), busy_state()], ids=["initial", "mid-failover"])
def test_the_state_survives_a_trip_through_json(state: PairState) -> None:
    data = state.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain data: no enums, no tuples
    assert PairState.from_dict(json.loads(json.dumps(data))) == state


def test_the_dict_names_the_step_of_a_failover() -> None:
    data = busy_state().to_dict()
    assert data["failover"]["step"] == "promoted"
    assert data["history"][0]["outcome"] == "abandoned"
    assert data["fenced"] == ["m-0"]
    assert busy_state().phase is Phase.PROMOTED
    assert PairState.initial("p").phase is Phase.IDLE


def test_a_state_with_a_bad_value_is_refused() -> None:
    data = busy_state().to_dict()
    data["failover"]["step"] = "half_done"
    with pytest.raises(ValueError, match="half_done"):
        PairState.from_dict(data)

"""Properties of the 3PC state machine under arbitrary event sequences."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.coordinator.helpers import RISK, T0, new
from trading_system.coordinator import (
    DEFAULT_TIMEOUTS,
    LEDGER,
    TERMINAL_PHASES,
    Begin,
    BindHold,
    CancelVenueOrder,
    Effect,
    Event,
    ForceAbort,
    ForceCommit,
    HoldBound,
    HoldReleased,
    HoldStatus,
    InvalidTransition,
    LeaseAcquired,
    LeaseLost,
    Phase,
    ReleaseHold,
    ReserveFunds,
    SendOrder,
    Step,
    Timeout,
    Transaction,
    VenueAccepted,
    VenueOrderCancelled,
    VenueRejected,
    VenueStatus,
    VoteCast,
    VoteValue,
    apply,
)

pytestmark = pytest.mark.unit

ABORT_PHASES = (Phase.ABORTING, Phase.ABORTED)
ACKNOWLEDGEMENTS: dict[type, Callable[[float], Event]] = {
    BindHold: HoldBound,
    ReleaseHold: HoldReleased,
    CancelVenueOrder: VenueOrderCancelled,
}
MAX_FINISHING_EVENTS = 8

# Events are drawn with ``at=0`` and stamped with a running logical clock when applied.
noise = st.one_of(
    st.just(Begin(0.0)),
    st.builds(
        VoteCast,
        participant=st.sampled_from((LEDGER, RISK, "stranger")),
        value=st.sampled_from(VoteValue),
        reason=st.just("r"),
        at=st.just(0.0),
    ),
    st.sampled_from([VenueAccepted(0.0), HoldBound(0.0), HoldReleased(0.0), VenueOrderCancelled(0.0)]),
    st.just(VenueRejected("r", 0.0)),
    st.builds(Timeout, phase=st.sampled_from(Phase), at=st.just(0.0)),
    st.sampled_from([ForceCommit("ops", "r", 0.0), ForceAbort("ops", "r", 0.0)]),
    st.sampled_from([LeaseLost(0.0), LeaseAcquired("replica-b", 0.0)]),
)


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[Event, float]]:
    """A prefix of the commit path shuffled into noise; pure noise would hardly ever commit."""
    mostly_yes = st.sampled_from((VoteValue.YES, VoteValue.YES, VoteValue.YES, VoteValue.NO))
    commit_path: list[Event] = [
        Begin(0.0),
        VoteCast(LEDGER, draw(mostly_yes), "ledger", 0.0),
        VoteCast(RISK, draw(mostly_yes), "risk", 0.0),
        VenueAccepted(0.0),
        HoldBound(0.0),
    ]
    path = commit_path[: draw(st.integers(0, len(commit_path)))]
    extra = draw(st.lists(noise, max_size=15))
    order = draw(st.permutations([True] * len(path) + [False] * len(extra)))
    merged = [path.pop(0) if from_path else extra.pop(0) for from_path in order]
    elapsed = st.sampled_from((0.0, 0.0, 1.0, 4.0, 6.0, 11.0))
    return [(event, draw(elapsed)) for event in merged]


@dataclass
class World:
    """What may exist outside the coordinator, judged from effects and answers alone."""

    hold: bool = False
    venue_order: bool = False
    emitted: list[Effect] = field(default_factory=list)

    def learn(self, event: Event) -> None:
        """What the event itself says about the hold and the venue order."""
        match event:
            case VoteCast(participant=participant, value=value) if participant == LEDGER:
                self.hold = value is VoteValue.YES
            case HoldReleased():
                self.hold = False
            case VenueRejected():
                self.venue_order = False
            case VenueOrderCancelled():
                # Settlement releases the hold of an order the venue reports gone.
                self.venue_order = self.hold = False
            case VenueAccepted():
                self.venue_order = True
            case _:
                pass

    def execute(self, effects: tuple[Effect, ...]) -> None:
        self.emitted.extend(effects)
        for effect in effects:
            if isinstance(effect, ReserveFunds):
                self.hold = True
            elif isinstance(effect, SendOrder):
                self.venue_order = True

    def expected_compensation(self, txn_id: str) -> set[Effect]:
        """The venue order first; the hold only once the venue cannot fill against it."""
        if self.venue_order:
            return {CancelVenueOrder(txn_id)}
        if self.hold:
            return {ReleaseHold(txn_id)}
        return set()


def step_checked(transaction: Transaction, event: Event, world: World) -> Transaction:
    """Apply one event and check the per-step properties; refused events change nothing."""
    try:
        step = apply(transaction, event)
    except InvalidTransition as refused:
        assert refused.phase is transaction.phase
        return transaction
    if step.transaction is not transaction:
        world.learn(event)
    check_step(transaction, step, world)
    world.execute(step.effects)
    return step.transaction


def check_step(before: Transaction, step: Step, world: World) -> None:
    after, effects = step.transaction, step.effects
    assert len(set(effects)) == len(effects), "no effect is asked for twice in one step"
    assert Transaction.from_dict(after.to_dict()) == after
    undo = {effect for effect in effects if isinstance(effect, ReleaseHold | CancelVenueOrder)}
    assert undo <= world.expected_compensation(after.txn_id), "compensation only for what may exist"
    if before.phase not in ABORT_PHASES and after.phase in ABORT_PHASES:
        assert undo == world.expected_compensation(after.txn_id), "an abort undoes everything that may exist"
    if after.phase is Phase.ABORTED:
        assert not (world.hold or world.venue_order), "aborted leaves no hold and no venue order"
    if before.phase in (Phase.DO_COMMIT, *ABORT_PHASES):
        assert after.phase in (Phase.COMMITTED, Phase.DO_COMMIT) or after.phase in ABORT_PHASES
        assert (before.phase in ABORT_PHASES) == (after.phase in ABORT_PHASES), "a decision never flips"


def finish(transaction: Transaction, world: World, now: float) -> tuple[Transaction, int]:
    """Only timeouts from now on, with an executor that acknowledges what it is asked to do."""
    for count in range(MAX_FINISHING_EVENTS):
        if transaction.phase in TERMINAL_PHASES:
            return transaction, count
        if transaction.owner is None:
            event: Event = LeaseAcquired("rescuer", now)
        else:
            deadline = transaction.deadline(DEFAULT_TIMEOUTS)
            assert deadline is not None
            now = max(now, deadline)
            event = Timeout(transaction.phase, now)
        step = apply(transaction, event)
        check_step(transaction, step, world)
        world.execute(step.effects)
        transaction = acknowledge(step, world, now)
    return transaction, MAX_FINISHING_EVENTS


def acknowledge(step: Step, world: World, now: float) -> Transaction:
    transaction = step.transaction
    for effect in step.effects:
        answer = ACKNOWLEDGEMENTS.get(type(effect))
        if answer is not None and transaction.phase not in TERMINAL_PHASES:
            transaction = step_checked(transaction, answer(now), world)
    return transaction


@settings(max_examples=300, deadline=None)
@given(script=scripts(), ledger=st.booleans())
def test_any_event_sequence_then_timeouts_ends_committed_or_aborted(
    script: list[tuple[Event, float]], ledger: bool
) -> None:
    transaction = new((LEDGER, RISK) if ledger else (RISK,))
    world, now = World(), T0
    for template, elapsed in script:
        now += elapsed
        transaction = step_checked(transaction, replace(template, at=now), world)

    final, used = finish(transaction, world, now)
    assert final.phase in TERMINAL_PHASES
    assert used < MAX_FINISHING_EVENTS
    assert_outcome_consistent(final, world)


def assert_outcome_consistent(final: Transaction, world: World) -> None:
    said_no = any(vote.value is VoteValue.NO for vote in final.votes)
    bound = any(isinstance(effect, BindHold) for effect in world.emitted)
    undid = any(isinstance(effect, ReleaseHold | CancelVenueOrder) for effect in world.emitted)
    assert not (said_no and (bound or final.phase is Phase.COMMITTED)), "a NO vote never commits"
    if final.phase is Phase.COMMITTED:
        assert not undid, "a committed transaction was never compensated"
        assert final.venue is VenueStatus.ACCEPTED
        assert final.hold in (HoldStatus.BOUND, HoldStatus.NONE)
        assert (final.hold is HoldStatus.BOUND) == (LEDGER in final.participants)
    else:
        assert final.hold in (HoldStatus.NONE, HoldStatus.RELEASED)
        assert final.venue in (VenueStatus.NONE, VenueStatus.REJECTED, VenueStatus.CANCELLED)


@settings(max_examples=150, deadline=None)
@given(script=scripts())
def test_a_refused_event_leaves_the_transaction_as_it_was(script: list[tuple[Event, float]]) -> None:
    transaction, now = new(), T0
    for template, elapsed in script:
        now += elapsed
        snapshot = transaction.to_dict()
        try:
            transaction = apply(transaction, replace(template, at=now)).transaction
        except InvalidTransition:
            assert transaction.to_dict() == snapshot

"""The three-phase-commit state machine, transition by transition."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.unit.coordinator.helpers import PATHS, RISK, T0, in_phase, new, no, run, yes
from trading_system.coordinator import (
    DEFAULT_TIMEOUTS,
    LEDGER,
    Begin,
    BindHold,
    CancelVenueOrder,
    ConflictingVote,
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
    NotOwner,
    Phase,
    PhaseTimeouts,
    RecordAudit,
    ReleaseHold,
    RequestVote,
    ReserveFunds,
    SendOrder,
    StaleTimeout,
    Timeout,
    TimeoutNotDue,
    Transaction,
    TransactionClosed,
    UnknownParticipant,
    VenueAccepted,
    VenueOrderCancelled,
    VenueRejected,
    VenueStatus,
    VoteValue,
    apply,
    resume,
)

pytestmark = pytest.mark.unit

LATE = T0 + 1_000.0  # past every phase's deadline
ID = "txn-1"


# --- the paths through the protocol ---------------------------------------------------


def test_the_commit_path_asks_for_votes_sends_the_order_and_binds_the_hold() -> None:
    transaction, effects = run(
        new(), Begin(T0), yes(LEDGER, T0 + 1), yes(RISK, T0 + 2), VenueAccepted(T0 + 3), HoldBound(T0 + 4)
    )
    assert effects == [ReserveFunds(ID), RequestVote(ID, RISK), SendOrder(ID), BindHold(ID)]
    assert transaction.phase is Phase.COMMITTED
    assert (transaction.hold, transaction.venue) == (HoldStatus.BOUND, VenueStatus.ACCEPTED)
    assert [(v.participant, v.value, v.at) for v in transaction.votes] == [
        (LEDGER, VoteValue.YES, T0 + 1),
        (RISK, VoteValue.YES, T0 + 2),
    ]
    assert [(e.from_phase, e.to_phase, e.at) for e in transaction.history] == [
        (Phase.INIT, Phase.CAN_COMMIT, T0),
        (Phase.CAN_COMMIT, Phase.CAN_COMMIT, T0 + 1),
        (Phase.CAN_COMMIT, Phase.PRE_COMMIT, T0 + 2),
        (Phase.PRE_COMMIT, Phase.DO_COMMIT, T0 + 3),
        (Phase.DO_COMMIT, Phase.COMMITTED, T0 + 4),
    ]
    assert transaction.outcome_reason == "venue accepted"


def test_without_a_ledger_participant_there_is_no_hold_to_bind() -> None:
    transaction, effects = run(new((RISK,)), Begin(T0), yes(RISK), VenueAccepted(T0 + 2))
    assert effects == [RequestVote(ID, RISK), SendOrder(ID)]
    assert transaction.phase is Phase.COMMITTED
    assert transaction.hold is HoldStatus.NONE


def test_a_ledger_no_aborts_at_once_and_leaves_nothing_to_undo() -> None:
    transaction, effects = run(new(), Begin(T0), no(LEDGER))
    assert transaction.phase is Phase.ABORTED
    assert effects == [ReserveFunds(ID), RequestVote(ID, RISK)]
    assert transaction.hold is HoldStatus.NONE
    assert transaction.outcome_reason == "ledger voted no: limit exceeded"


def test_a_risk_no_after_the_ledger_reserved_releases_the_hold() -> None:
    transaction, effects = run(new(), Begin(T0), yes(LEDGER), no(RISK))
    assert transaction.phase is Phase.ABORTING
    assert effects[-1:] == [ReleaseHold(ID)]
    transaction, effects = run(transaction, HoldReleased(T0 + 3))
    assert transaction.phase is Phase.ABORTED
    assert (transaction.hold, effects) == (HoldStatus.RELEASED, [])


def test_a_no_before_the_ledger_answered_releases_the_hold_that_may_exist() -> None:
    transaction, effects = run(new(), Begin(T0), no(RISK))
    assert transaction.hold is HoldStatus.REQUESTED
    assert effects[-1:] == [ReleaseHold(ID)]
    # the ledger answers late: a NO means there never was a hold, so nothing is left to undo
    transaction, _ = run(transaction, no(LEDGER, T0 + 3))
    assert transaction.phase is Phase.ABORTED
    assert transaction.hold is HoldStatus.NONE


def test_a_ledger_yes_after_the_abort_has_finished_is_refused_as_closed() -> None:
    # The ledger must refuse a reservation for a transaction it already released
    # (docs/coordinator.md); the protocol cannot release a hold it never hears of again.
    transaction, _ = run(in_phase(Phase.CAN_COMMIT), no(RISK), HoldReleased(T0 + 2))
    assert transaction.phase is Phase.ABORTED
    with pytest.raises(TransactionClosed, match="is aborted"):
        apply(transaction, yes(LEDGER, T0 + 3))


def test_a_venue_reject_releases_the_hold_and_cancels_nothing() -> None:
    transaction, effects = run(in_phase(Phase.PRE_COMMIT), VenueRejected("price band", T0 + 3))
    assert transaction.phase is Phase.ABORTING
    assert effects == [ReleaseHold(ID)]
    assert transaction.venue is VenueStatus.REJECTED
    assert transaction.outcome_reason == "venue rejected: price band"


@pytest.mark.parametrize(
    ("phase", "expected_phase", "undo"),
    [
        (Phase.INIT, Phase.ABORTED, []),
        (Phase.CAN_COMMIT, Phase.ABORTING, [ReleaseHold(ID)]),
        # The venue may have the order: cancel it first; its hold waits for the venue's answer.
        (Phase.PRE_COMMIT, Phase.ABORTING, [CancelVenueOrder(ID)]),
    ],
)
def test_a_timeout_before_the_decision_aborts_and_undoes_what_may_exist(
    phase: Phase, expected_phase: Phase, undo: list[object]
) -> None:
    transaction, effects = run(in_phase(phase), Timeout(phase, LATE))
    assert transaction.phase is expected_phase
    assert effects == undo
    assert transaction.outcome_reason == f"timed out in {phase}"


def test_an_aborted_venue_order_that_was_accepted_late_is_cancelled_again() -> None:
    transaction, _ = run(in_phase(Phase.PRE_COMMIT), Timeout(Phase.PRE_COMMIT, LATE))
    transaction, effects = run(transaction, VenueAccepted(LATE + 1))  # it reached the book after all
    assert effects == [CancelVenueOrder(ID)]
    assert transaction.venue is VenueStatus.ACCEPTED and transaction.hold is HoldStatus.HELD
    transaction, effects = run(transaction, VenueOrderCancelled(LATE + 3))
    # Settlement releases what is left of the hold, after any fill that raced the cancel.
    assert effects == [] and transaction.phase is Phase.ABORTED
    assert (transaction.venue, transaction.hold) == (VenueStatus.CANCELLED, HoldStatus.RELEASED)


def test_a_venue_reject_during_the_abort_makes_the_cancel_unnecessary() -> None:
    transaction, _ = run(in_phase(Phase.PRE_COMMIT), Timeout(Phase.PRE_COMMIT, LATE))
    transaction, effects = run(transaction, VenueRejected("unknown symbol", LATE + 1))
    assert effects == [ReleaseHold(ID)]  # the venue never took it: nothing can fill, release now
    transaction, _ = run(transaction, HoldReleased(LATE + 2))
    assert transaction.phase is Phase.ABORTED
    assert transaction.venue is VenueStatus.REJECTED


# --- retries after the decision -------------------------------------------------------


def test_a_timeout_in_do_commit_retries_the_bind_and_never_aborts() -> None:
    transaction = in_phase(Phase.DO_COMMIT)
    for attempt in range(1, 4):
        deadline = transaction.deadline(DEFAULT_TIMEOUTS)
        assert deadline is not None
        step = apply(transaction, Timeout(Phase.DO_COMMIT, deadline))
        transaction = step.transaction
        assert step.effects == (BindHold(ID),)
        assert (transaction.phase, transaction.attempts) == (Phase.DO_COMMIT, attempt)
    assert apply(transaction, HoldBound(LATE)).transaction.phase is Phase.COMMITTED


def test_a_timeout_in_aborting_redrives_only_what_is_still_pending() -> None:
    transaction, _ = run(in_phase(Phase.PRE_COMMIT), Timeout(Phase.PRE_COMMIT, T0 + 50))
    step = apply(transaction, Timeout(Phase.ABORTING, T0 + 60))
    assert step.effects == (CancelVenueOrder(ID),)
    transaction = apply(step.transaction, VenueRejected("never taken", T0 + 61)).transaction
    step = apply(transaction, Timeout(Phase.ABORTING, T0 + 70))
    assert step.effects == (ReleaseHold(ID),)
    assert step.transaction.phase is Phase.ABORTING


def test_a_timeout_before_its_deadline_or_for_another_phase_changes_nothing() -> None:
    transaction = in_phase(Phase.CAN_COMMIT)
    with pytest.raises(TimeoutNotDue, match=r"times out at 105\.0"):
        apply(transaction, Timeout(Phase.CAN_COMMIT, T0 + 4.9))
    with pytest.raises(StaleTimeout, match="set for init"):
        apply(transaction, Timeout(Phase.INIT, LATE))
    assert transaction == in_phase(Phase.CAN_COMMIT)


def test_the_phase_timeouts_are_configurable() -> None:
    patient = PhaseTimeouts(can_commit=60.0)
    transaction = in_phase(Phase.CAN_COMMIT)
    assert transaction.deadline(patient) == T0 + 60.0
    with pytest.raises(TimeoutNotDue):
        apply(transaction, Timeout(Phase.CAN_COMMIT, T0 + 30.0), patient)
    assert (
        apply(transaction, Timeout(Phase.CAN_COMMIT, T0 + 60.0), patient).transaction.phase is Phase.ABORTING
    )


def test_a_phase_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        PhaseTimeouts(pre_commit=0.0)


def test_a_terminal_transaction_has_no_deadline() -> None:
    assert in_phase(Phase.COMMITTED).deadline(DEFAULT_TIMEOUTS) is None


# --- operators ------------------------------------------------------------------------


def test_force_commit_in_pre_commit_is_audited_then_binds_the_hold() -> None:
    step = apply(in_phase(Phase.PRE_COMMIT), ForceCommit("alice", "venue confirmed by phone", T0 + 9))
    assert step.effects == (
        RecordAudit(ID, "force_commit", "alice", "venue confirmed by phone"),
        BindHold(ID),
    )
    assert step.transaction.phase is Phase.DO_COMMIT
    assert step.transaction.outcome_reason == "forced by alice: venue confirmed by phone"


@pytest.mark.parametrize(
    ("phase", "undo"),
    [
        (Phase.INIT, ()),
        (Phase.CAN_COMMIT, (ReleaseHold(ID),)),
        (Phase.PRE_COMMIT, (CancelVenueOrder(ID),)),
    ],
)
def test_force_abort_is_audited_then_compensates(phase: Phase, undo: tuple[object, ...]) -> None:
    step = apply(in_phase(phase), ForceAbort("bob", "stuck", T0 + 9))
    assert step.effects == (RecordAudit(ID, "force_abort", "bob", "stuck"), *undo)
    assert step.transaction.phase is (Phase.ABORTING if undo else Phase.ABORTED)


# --- votes ----------------------------------------------------------------------------


def test_a_redelivered_vote_changes_nothing() -> None:
    transaction, _ = run(in_phase(Phase.CAN_COMMIT), yes(LEDGER))
    step = apply(transaction, yes(LEDGER, T0 + 5))
    assert step.transaction is transaction
    assert step.effects == ()


def test_a_changed_vote_is_refused() -> None:
    transaction, _ = run(in_phase(Phase.CAN_COMMIT), yes(LEDGER))
    with pytest.raises(ConflictingVote, match="ledger voted yes already"):
        apply(transaction, no(LEDGER))


def test_a_vote_from_a_stranger_is_refused() -> None:
    with pytest.raises(UnknownParticipant, match="mallory is not a participant"):
        apply(in_phase(Phase.CAN_COMMIT), yes("mallory"))


def test_participants_must_be_distinct_and_present() -> None:
    with pytest.raises(ValueError):
        Transaction.new("t", (), owner="a", at=0.0)
    with pytest.raises(ValueError):
        Transaction.new("t", (LEDGER, LEDGER), owner="a", at=0.0)


# --- ownership and resumption ---------------------------------------------------------


def test_after_losing_the_lease_only_acquiring_it_is_accepted() -> None:
    transaction, _ = run(in_phase(Phase.CAN_COMMIT), LeaseLost(T0 + 1))
    assert transaction.owner is None
    for event in (yes(LEDGER), Timeout(Phase.CAN_COMMIT, LATE), LeaseLost(T0 + 2)):
        with pytest.raises(NotOwner):
            apply(transaction, event)
    step = apply(transaction, LeaseAcquired("replica-b", T0 + 3))
    assert step.transaction.owner == "replica-b"
    assert step.transaction.history[-1].detail == "owner None -> replica-b"


def takeover(phase_path: tuple[Event, ...]) -> tuple[Effect, ...]:
    transaction, _ = run(new(), *phase_path)
    return apply(transaction, LeaseAcquired("replica-b", LATE)).effects


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ((), ()),
        ((Begin(T0),), (ReserveFunds(ID), RequestVote(ID, RISK))),
        ((Begin(T0), yes(LEDGER)), (RequestVote(ID, RISK),)),
        ((Begin(T0), yes(RISK)), (ReserveFunds(ID),)),
        (PATHS[Phase.PRE_COMMIT], (SendOrder(ID),)),
        (PATHS[Phase.DO_COMMIT], (BindHold(ID),)),
        (PATHS[Phase.ABORTING], (ReleaseHold(ID),)),
        (
            (*PATHS[Phase.PRE_COMMIT], Timeout(Phase.PRE_COMMIT, LATE)),
            (CancelVenueOrder(ID),),
        ),
        (
            (*PATHS[Phase.PRE_COMMIT], Timeout(Phase.PRE_COMMIT, LATE), VenueRejected("r", LATE)),
            (ReleaseHold(ID),),
        ),
    ],
    ids=[
        "init",
        "can_commit",
        "can_commit-ledger-voted",
        "can_commit-risk-voted",
        "pre_commit",
        "do_commit",
        "aborting-hold",
        "aborting-order-first",
        "aborting-hold-after-venue-reject",
    ],
)
def test_a_replica_taking_over_redrives_from_the_persisted_phase(
    path: tuple[Event, ...], expected: tuple[object, ...]
) -> None:
    assert takeover(path) == expected
    transaction, _ = run(new(), *path)
    assert resume(Transaction.from_dict(json.loads(json.dumps(transaction.to_dict())))) == expected


@pytest.mark.parametrize("phase", [Phase.COMMITTED, Phase.ABORTED])
def test_nothing_is_redriven_once_a_transaction_has_ended(phase: Phase) -> None:
    assert resume(in_phase(phase)) == ()


# --- every event in every phase -------------------------------------------------------

NOOP = "no change"

EVENTS: dict[str, Callable[[Transaction], Event]] = {
    "begin": lambda t: Begin(LATE),
    "ledger-yes": lambda t: yes(LEDGER, LATE),
    "risk-no": lambda t: no(RISK, LATE),
    "venue-accepted": lambda t: VenueAccepted(LATE),
    "venue-rejected": lambda t: VenueRejected("r", LATE),
    "hold-bound": lambda t: HoldBound(LATE),
    "hold-released": lambda t: HoldReleased(LATE),
    "venue-cancelled": lambda t: VenueOrderCancelled(LATE),
    "timeout": lambda t: Timeout(t.phase, LATE),
    "force-commit": lambda t: ForceCommit("ops", "r", LATE),
    "force-abort": lambda t: ForceAbort("ops", "r", LATE),
    "lease-lost": lambda t: LeaseLost(LATE),
    "lease-acquired": lambda t: LeaseAcquired("replica-b", LATE),
}

Outcome = Phase | str | type[InvalidTransition]
CLOSED: dict[str, Outcome] = dict.fromkeys(EVENTS, TransactionClosed)
BAD = InvalidTransition

TABLE: dict[Phase, dict[str, Outcome]] = {
    Phase.INIT: {
        "begin": Phase.CAN_COMMIT,
        "ledger-yes": BAD,
        "risk-no": BAD,
        "venue-accepted": BAD,
        "venue-rejected": BAD,
        "hold-bound": BAD,
        "hold-released": BAD,
        "venue-cancelled": BAD,
        "timeout": Phase.ABORTED,
        "force-commit": BAD,
        "force-abort": Phase.ABORTED,
        "lease-lost": Phase.INIT,
        "lease-acquired": Phase.INIT,
    },
    Phase.CAN_COMMIT: {
        "begin": BAD,
        "ledger-yes": Phase.CAN_COMMIT,
        "risk-no": Phase.ABORTING,
        "venue-accepted": BAD,
        "venue-rejected": BAD,
        "hold-bound": BAD,
        "hold-released": BAD,
        "venue-cancelled": BAD,
        "timeout": Phase.ABORTING,
        "force-commit": BAD,
        "force-abort": Phase.ABORTING,
        "lease-lost": Phase.CAN_COMMIT,
        "lease-acquired": Phase.CAN_COMMIT,
    },
    Phase.PRE_COMMIT: {
        "begin": BAD,
        "ledger-yes": NOOP,
        "risk-no": ConflictingVote,
        "venue-accepted": Phase.DO_COMMIT,
        "venue-rejected": Phase.ABORTING,
        "hold-bound": BAD,
        "hold-released": BAD,
        "venue-cancelled": BAD,
        "timeout": Phase.ABORTING,
        "force-commit": Phase.DO_COMMIT,
        "force-abort": Phase.ABORTING,
        "lease-lost": Phase.PRE_COMMIT,
        "lease-acquired": Phase.PRE_COMMIT,
    },
    Phase.DO_COMMIT: {
        "begin": BAD,
        "ledger-yes": NOOP,
        "risk-no": ConflictingVote,
        "venue-accepted": NOOP,
        "venue-rejected": BAD,
        "hold-bound": Phase.COMMITTED,
        "hold-released": BAD,
        "venue-cancelled": BAD,
        "timeout": Phase.DO_COMMIT,
        "force-commit": BAD,
        "force-abort": BAD,
        "lease-lost": Phase.DO_COMMIT,
        "lease-acquired": Phase.DO_COMMIT,
    },
    Phase.ABORTING: {
        "begin": BAD,
        "ledger-yes": NOOP,
        "risk-no": NOOP,
        "venue-accepted": BAD,
        "venue-rejected": BAD,
        "hold-bound": BAD,
        "hold-released": Phase.ABORTED,
        "venue-cancelled": BAD,
        "timeout": Phase.ABORTING,
        "force-commit": BAD,
        "force-abort": BAD,
        "lease-lost": Phase.ABORTING,
        "lease-acquired": Phase.ABORTING,
    },
    Phase.COMMITTED: CLOSED,
    Phase.ABORTED: CLOSED,
}

CASES = [(phase, name) for phase in Phase for name in EVENTS]


def test_the_table_covers_every_phase_and_event() -> None:
    assert {(phase, name) for phase, row in TABLE.items() for name in row} == set(CASES)


@pytest.mark.parametrize(("phase", "name"), CASES, ids=[f"{p}-{n}" for p, n in CASES])
def test_every_event_in_every_phase_moves_on_or_is_refused_without_a_change(phase: Phase, name: str) -> None:
    transaction = in_phase(phase)
    expected = TABLE[phase][name]
    event = EVENTS[name](transaction)
    if isinstance(expected, type):
        with pytest.raises(expected) as refused:
            apply(transaction, event)
        assert isinstance(refused.value, InvalidTransition)
        assert f"in phase {phase}" in str(refused.value)
        assert transaction == in_phase(phase)
        return
    step = apply(transaction, event)
    if expected == NOOP:
        assert step.transaction is transaction
        assert step.effects == ()
    else:
        assert step.transaction.phase is expected


# --- the persisted shape --------------------------------------------------------------


@pytest.mark.parametrize("phase", list(Phase))
def test_the_transaction_survives_a_trip_through_json(phase: Phase) -> None:
    transaction = in_phase(phase)
    data = transaction.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert Transaction.from_dict(json.loads(json.dumps(data))) == transaction


def test_the_dict_holds_votes_with_times_and_the_history() -> None:
    data = in_phase(Phase.ABORTED).to_dict()
    assert data["votes"] == [
        {"participant": "ledger", "value": "yes", "reason": "ok", "at": T0 + 1},
        {"participant": "risk", "value": "no", "reason": "limit exceeded", "at": T0 + 1},
    ]
    assert [entry["to_phase"] for entry in data["history"]] == [
        "can_commit",
        "can_commit",
        "aborting",
        "aborted",
    ]
    assert data["outcome_reason"] == "risk voted no: limit exceeded"

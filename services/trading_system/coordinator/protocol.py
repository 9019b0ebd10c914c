"""The three-phase-commit state machine of one order placement, as pure code.

``apply(transaction, event, timeouts)`` returns a ``Step``: the next transaction state
and the effects to execute. The driver persists ``Step.transaction`` before executing
``Step.effects``, executes them idempotently (all are keyed by the transaction id) and
feeds their outcomes back as events. An event that is not valid in the current phase
raises ``InvalidTransition`` and changes nothing. ``resume`` gives the effects a replica
must re-drive when it takes over a transaction from the persisted phase alone.

INIT -> CAN_COMMIT (votes requested) -> PRE_COMMIT (all voted yes; the decision is
durable and the order goes to the venue) -> DO_COMMIT (venue accepted; hold being bound)
-> COMMITTED, or, on a NO vote, a timeout, a venue reject or a forced abort, ABORTING
(compensation under way) -> ABORTED. See ``docs/coordinator.md``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeAlias, assert_never

LEDGER = "ledger"
"""The participant whose YES vote is a hold on the account: compensation must release it."""


class Phase(enum.StrEnum):
    INIT = "init"
    CAN_COMMIT = "can_commit"
    PRE_COMMIT = "pre_commit"
    DO_COMMIT = "do_commit"
    COMMITTED = "committed"
    ABORTING = "aborting"
    ABORTED = "aborted"


TERMINAL_PHASES = frozenset({Phase.COMMITTED, Phase.ABORTED})


class VoteValue(enum.StrEnum):
    YES = "yes"
    NO = "no"


class HoldStatus(enum.StrEnum):
    """What the coordinator knows of the ledger hold; REQUESTED means it may or may not exist."""

    NONE = "none"
    REQUESTED = "requested"
    HELD = "held"
    BOUND = "bound"
    RELEASED = "released"


class VenueStatus(enum.StrEnum):
    """What the coordinator knows of the venue order; SENT means it may or may not exist."""

    NONE = "none"
    SENT = "sent"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


HOLD_MAY_EXIST = frozenset({HoldStatus.REQUESTED, HoldStatus.HELD})
VENUE_ORDER_MAY_EXIST = frozenset({VenueStatus.SENT, VenueStatus.ACCEPTED})


@dataclass(frozen=True, slots=True)
class PhaseTimeouts:
    """Seconds per phase.

    In INIT, CAN_COMMIT and PRE_COMMIT the timeout aborts the transaction. In DO_COMMIT
    and ABORTING the outcome is already decided, so the timeout re-drives the pending
    effects instead; it is the retry interval.
    """

    init: float = 5.0
    can_commit: float = 5.0
    pre_commit: float = 10.0
    do_commit: float = 5.0
    aborting: float = 5.0

    def __post_init__(self) -> None:
        if min(dataclasses.astuple(self)) <= 0:
            raise ValueError(f"every phase timeout must be positive: {self}")

    def for_phase(self, phase: Phase) -> float | None:
        if phase in TERMINAL_PHASES:
            return None
        seconds: float = getattr(self, phase.value)
        return seconds


# --- the persisted transaction --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Vote:
    participant: str
    value: VoteValue
    reason: str
    at: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vote:
        return cls(str(data["participant"]), VoteValue(data["value"]), str(data["reason"]), float(data["at"]))


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One accepted event, so persistence can store every phase change with its time."""

    at: float
    event: str
    from_phase: Phase
    to_phase: Phase
    detail: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HistoryEntry:
        return cls(
            at=float(data["at"]),
            event=str(data["event"]),
            from_phase=Phase(data["from_phase"]),
            to_phase=Phase(data["to_phase"]),
            detail=str(data["detail"]),
        )


@dataclass(frozen=True, slots=True)
class Transaction:
    """One order placement. ``timer_started_at`` is when the current phase timeout began."""

    txn_id: str
    participants: tuple[str, ...]
    owner: str | None
    phase: Phase
    created_at: float
    timer_started_at: float
    hold: HoldStatus = HoldStatus.NONE
    venue: VenueStatus = VenueStatus.NONE
    votes: tuple[Vote, ...] = ()
    attempts: int = 0
    outcome_reason: str | None = None
    history: tuple[HistoryEntry, ...] = ()

    @classmethod
    def new(cls, txn_id: str, participants: Iterable[str], owner: str, at: float) -> Transaction:
        voters = tuple(participants)
        if not voters or len(set(voters)) != len(voters):
            raise ValueError(f"participants must be distinct and not empty: {voters}")
        return cls(
            txn_id=txn_id,
            participants=voters,
            owner=owner,
            phase=Phase.INIT,
            created_at=at,
            timer_started_at=at,
        )

    @property
    def is_terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def vote_of(self, participant: str) -> Vote | None:
        return next((vote for vote in self.votes if vote.participant == participant), None)

    @property
    def missing_votes(self) -> tuple[str, ...]:
        voted = {vote.participant for vote in self.votes}
        return tuple(name for name in self.participants if name not in voted)

    def deadline(self, timeouts: PhaseTimeouts) -> float | None:
        """When the current phase times out; None once the transaction has ended."""
        seconds = timeouts.for_phase(self.phase)
        return None if seconds is None else self.timer_started_at + seconds

    def to_dict(self, *, history: bool = True) -> dict[str, Any]:
        """Plain JSON-ready data; ``history=False`` leaves the history out (stored apart).

        Built by hand: ``dataclasses.asdict`` and a JSON round trip were a visible share
        of a coordinator's CPU, which saves every step.
        """
        return {
            "txn_id": self.txn_id,
            "participants": list(self.participants),
            "owner": self.owner,
            "phase": self.phase.value,
            "created_at": self.created_at,
            "timer_started_at": self.timer_started_at,
            "hold": self.hold.value,
            "venue": self.venue.value,
            "votes": [
                {"participant": v.participant, "value": v.value.value, "reason": v.reason, "at": v.at}
                for v in self.votes
            ],
            "attempts": self.attempts,
            "outcome_reason": self.outcome_reason,
            "history": [
                {
                    "at": h.at,
                    "event": h.event,
                    "from_phase": h.from_phase.value,
                    "to_phase": h.to_phase.value,
                    "detail": h.detail,
                }
                for h in self.history
            ]
            if history
            else [],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Transaction:
        owner, reason = data["owner"], data["outcome_reason"]
        return cls(
            txn_id=str(data["txn_id"]),
            participants=tuple(str(name) for name in data["participants"]),
            owner=None if owner is None else str(owner),
            phase=Phase(data["phase"]),
            created_at=float(data["created_at"]),
            timer_started_at=float(data["timer_started_at"]),
            hold=HoldStatus(data["hold"]),
            venue=VenueStatus(data["venue"]),
            votes=tuple(Vote.from_dict(vote) for vote in data["votes"]),
            attempts=int(data["attempts"]),
            outcome_reason=None if reason is None else str(reason),
            history=tuple(HistoryEntry.from_dict(entry) for entry in data["history"]),
        )


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    at: float


@dataclass(frozen=True, slots=True)
class VoteCast:
    participant: str
    value: VoteValue
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class VenueAccepted:
    at: float


@dataclass(frozen=True, slots=True)
class VenueRejected:
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class HoldBound:
    at: float


@dataclass(frozen=True, slots=True)
class HoldReleased:
    at: float


@dataclass(frozen=True, slots=True)
class VenueOrderCancelled:
    """The venue has no live order any more (cancelled, or it never had it)."""

    at: float


@dataclass(frozen=True, slots=True)
class Timeout:
    """The timer set for ``phase`` fired at logical time ``at``."""

    phase: Phase
    at: float


@dataclass(frozen=True, slots=True)
class ForceCommit:
    actor: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class ForceAbort:
    actor: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class LeaseLost:
    at: float


@dataclass(frozen=True, slots=True)
class LeaseAcquired:
    owner: str
    at: float


Event: TypeAlias = (
    Begin
    | VoteCast
    | VenueAccepted
    | VenueRejected
    | HoldBound
    | HoldReleased
    | VenueOrderCancelled
    | Timeout
    | ForceCommit
    | ForceAbort
    | LeaseLost
    | LeaseAcquired
)


# --- effects --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReserveFunds:
    """Ask the ledger to place the hold; its answer is the ledger's vote."""

    txn_id: str


@dataclass(frozen=True, slots=True)
class RequestVote:
    txn_id: str
    participant: str


@dataclass(frozen=True, slots=True)
class SendOrder:
    txn_id: str


@dataclass(frozen=True, slots=True)
class BindHold:
    txn_id: str


@dataclass(frozen=True, slots=True)
class ReleaseHold:
    txn_id: str


@dataclass(frozen=True, slots=True)
class CancelVenueOrder:
    txn_id: str


@dataclass(frozen=True, slots=True)
class RecordAudit:
    """An operator's forced decision, for the audit table."""

    txn_id: str
    action: str
    actor: str
    reason: str


Effect: TypeAlias = (
    ReserveFunds | RequestVote | SendOrder | BindHold | ReleaseHold | CancelVenueOrder | RecordAudit
)


@dataclass(frozen=True, slots=True)
class Step:
    transaction: Transaction
    effects: tuple[Effect, ...] = ()


# --- errors ---------------------------------------------------------------------------


class InvalidTransition(Exception):
    """The event is not valid for the transaction in its phase; nothing changed."""

    def __init__(self, transaction: Transaction, event: Event, why: str) -> None:
        self.txn_id = transaction.txn_id
        self.phase = transaction.phase
        self.event = event
        self.why = why
        name = type(event).__name__
        super().__init__(f"{name} is not valid for transaction {self.txn_id} in phase {self.phase}: {why}")


class TransactionClosed(InvalidTransition):
    """The transaction is COMMITTED or ABORTED; late messages for it are dropped."""


class NotOwner(InvalidTransition):
    """This replica does not hold the transaction's lease."""


class UnknownParticipant(InvalidTransition):
    pass


class ConflictingVote(InvalidTransition):
    """A participant tried to change its vote."""


class StaleTimeout(InvalidTransition):
    """A timer set for a phase the transaction has already left."""


class TimeoutNotDue(InvalidTransition):
    pass


# --- transitions ----------------------------------------------------------------------

DEFAULT_TIMEOUTS = PhaseTimeouts()


def apply(transaction: Transaction, event: Event, timeouts: PhaseTimeouts = DEFAULT_TIMEOUTS) -> Step:
    """The next state and the effects to execute, or ``InvalidTransition``."""
    if transaction.is_terminal:
        raise TransactionClosed(transaction, event, f"the transaction is {transaction.phase}")
    if transaction.owner is None and not isinstance(event, LeaseAcquired):
        raise NotOwner(transaction, event, "nobody holds the lease; acquire it first")
    match event:
        case Begin():
            return _begin(transaction, event)
        case VoteCast():
            return _vote(transaction, event)
        case VenueAccepted():
            return _venue_accepted(transaction, event)
        case VenueRejected():
            return _venue_rejected(transaction, event)
        case HoldBound():
            return _hold_bound(transaction, event)
        case HoldReleased():
            return _hold_released(transaction, event)
        case VenueOrderCancelled():
            return _venue_cancelled(transaction, event)
        case Timeout():
            return _timeout(transaction, event, timeouts)
        case ForceCommit():
            return _force_commit(transaction, event)
        case ForceAbort():
            return _force_abort(transaction, event)
        case LeaseLost():
            return Step(_moved(replace(transaction, owner=None), event, transaction.phase, "lease lost"))
        case LeaseAcquired():
            return _lease_acquired(transaction, event)
        case _:
            assert_never(event)


def resume(transaction: Transaction) -> tuple[Effect, ...]:
    """The effects to re-drive from the persisted phase alone; all of them are idempotent.

    INIT has none: nothing was asked yet, so the new owner sends ``Begin`` (or lets the
    INIT timeout abort the transaction).
    """
    match transaction.phase:
        case Phase.CAN_COMMIT:
            return _vote_requests(transaction)
        case Phase.PRE_COMMIT:
            return (SendOrder(transaction.txn_id),)
        case Phase.DO_COMMIT:
            return (BindHold(transaction.txn_id),)
        case Phase.ABORTING:
            return compensation(transaction)
        case Phase.INIT | Phase.COMMITTED | Phase.ABORTED:
            return ()
        case _:
            assert_never(transaction.phase)


def compensation(transaction: Transaction) -> tuple[Effect, ...]:
    """What must be undone: the venue order that may exist, else the hold that may exist.

    While the venue may hold the order, its hold is not released here: a fill racing the
    cancel must still settle against it. Settlement, which reads the venue's events in
    order, releases what is left once the venue reports the order gone (cancelled,
    unknown to a cancel, or fully filled); the coordinator releases only holds of orders
    the venue never took.
    """
    if transaction.venue in VENUE_ORDER_MAY_EXIST:
        return (CancelVenueOrder(transaction.txn_id),)
    if transaction.hold in HOLD_MAY_EXIST and transaction.venue is not VenueStatus.CANCELLED:
        return (ReleaseHold(transaction.txn_id),)
    return ()


def _moved(transaction: Transaction, event: Event, phase: Phase, detail: str = "") -> Transaction:
    """``transaction`` in ``phase``, with the event in its history and the timer restarted on a change."""
    entry = HistoryEntry(event.at, type(event).__name__, transaction.phase, phase, detail)
    timer = transaction.timer_started_at if phase is transaction.phase else event.at
    return replace(transaction, phase=phase, timer_started_at=timer, history=(*transaction.history, entry))


def _abort(transaction: Transaction, event: Event, reason: str) -> Step:
    undo = compensation(transaction)
    phase = Phase.ABORTING if undo else Phase.ABORTED
    aborted = _moved(replace(transaction, outcome_reason=reason), event, phase, reason)
    return Step(aborted, undo)


def _settle(transaction: Transaction, event: Event, detail: str, effects: tuple[Effect, ...] = ()) -> Step:
    """In ABORTING: move to ABORTED once nothing is left to compensate, else ask for what is."""
    left = compensation(transaction)
    phase = Phase.ABORTING if left else Phase.ABORTED
    return Step(_moved(transaction, event, phase, detail), effects or left)


def _begin(transaction: Transaction, event: Begin) -> Step:
    if transaction.phase is not Phase.INIT:
        raise InvalidTransition(transaction, event, "the transaction has begun already")
    hold = HoldStatus.REQUESTED if LEDGER in transaction.participants else HoldStatus.NONE
    begun = _moved(replace(transaction, hold=hold), event, Phase.CAN_COMMIT)
    return Step(begun, _vote_requests(begun))


def _vote_requests(transaction: Transaction) -> tuple[Effect, ...]:
    txn_id = transaction.txn_id
    return tuple(
        ReserveFunds(txn_id) if name == LEDGER else RequestVote(txn_id, name)
        for name in transaction.missing_votes
    )


def _vote(transaction: Transaction, event: VoteCast) -> Step:
    if event.participant not in transaction.participants:
        raise UnknownParticipant(transaction, event, f"{event.participant} is not a participant")
    previous = transaction.vote_of(event.participant)
    if previous is not None:
        if previous.value is event.value:
            return Step(transaction)  # a redelivered vote
        raise ConflictingVote(transaction, event, f"{event.participant} voted {previous.value} already")
    if transaction.phase is Phase.CAN_COMMIT:
        return _collect_vote(_with_vote(transaction, event), event)
    if transaction.phase is Phase.ABORTING:
        # A late answer still counts: a ledger NO here means there is no hold to release.
        return _settle(_with_vote(transaction, event), event, _vote_detail(event))
    raise InvalidTransition(transaction, event, f"no vote is expected in {transaction.phase}")


def _with_vote(transaction: Transaction, event: VoteCast) -> Transaction:
    vote = Vote(event.participant, event.value, event.reason, event.at)
    hold = transaction.hold
    if event.participant == LEDGER:
        hold = _hold_after_ledger_vote(hold, event.value)
    return replace(transaction, votes=(*transaction.votes, vote), hold=hold)


def _hold_after_ledger_vote(hold: HoldStatus, value: VoteValue) -> HoldStatus:
    if hold is not HoldStatus.REQUESTED:
        return hold
    return HoldStatus.HELD if value is VoteValue.YES else HoldStatus.NONE


def _vote_detail(event: VoteCast) -> str:
    return f"{event.participant} voted {event.value}: {event.reason}"


def _collect_vote(voted: Transaction, event: VoteCast) -> Step:
    if event.value is VoteValue.NO:
        return _abort(voted, event, _vote_detail(event))
    if voted.missing_votes:
        return Step(_moved(voted, event, Phase.CAN_COMMIT, _vote_detail(event)))
    decided = _moved(
        replace(voted, venue=VenueStatus.SENT), event, Phase.PRE_COMMIT, "every participant voted yes"
    )
    return Step(decided, (SendOrder(voted.txn_id),))


def _venue_accepted(transaction: Transaction, event: VenueAccepted) -> Step:
    match transaction.phase, transaction.venue:
        case Phase.PRE_COMMIT, _:
            return _commit(replace(transaction, venue=VenueStatus.ACCEPTED), event, "venue accepted")
        case ((Phase.DO_COMMIT | Phase.ABORTING), VenueStatus.ACCEPTED):
            return Step(transaction)  # a redelivered accept
        case Phase.ABORTING, (VenueStatus.SENT | VenueStatus.CANCELLED):
            # The order reached the book after all (perhaps overtaking its cancel): cancel again.
            accepted = replace(transaction, venue=VenueStatus.ACCEPTED)
            return _settle(accepted, event, "venue accepted late", (CancelVenueOrder(transaction.txn_id),))
        case _:
            raise InvalidTransition(transaction, event, f"the venue order is {transaction.venue}")


def _commit(transaction: Transaction, event: Event, reason: str) -> Step:
    decided = replace(transaction, outcome_reason=reason)
    if decided.hold is HoldStatus.HELD:
        return Step(_moved(decided, event, Phase.DO_COMMIT, reason), (BindHold(decided.txn_id),))
    return Step(_moved(decided, event, Phase.COMMITTED, reason))  # no ledger participant: nothing to bind


def _venue_rejected(transaction: Transaction, event: VenueRejected) -> Step:
    detail = f"venue rejected: {event.reason}"
    match transaction.phase, transaction.venue:
        case Phase.PRE_COMMIT, _:
            return _abort(replace(transaction, venue=VenueStatus.REJECTED), event, detail)
        case Phase.ABORTING, VenueStatus.SENT:
            return _settle(replace(transaction, venue=VenueStatus.REJECTED), event, detail)
        case Phase.ABORTING, VenueStatus.REJECTED:
            return Step(transaction)  # a redelivered reject
        case _:
            raise InvalidTransition(transaction, event, f"the venue order is {transaction.venue}")


def _hold_bound(transaction: Transaction, event: HoldBound) -> Step:
    if transaction.phase is not Phase.DO_COMMIT:
        raise InvalidTransition(transaction, event, "no hold is being bound")
    return Step(_moved(replace(transaction, hold=HoldStatus.BOUND), event, Phase.COMMITTED, "hold bound"))


def _hold_released(transaction: Transaction, event: HoldReleased) -> Step:
    match transaction.phase, transaction.hold:
        case Phase.ABORTING, (HoldStatus.REQUESTED | HoldStatus.HELD):
            return _settle(replace(transaction, hold=HoldStatus.RELEASED), event, "hold released")
        case Phase.ABORTING, HoldStatus.RELEASED:
            return Step(transaction)  # a redelivered acknowledgement
        case _:
            raise InvalidTransition(transaction, event, f"no release was asked for (hold {transaction.hold})")


def _venue_cancelled(transaction: Transaction, event: VenueOrderCancelled) -> Step:
    match transaction.phase, transaction.venue:
        case Phase.ABORTING, (VenueStatus.SENT | VenueStatus.ACCEPTED):
            # The hold is settlement's to release now (see ``compensation``).
            gone = replace(transaction, venue=VenueStatus.CANCELLED)
            if gone.hold in HOLD_MAY_EXIST:
                gone = replace(gone, hold=HoldStatus.RELEASED)
            return _settle(gone, event, "venue order cancelled; settlement releases the hold")
        case Phase.ABORTING, VenueStatus.CANCELLED:
            return Step(transaction)  # a redelivered acknowledgement
        case _:
            raise InvalidTransition(
                transaction, event, f"no cancel was asked for (venue {transaction.venue})"
            )


def _timeout(transaction: Transaction, event: Timeout, timeouts: PhaseTimeouts) -> Step:
    if event.phase is not transaction.phase:
        raise StaleTimeout(transaction, event, f"the timer was set for {event.phase}")
    deadline = transaction.deadline(timeouts)
    if deadline is None or event.at < deadline:
        raise TimeoutNotDue(transaction, event, f"the phase times out at {deadline}")
    if transaction.phase in (Phase.DO_COMMIT, Phase.ABORTING):
        # The outcome is decided; only its effects are late. Retry them, never flip the outcome.
        retried = replace(transaction, attempts=transaction.attempts + 1, timer_started_at=event.at)
        return Step(retried, resume(retried))
    return _abort(transaction, event, f"timed out in {transaction.phase}")


def _force_commit(transaction: Transaction, event: ForceCommit) -> Step:
    if transaction.phase is not Phase.PRE_COMMIT:
        # Before PRE_COMMIT not every participant voted yes: committing would skip a hold
        # or a risk check. After it the outcome is already decided.
        raise InvalidTransition(
            transaction, event, "only a transaction in pre_commit can be forced to commit"
        )
    audit = RecordAudit(transaction.txn_id, "force_commit", event.actor, event.reason)
    accepted = replace(transaction, venue=VenueStatus.ACCEPTED)
    step = _commit(accepted, event, f"forced by {event.actor}: {event.reason}")
    return Step(step.transaction, (audit, *step.effects))


def _force_abort(transaction: Transaction, event: ForceAbort) -> Step:
    if transaction.phase not in (Phase.INIT, Phase.CAN_COMMIT, Phase.PRE_COMMIT):
        raise InvalidTransition(transaction, event, "the outcome is decided already")
    audit = RecordAudit(transaction.txn_id, "force_abort", event.actor, event.reason)
    step = _abort(transaction, event, f"forced by {event.actor}: {event.reason}")
    return Step(step.transaction, (audit, *step.effects))


def _lease_acquired(transaction: Transaction, event: LeaseAcquired) -> Step:
    detail = f"owner {transaction.owner} -> {event.owner}"
    owned = _moved(replace(transaction, owner=event.owner), event, transaction.phase, detail)
    return Step(owned, resume(owned))

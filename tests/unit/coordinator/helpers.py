"""Transactions in each phase, built through the protocol itself."""

from __future__ import annotations

from trading_system.coordinator import (
    LEDGER,
    Begin,
    Effect,
    Event,
    HoldBound,
    HoldReleased,
    Phase,
    Transaction,
    VenueAccepted,
    VoteCast,
    VoteValue,
    apply,
)

RISK = "risk"
T0 = 100.0


def new(participants: tuple[str, ...] = (LEDGER, RISK)) -> Transaction:
    return Transaction.new("txn-1", participants, owner="replica-a", at=T0)


def yes(participant: str, at: float = T0 + 1) -> VoteCast:
    return VoteCast(participant, VoteValue.YES, "ok", at)


def no(participant: str, at: float = T0 + 1) -> VoteCast:
    return VoteCast(participant, VoteValue.NO, "limit exceeded", at)


def run(transaction: Transaction, *events: Event) -> tuple[Transaction, list[Effect]]:
    effects: list[Effect] = []
    for event in events:
        step = apply(transaction, event)
        transaction = step.transaction
        effects.extend(step.effects)
    return transaction, effects


PATHS: dict[Phase, tuple[Event, ...]] = {
    Phase.INIT: (),
    Phase.CAN_COMMIT: (Begin(T0),),
    Phase.PRE_COMMIT: (Begin(T0), yes(LEDGER), yes(RISK)),
    Phase.DO_COMMIT: (Begin(T0), yes(LEDGER), yes(RISK), VenueAccepted(T0 + 2)),
    Phase.COMMITTED: (Begin(T0), yes(LEDGER), yes(RISK), VenueAccepted(T0 + 2), HoldBound(T0 + 3)),
    Phase.ABORTING: (Begin(T0), yes(LEDGER), no(RISK)),
    Phase.ABORTED: (Begin(T0), yes(LEDGER), no(RISK), HoldReleased(T0 + 2)),
}


def in_phase(phase: Phase) -> Transaction:
    transaction, _ = run(new(), *PATHS[phase])
    assert transaction.phase is phase
    return transaction

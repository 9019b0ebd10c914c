"""The order transaction's three-phase commit, between the coordinator and participants.

CanCommit asks for votes, PreCommit makes the decision durable, DoCommit binds it; Abort
can come at any point before DoCommit. ``TxnOutcome`` reports the end either way.
"""

from __future__ import annotations

import enum

from trading_system.bus.catalog.common import Identifier, Reason
from trading_system.bus.messages import BusMessage


class TxnPhase(enum.StrEnum):
    CAN_COMMIT = "can_commit"
    PRE_COMMIT = "pre_commit"
    DO_COMMIT = "do_commit"
    ABORT = "abort"


class Vote(enum.StrEnum):
    YES = "yes"
    NO = "no"


class TxnResult(enum.StrEnum):
    COMMITTED = "committed"
    ABORTED = "aborted"


class TxnCanCommit(BusMessage):
    message_type = "txn.can_commit"
    transaction_id: Identifier
    participant: Identifier
    order_id: Identifier
    coordinator: Identifier


class TxnVote(BusMessage):
    message_type = "txn.vote"
    transaction_id: Identifier
    participant: Identifier
    vote: Vote
    reason: Reason = ""


class TxnPreCommit(BusMessage):
    message_type = "txn.pre_commit"
    transaction_id: Identifier
    participant: Identifier


class TxnDoCommit(BusMessage):
    message_type = "txn.do_commit"
    transaction_id: Identifier
    participant: Identifier


class TxnAbort(BusMessage):
    message_type = "txn.abort"
    transaction_id: Identifier
    participant: Identifier
    reason: Reason = ""


class TxnAck(BusMessage):
    message_type = "txn.ack"
    transaction_id: Identifier
    participant: Identifier
    phase: TxnPhase


class TxnOutcome(BusMessage):
    message_type = "txn.outcome"
    transaction_id: Identifier
    order_id: Identifier
    result: TxnResult
    reason: Reason = ""


MESSAGES: tuple[type[BusMessage], ...] = (
    TxnCanCommit,
    TxnVote,
    TxnPreCommit,
    TxnDoCommit,
    TxnAbort,
    TxnAck,
    TxnOutcome,
)

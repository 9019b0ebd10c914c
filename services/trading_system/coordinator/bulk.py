"""A group commit's coordinator writes as a few set-based statements (PostgreSQL).

Run one by one, a batch of 100 steps is 200 statements, and each statement is a round
trip: on a busy machine the batch took longer than the fsync it saved. Here all the
creations of a batch are one INSERT, all the claims one UPDATE, all the saves one
UPDATE, and so on (``unnest`` of one array per column), so a batch is about ten round
trips whatever its size. The rules are those of the single statements in ``sql_store``:

* claim: only an open transaction whose lease is free, ours or expired, and a row
  another transaction has locked (another replica's batch is writing it) is skipped,
  not waited for; a skipped or leased open transaction is busy (``LeaseBusyError``);
* save and release: only where this replica holds the lease; a save that matches no
  row lost its lease (``LeaseLostError``) and writes none of its history rows.

Each transaction appears at most once per round (a batch with two writes of one
transaction runs them in order, in two rounds of the same database transaction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from trading_system.coordinator.store import LeaseBusyError, LeaseLostError

TABLE = "coordinator_transactions"
EVENTS = "coordinator_transaction_events"


@dataclass(frozen=True, slots=True)
class Write:
    """One store write in the form the bulk statements take."""

    kind: str  # create | claim | save | release | published | audit
    txn_id: str
    owner: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    events: Sequence[dict[str, Any]] = ()


Outcome = tuple[bool, Any]
KINDS = ("create", "claim", "save", "release", "published", "audit")

_CREATE = text(
    f"""
    INSERT INTO {TABLE} (txn_id, order_id, account, symbol, order_json, state_json, phase, hold,
        venue, outcome_reason, created_at, updated_at, deadline, lease_owner, lease_expires_at)
    SELECT * FROM unnest(
        CAST(:txn_id AS TEXT[]), CAST(:order_id AS TEXT[]), CAST(:account AS TEXT[]),
        CAST(:symbol AS TEXT[]), CAST(:order_json AS TEXT[]), CAST(:state_json AS TEXT[]),
        CAST(:phase AS TEXT[]), CAST(:hold AS TEXT[]), CAST(:venue AS TEXT[]),
        CAST(:outcome_reason AS TEXT[]), CAST(:created_at AS DOUBLE PRECISION[]),
        CAST(:updated_at AS DOUBLE PRECISION[]), CAST(:deadline AS DOUBLE PRECISION[]),
        CAST(:lease_owner AS TEXT[]), CAST(:lease_expires_at AS DOUBLE PRECISION[]))
    ON CONFLICT (txn_id) DO NOTHING
    RETURNING txn_id
    """
)

_CLAIM = text(
    f"""
    UPDATE {TABLE} AS t
    SET lease_previous = t.lease_owner, lease_owner = :owner, lease_expires_at = v.expires
    FROM unnest(CAST(:txn_id AS TEXT[]), CAST(:expires AS DOUBLE PRECISION[])) AS v(txn_id, expires)
    WHERE t.txn_id = v.txn_id AND t.txn_id IN (
        SELECT c.txn_id FROM {TABLE} AS c
        JOIN unnest(CAST(:txn_id AS TEXT[]), CAST(:now AS DOUBLE PRECISION[])) AS w(txn_id, now)
          ON c.txn_id = w.txn_id
        WHERE c.phase IN ('init', 'can_commit', 'pre_commit', 'do_commit', 'aborting')
          AND (c.lease_owner IS NULL OR c.lease_owner = :owner OR c.lease_expires_at < w.now)
        ORDER BY c.txn_id
        FOR UPDATE OF c SKIP LOCKED)
    RETURNING t.txn_id, t.state_json, t.order_json, t.lease_previous
    """
)

_PHASES = text(f"SELECT txn_id, phase FROM {TABLE} WHERE txn_id = ANY(CAST(:txn_id AS TEXT[]))")

_SAVE = text(
    f"""
    UPDATE {TABLE} AS t
    SET state_json = v.state_json, phase = v.phase, hold = v.hold, venue = v.venue,
        outcome_reason = v.outcome_reason, deadline = v.deadline, updated_at = v.now,
        lease_owner = CASE WHEN v.release THEN NULL ELSE t.lease_owner END,
        lease_expires_at = v.expires, version = t.version + 1
    FROM unnest(
        CAST(:txn_id AS TEXT[]), CAST(:state_json AS TEXT[]), CAST(:phase AS TEXT[]),
        CAST(:hold AS TEXT[]), CAST(:venue AS TEXT[]), CAST(:outcome_reason AS TEXT[]),
        CAST(:deadline AS DOUBLE PRECISION[]), CAST(:now AS DOUBLE PRECISION[]),
        CAST(:release AS BOOLEAN[]), CAST(:expires AS DOUBLE PRECISION[]))
        AS v(txn_id, state_json, phase, hold, venue, outcome_reason, deadline, now, release, expires)
    WHERE t.txn_id = v.txn_id AND t.lease_owner = :owner
    RETURNING t.txn_id
    """
)

_RELEASE = text(
    f"""
    UPDATE {TABLE} SET lease_owner = NULL, lease_expires_at = 0
    WHERE txn_id = ANY(CAST(:txn_id AS TEXT[])) AND lease_owner = :owner
    """
)

_PUBLISHED = text(f"UPDATE {TABLE} SET outcome_published = true WHERE txn_id = ANY(CAST(:txn_id AS TEXT[]))")

_AUDIT = text(
    "INSERT INTO coordinator_audit (txn_id, at, action, actor, reason) "
    "VALUES (:txn_id, :at, :action, :actor, :reason)"
)

_EVENT = text(
    f"INSERT INTO {EVENTS} (txn_id, at, kind, name, from_phase, to_phase, participant, vote, detail, "
    "replica) VALUES (:txn_id, :at, :kind, :name, :from_phase, :to_phase, :participant, :vote, :detail, "
    ":replica)"
)


def rounds(writes: Sequence[Write]) -> list[list[int]]:
    """Indexes of ``writes`` split so that no round has two writes of one transaction,
    each transaction's writes in their order."""
    result: list[list[int]] = []
    seen: dict[str, int] = {}
    for index, write in enumerate(writes):
        number = seen.get(write.txn_id, -1) + 1
        seen[write.txn_id] = number
        if number == len(result):
            result.append([])
        result[number].append(index)
    return result


async def run_bulk(conn: AsyncConnection, writes: Sequence[Write]) -> list[Outcome]:
    outcomes: list[Outcome | None] = [None] * len(writes)
    events: list[dict[str, Any]] = []
    for indexes in rounds(writes):
        for kind in KINDS:
            chosen = [i for i in indexes if writes[i].kind == kind]
            for owner in sorted({writes[i].owner for i in chosen}):
                group = [i for i in chosen if writes[i].owner == owner]
                found = await _RUNNERS[kind](conn, owner, [writes[i] for i in group])
                for i, outcome in zip(group, found, strict=True):
                    outcomes[i] = outcome
                    if _wrote(writes[i], outcome):
                        events.extend(writes[i].events)
    if events:
        await conn.execute(_EVENT, events)
    return [outcome for outcome in outcomes if outcome is not None]


def _wrote(write: Write, outcome: Outcome) -> bool:
    """Whether the write landed, so its history rows belong in the table."""
    ok, value = outcome
    return ok and (write.kind != "create" or value is True)


def _column(writes: Sequence[Write], name: str) -> list[Any]:
    return [w.values[name] for w in writes]


def _columns(writes: Sequence[Write], names: Sequence[str]) -> dict[str, list[Any]]:
    return {name: _column(writes, name) for name in names}


async def _create(conn: AsyncConnection, owner: str, writes: Sequence[Write]) -> list[Outcome]:
    names = [
        "order_id",
        "account",
        "symbol",
        "order_json",
        "state_json",
        "phase",
        "hold",
        "venue",
        "outcome_reason",
        "created_at",
        "updated_at",
        "deadline",
        "lease_owner",
        "lease_expires_at",
    ]
    params = {"txn_id": [w.txn_id for w in writes], **_columns(writes, names)}
    created = {str(r.txn_id) for r in await conn.execute(_CREATE, params)}
    return [(True, w.txn_id in created) for w in writes]


async def _claim(conn: AsyncConnection, owner: str, writes: Sequence[Write]) -> list[Outcome]:
    params = {"owner": owner, "txn_id": [w.txn_id for w in writes], **_columns(writes, ("now", "expires"))}
    rows = {str(r.txn_id): r for r in await conn.execute(_CLAIM, params)}
    missing = [w.txn_id for w in writes if w.txn_id not in rows]
    phases: dict[str, str] = {}
    if missing:
        phases = {str(r.txn_id): str(r.phase) for r in await conn.execute(_PHASES, {"txn_id": missing})}
    open_phases = {"init", "can_commit", "pre_commit", "do_commit", "aborting"}
    outcomes: list[Outcome] = []
    for w in writes:
        if w.txn_id in rows:
            outcomes.append((True, rows[w.txn_id]))
        elif phases.get(w.txn_id) in open_phases:
            outcomes.append((False, LeaseBusyError(w.txn_id)))
        else:
            outcomes.append((True, None))
    return outcomes


async def _save(conn: AsyncConnection, owner: str, writes: Sequence[Write]) -> list[Outcome]:
    names = [
        "state_json",
        "phase",
        "hold",
        "venue",
        "outcome_reason",
        "deadline",
        "now",
        "release",
        "expires",
    ]
    params = {"owner": owner, "txn_id": [w.txn_id for w in writes], **_columns(writes, names)}
    saved = {str(r.txn_id) for r in await conn.execute(_SAVE, params)}
    return [(True, None) if w.txn_id in saved else (False, LeaseLostError(w.txn_id)) for w in writes]


async def _release(conn: AsyncConnection, owner: str, writes: Sequence[Write]) -> list[Outcome]:
    await conn.execute(_RELEASE, {"owner": owner, "txn_id": [w.txn_id for w in writes]})
    return [(True, None) for _ in writes]


async def _published(conn: AsyncConnection, owner: str, writes: Sequence[Write]) -> list[Outcome]:
    await conn.execute(_PUBLISHED, {"txn_id": [w.txn_id for w in writes]})
    return [(True, None) for _ in writes]


async def _audit(conn: AsyncConnection, owner: str, writes: Sequence[Write]) -> list[Outcome]:
    await conn.execute(_AUDIT, [{"txn_id": w.txn_id, **w.values} for w in writes])
    return [(True, None) for _ in writes]


_RUNNERS = {
    "create": _create,
    "claim": _claim,
    "save": _save,
    "release": _release,
    "published": _published,
    "audit": _audit,
}

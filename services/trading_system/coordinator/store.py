"""Where coordinator transactions live, and who may drive each one (the lease).

``TransactionStore`` is what a driver needs: create a transaction with its order,
claim its lease, save a step (fenced by the lease), release the lease, and find the
transactions that need attention (a due timeout, an expired lease). ``MemoryStore``
keeps everything in one process (the embedded demo, unit tests); ``SqlStore``
(``coordinator.sql_store``) keeps it in PostgreSQL or SQLite for replicated services.

The lease is held only while a replica is stepping a transaction: claimed before an
event is applied, renewed by each save, released once the step's effects have run. A
transaction waiting for the venue has no owner, so any replica can apply the venue's
answer; a lease still held after its expiry means its owner died mid-step, and the
replica that claims it then takes over and re-drives from the persisted phase.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from trading_system.coordinator.protocol import TERMINAL_PHASES, Phase, Transaction
from trading_system.matching.core import Side
from trading_system.pipeline.orders import OrderRequest

IN_DOUBT_PHASES = frozenset({Phase.PRE_COMMIT, Phase.DO_COMMIT, Phase.ABORTING})
"""Decided or being decided, waiting on the outside world (the venue, the ledger)."""


class LeaseLostError(RuntimeError):
    """This replica's lease on the transaction expired and another replica took it."""


class LeaseBusyError(RuntimeError):
    """Another replica holds a live lease on the transaction (it is mid-step)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed transaction; ``taken_over`` means the previous owner died holding it."""

    transaction: Transaction
    order: OrderRequest
    taken_over: bool
    previous_owner: str | None


@dataclass(frozen=True, slots=True)
class TxnRecord:
    """A stored transaction as operators see it."""

    transaction: Transaction
    order: OrderRequest
    lease_owner: str | None
    lease_expires_at: float
    updated_at: float
    outcome_published: bool


@dataclass(frozen=True, slots=True)
class AuditEntry:
    txn_id: str
    at: float
    action: str
    actor: str
    reason: str


class TransactionStore(Protocol):
    async def create(
        self,
        txn: Transaction,
        order: OrderRequest,
        owner: str,
        now: float,
        ttl: float,
        deadline: float | None,
    ) -> bool:
        """Insert the transaction with its lease held by ``owner``; False if it exists.

        ``deadline`` (here and in ``save``) is when the current phase times out, from the
        driver's ``PhaseTimeouts``; the store only compares it with the clock.
        """

    async def claim(self, txn_id: str, owner: str, now: float, ttl: float) -> Claim | None:
        """Take the lease if it is free, ours or expired; None if unknown or ended.

        ``LeaseBusyError`` if another replica holds a live lease.
        """

    async def save(
        self,
        before: Transaction,
        after: Transaction,
        owner: str,
        now: float,
        ttl: float,
        release: bool,
        deadline: float | None,
    ) -> None:
        """Persist ``after`` (and its new history and votes); ``LeaseLostError`` if not ours."""

    async def release(self, txn_id: str, owner: str) -> None: ...

    async def renew(self, owner: str, txn_ids: Collection[str], now: float, ttl: float) -> int:
        """Extend ``owner``'s leases of ``txn_ids`` (the work it has in progress)."""

    async def needing_attention(self, now: float, limit: int) -> list[str]:
        """Open transactions whose timeout is due (lease free) or whose lease expired."""

    async def unpublished(self, before: float, limit: int) -> list[TxnRecord]:
        """Ended transactions whose outcome was not announced yet (older than ``before``)."""

    async def mark_published(self, txn_id: str) -> None: ...

    async def recent_orders(self, account: str, since: float, exclude: str) -> int: ...

    async def record_audit(self, entry: AuditEntry) -> None: ...

    async def get(self, txn_id: str) -> TxnRecord | None: ...


def order_to_dict(order: OrderRequest) -> dict[str, Any]:
    return {**dataclasses.asdict(order), "side": int(order.side)}


def order_from_dict(data: dict[str, Any]) -> OrderRequest:
    return OrderRequest(
        order_id=str(data["order_id"]),
        account=str(data["account"]),
        symbol=str(data["symbol"]),
        side=Side(int(data["side"])),
        qty=int(data["qty"]),
        price=int(data["price"]),
    )


def lease_is_free(owner: str | None, expires_at: float, me: str, now: float) -> bool:
    """The lease rule, shared by every store: free, ours, or expired."""
    return owner is None or owner == me or expires_at < now


def is_takeover(owner: str | None, me: str) -> bool:
    """A claim that found another replica's lease (necessarily expired) takes over its work."""
    return owner is not None and owner != me


@dataclass(slots=True)
class _Row:
    txn: Transaction
    order: OrderRequest
    lease_owner: str | None
    lease_expires_at: float
    updated_at: float
    deadline: float | None
    published: bool = False


class MemoryStore:
    """A one-process store with the same lease rules as ``SqlStore``."""

    def __init__(self) -> None:
        self.rows: dict[str, _Row] = {}
        self.audit: list[AuditEntry] = []

    async def create(
        self,
        txn: Transaction,
        order: OrderRequest,
        owner: str,
        now: float,
        ttl: float,
        deadline: float | None,
    ) -> bool:
        if txn.txn_id in self.rows:
            return False
        self.rows[txn.txn_id] = _Row(txn, order, owner, now + ttl, now, deadline)
        return True

    async def claim(self, txn_id: str, owner: str, now: float, ttl: float) -> Claim | None:
        row = self.rows.get(txn_id)
        if row is None or row.txn.is_terminal:
            return None
        if not lease_is_free(row.lease_owner, row.lease_expires_at, owner, now):
            raise LeaseBusyError(txn_id)
        previous = row.lease_owner
        row.lease_owner, row.lease_expires_at = owner, now + ttl
        return Claim(row.txn, row.order, is_takeover(previous, owner), previous)

    async def save(
        self,
        before: Transaction,
        after: Transaction,
        owner: str,
        now: float,
        ttl: float,
        release: bool,
        deadline: float | None,
    ) -> None:
        row = self.rows.get(after.txn_id)
        if row is None or row.lease_owner != owner:
            raise LeaseLostError(after.txn_id)
        row.txn, row.updated_at, row.deadline = after, now, deadline
        row.lease_owner, row.lease_expires_at = (None, 0.0) if release else (owner, now + ttl)

    async def release(self, txn_id: str, owner: str) -> None:
        row = self.rows.get(txn_id)
        if row is not None and row.lease_owner == owner:
            row.lease_owner, row.lease_expires_at = None, 0.0

    async def renew(self, owner: str, txn_ids: Collection[str], now: float, ttl: float) -> int:
        mine = [row for txn_id, row in self.rows.items() if row.lease_owner == owner and txn_id in txn_ids]
        for row in mine:
            row.lease_expires_at = now + ttl
        return len(mine)

    async def needing_attention(self, now: float, limit: int) -> list[str]:
        found = []
        for txn_id, row in self.rows.items():
            if row.txn.phase in TERMINAL_PHASES:
                continue
            due = row.lease_owner is None and row.deadline is not None and row.deadline <= now
            if due or (row.lease_owner is not None and row.lease_expires_at < now):
                found.append(txn_id)
        return found[:limit]

    async def unpublished(self, before: float, limit: int) -> list[TxnRecord]:
        rows = [
            r for r in self.rows.values() if r.txn.is_terminal and not r.published and r.updated_at < before
        ]
        return [self._record(r) for r in rows[:limit]]

    async def mark_published(self, txn_id: str) -> None:
        if txn_id in self.rows:
            self.rows[txn_id].published = True

    async def recent_orders(self, account: str, since: float, exclude: str) -> int:
        return sum(
            1
            for txn_id, row in self.rows.items()
            if row.order.account == account and row.txn.created_at >= since and txn_id != exclude
        )

    async def record_audit(self, entry: AuditEntry) -> None:
        self.audit.append(entry)

    async def get(self, txn_id: str) -> TxnRecord | None:
        row = self.rows.get(txn_id)
        return None if row is None else self._record(row)

    @staticmethod
    def _record(row: _Row) -> TxnRecord:
        return TxnRecord(
            row.txn, row.order, row.lease_owner, row.lease_expires_at, row.updated_at, row.published
        )

"""What the operators' commands do, apart from argument parsing and printing.

A forced decision goes through the same driver as the replicas: it claims the
transaction's lease (waiting for a replica that is mid-step), applies ``ForceCommit`` or
``ForceAbort``, records the audit row and runs the compensation or the bind. It is
checked against the protocol first, so a refused command changes nothing.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

from trading_system.bus import MessageBus
from trading_system.bus.catalog import OrderCancel, TxnOutcome
from trading_system.bus.catalog.transaction import TxnResult
from trading_system.coordinator import protocol as p
from trading_system.coordinator.sql_store import SqlStore, migrate_coordinator
from trading_system.coordinator.store import TxnRecord
from trading_system.pipeline.coordinator import CoordinatorDriver, DirectLedger, order_new
from trading_system.pipeline.messages import OUTCOME_KEY, Names, make_bus, topology
from trading_system.storage import create_engine, current_token


class OperatorError(Exception):
    """Bad input: nothing was changed."""


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def summary(record: TxnRecord, now: float) -> str:
    txn = record.transaction
    owner = record.lease_owner or "-"
    age = now - txn.created_at
    state = f"{txn.phase.value:<10} hold={txn.hold.value:<9} venue={txn.venue.value:<9}"
    return f"{txn.txn_id}  {state} age={age:8.1f}s owner={owner}"


class Operations:
    def __init__(self, db_url: str, bus_urls: tuple[str, ...], namespace: str, fence_pair: str) -> None:
        self.db = create_engine(db_url)
        self.store = SqlStore(self.db)
        self.bus_urls = bus_urls
        self.names = Names.namespaced(namespace)
        self.fence_pair = fence_pair
        self._bus: MessageBus | None = None

    async def close(self) -> None:
        if self._bus is not None:
            await self._bus.close()
        await self.db.dispose()

    async def _record(self, txn_id: str) -> TxnRecord:
        await migrate_coordinator(self.db)
        record = await self.store.get(txn_id)
        if record is None:
            raise OperatorError(f"unknown transaction {txn_id!r}")
        return record

    async def bus(self) -> MessageBus:
        if self._bus is None:
            self._bus = make_bus(",".join(self.bus_urls) or None, service="coordinator-operator")
            await self._bus.start()
            await self._bus.declare(topology(self.names))
        return self._bus

    async def listing(self, *, in_doubt: bool, stuck_for: float | None, limit: int) -> list[str]:
        await migrate_coordinator(self.db)
        now = time.time()
        records = await self.store.list_records(now=now, in_doubt=in_doubt, stuck_for=stuck_for, limit=limit)
        return [summary(record, now) for record in records] or ["(no transactions)"]

    async def show(self, txn_id: str) -> list[str]:
        record = await self._record(txn_id)
        txn, order = record.transaction, record.order
        lines = [
            summary(record, time.time()),
            f"order {order.order_id} account={order.account} {order.symbol} side={order.side.name} "
            f"qty={order.qty} price={order.price}",
            f"outcome: {txn.outcome_reason or '-'}  published={record.outcome_published}",
        ]
        for event in await self.store.events(txn_id):
            if event.kind == "vote":
                lines.append(f"{_when(event.at)}  vote {event.participant}={event.vote}: {event.detail}")
            else:
                step = f"{event.from_phase or '-'} -> {event.to_phase}"
                lines.append(
                    f"{_when(event.at)}  {event.name:<20} {step:<26} {event.detail} [{event.replica}]"
                )
        for entry in await self.store.audit_entries(txn_id):
            lines.append(f"{_when(entry.at)}  AUDIT {entry.action} by {entry.actor}: {entry.reason}")
        return lines

    async def force(self, txn_id: str, *, commit: bool, reason: str, operator: str) -> list[str]:
        if not reason.strip() or not operator.strip():
            raise OperatorError("--reason and --operator must not be empty")
        record = await self._record(txn_id)
        now = time.time()
        event: p.Event = (
            p.ForceCommit(operator, reason, now) if commit else p.ForceAbort(operator, reason, now)
        )
        try:  # a dry run: the protocol refuses what the phase does not allow
            p.apply(replace(record.transaction, owner=record.transaction.owner or "operator"), event)
        except p.InvalidTransition as exc:
            raise OperatorError(str(exc)) from exc
        driver = await self._driver(operator)
        after = await driver.drive(txn_id, event)
        if after is None:
            raise OperatorError(f"{txn_id} is being driven by a replica that keeps its lease; retry")
        return [f"{txn_id}: {record.transaction.phase.value} -> {after.phase.value} ({after.outcome_reason})"]

    async def _driver(self, operator: str) -> CoordinatorDriver:
        fence = await current_token(self.db, self.fence_pair)
        return CoordinatorDriver(
            await self.bus(),
            DirectLedger(self.db),
            fence,
            {},
            owner=f"operator:{operator}",
            clock=time.time,
            names=self.names,
            store=self.store,
            keep_transactions=False,
        )

    async def replay(self, txn_id: str) -> list[str]:
        """Send again what the transaction sent: the order, its cancel, its outcome."""
        record = await self._record(txn_id)
        txn, order = record.transaction, record.order
        bus, exchange = await self.bus(), self.names.exchange
        sent: list[str] = []
        aborting = txn.phase in (p.Phase.ABORTING, p.Phase.ABORTED)
        if txn.venue in p.VENUE_ORDER_MAY_EXIST and not aborting:
            await bus.publish(order_new(order), exchange=exchange, transaction_id=txn_id)
            sent.append("order.new")
        if aborting and txn.venue in (*p.VENUE_ORDER_MAY_EXIST, p.VenueStatus.CANCELLED):
            cancel = OrderCancel(
                order_id=order.order_id, account=order.account, symbol=order.symbol, reason="replay"
            )
            await bus.publish(cancel, exchange=exchange, transaction_id=txn_id)
            sent.append("order.cancel")
        if txn.is_terminal:
            result = TxnResult.COMMITTED if txn.phase is p.Phase.COMMITTED else TxnResult.ABORTED
            outcome = TxnOutcome(
                transaction_id=txn_id, order_id=order.order_id, result=result, reason=txn.outcome_reason or ""
            )
            await bus.publish(outcome, exchange=exchange, routing_key=OUTCOME_KEY, transaction_id=txn_id)
            sent.append("txn.outcome")
        return [f"{txn_id}: re-published {', '.join(sent) or 'nothing (nothing was sent yet)'}"]

"""The execution service: the HTTP order API, order state from matching events, parents.

    trading-system execution serve --port 8080 --role standby

Active member: takes orders over HTTP, writes each one (fenced by epoch) before it
publishes the placement to the coordinators (``OrderNew`` with routing key
``coordinator.place``) and answers only once the broker confirmed it; consumes the
matching engine's events (``Names.execution``) and the coordinators' ``TxnOutcome``
(``Names.outcomes``) to track every order, and releases parent orders' children on its
clock. Standby member: serves reads from a copy it reloads from the database, refuses
writes (503) and consumes nothing. ``/promote {"epoch": N}`` raises the fence row first,
then loads every order the old active persisted and starts consuming; a member whose
epoch was overtaken turns ``fenced`` at its next write or epoch check.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from pydantic import BaseModel, ValidationError
from sqlalchemy import exists, func, select

from trading_system.bus import Envelope, MessageBus, PermanentError, TransientError
from trading_system.bus.catalog import OrderCancel, OrderNew, TxnOutcome
from trading_system.bus.catalog.transaction import TxnResult
from trading_system.bus.consumer import Subscription
from trading_system.bus.messages import format_errors
from trading_system.common.auth import Scope, TokenSet
from trading_system.common.http import Readiness, ServiceHttp, json_error, require
from trading_system.common.lifecycle import run_until_signalled
from trading_system.execution.algos import ParentOrder
from trading_system.execution.book import ExecutionBook, FillReport, OrderRecord
from trading_system.execution.order_state import OrderStatus
from trading_system.execution.parents import ParentRecord, build_schedule
from trading_system.execution.rate_limit import RateLimiter
from trading_system.execution.service import models as m
from trading_system.execution.service.group_commit import GroupCommit
from trading_system.execution.service.metrics import ROLE_VALUES, ExecutionMetrics
from trading_system.execution.service.openapi import Route, build_openapi
from trading_system.execution.service.store import DuplicateClientOrderId, OrderStore
from trading_system.execution.slippage import report
from trading_system.ledger import Instrument, get_balances
from trading_system.ledger.pricing import instrument_of_symbol
from trading_system.ledger.schema import accounts, settled_trades
from trading_system.matching.core import SymbolSpec
from trading_system.pipeline.ledger_gate import LedgerGate
from trading_system.pipeline.messages import CANCEL_KEY, PLACE_KEY, MatchingEvents, Names, topology
from trading_system.pipeline.messages import registry as bus_registry
from trading_system.pipeline.orders import txn_id_for
from trading_system.pipeline.publish_batcher import PublishBatcher
from trading_system.pipeline.settlement import SettlementConsumer
from trading_system.storage import create_engine
from trading_system.storage.fencing import FencedError, FenceToken, raise_epoch, read_fence

log = logging.getLogger(__name__)
Model = TypeVar("Model", bound=BaseModel)
Clock = Callable[[], float]


class Role(enum.StrEnum):
    ACTIVE = "active"
    STANDBY = "standby"
    FENCED = "fenced"


@dataclass
class ExecutionConfig:
    db_url: str
    role: Role = Role.STANDBY
    epoch: int = 0
    bus_mode: str | None = None
    bus_urls: tuple[str, ...] = ()
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    holder: str = field(default_factory=socket.gethostname)
    pair_name: str = "execution"
    namespace: str = ""
    specs: tuple[SymbolSpec, ...] = ()
    rate: float = 100.0
    burst: int = 200
    parent_interval: float = 0.1
    epoch_check_interval: float = 1.0
    refresh_interval: float = 1.0
    # Settlement runs in the active member, fenced by this pair's epoch like every other
    # ledger write of the execution side (DESIGN.md section 4). Its fee must be the one the
    # coordinators reserve with.
    settle: bool = True
    fee_bps: int = 10
    instruments: tuple[Instrument, ...] = ()

    @property
    def names(self) -> Names:
        return Names.namespaced(self.namespace)

    def instrument_map(self) -> dict[str, Instrument]:
        """Given instruments, else ``BASE-QUOTE`` symbol names read as base and quote assets."""
        if self.instruments:
            return {i.symbol: i for i in self.instruments}
        found = (instrument_of_symbol(spec.symbol) for spec in self.specs)
        return {i.symbol: i for i in found if i is not None}


def tokens_from_env(prefix: str = "TRADING_SYSTEM") -> TokenSet:
    """``*_API_TOKEN``/``*_ADMIN_TOKEN`` (the chart's Secret) and their plural rotation forms."""
    return TokenSet.from_env(prefix)


class _Refused(Exception):
    """A request refused with an HTTP error answer (raised from the helpers)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/orders",
        "Submit an order",
        "_submit",
        m.OrderOut,
        201,
        m.SubmitOrder,
        errors=(409, 429, 503),
    ),
    Route(
        "GET", "/orders", "List orders", "_list_orders", m.OrderList, query=("account", "symbol", "status")
    ),
    Route(
        "POST",
        "/orders/cancel-all",
        "Cancel every live order of an account and/or symbol",
        "_cancel_all",
        m.CancelAllOut,
        202,
        m.CancelAll,
        errors=(429, 503),
    ),
    Route("GET", "/orders/{order_id}", "Get one order", "_get_order", m.OrderOut, errors=(404,)),
    Route(
        "POST",
        "/orders/{order_id}/cancel",
        "Cancel an order",
        "_cancel",
        m.OrderOut,
        202,
        errors=(404, 409, 429, 503),
    ),
    Route(
        "POST",
        "/orders/{order_id}/replace",
        "Replace an order (cancel + new)",
        "_replace",
        m.ReplaceOut,
        201,
        m.ReplaceOrder,
        errors=(404, 409, 429, 503),
    ),
    Route(
        "POST",
        "/parent-orders",
        "Submit a parent order (chunk, TWAP, VWAP)",
        "_submit_parent",
        m.ParentOut,
        201,
        m.SubmitParent,
        errors=(409, 429, 503),
    ),
    Route("GET", "/parent-orders", "List parent orders", "_list_parents", m.ParentList, query=("account",)),
    Route(
        "GET",
        "/parent-orders/{parent_id}",
        "A parent order's progress",
        "_get_parent",
        m.ParentOut,
        errors=(404,),
    ),
    Route(
        "POST",
        "/parent-orders/{parent_id}/cancel",
        "Cancel a parent order and its live children",
        "_cancel_parent",
        m.ParentOut,
        202,
        errors=(404, 409, 503),
    ),
    Route(
        "GET",
        "/accounts/{account}/balances",
        "Ledger balances of an account",
        "_balances",
        m.BalancesOut,
        errors=(404, 503),
    ),
    Route(
        "GET",
        "/accounts/{account}/positions",
        "Net positions from settled trades",
        "_positions",
        m.PositionsOut,
        errors=(404, 503),
    ),
    Route(
        "POST",
        "/promote",
        "Take the given epoch and become active",
        "_promote",
        m.RoleOut,
        request=m.EpochBody,
        scope=Scope.ADMIN,
        errors=(409,),
    ),
    Route("POST", "/demote", "Stop being active", "_demote", m.RoleOut, scope=Scope.ADMIN),
    Route("GET", "/healthz", "Liveness", "", m.HealthOut, scope=None),
    Route("GET", "/readyz", "Readiness, role, epoch and lag", "", m.ReadyOut, scope=None, errors=(503,)),
    Route("GET", "/metrics", "Prometheus metrics", "", scope=None, content_type="text/plain"),
    Route("GET", "/openapi.json", "This document", "_openapi", scope=None),
)


class ExecutionService:
    def __init__(
        self,
        config: ExecutionConfig,
        *,
        bus: MessageBus | None = None,
        registry: CollectorRegistry | None = REGISTRY,
        clock: Clock = time.time,
        tokens: TokenSet | None = None,
    ) -> None:
        self.config = config
        self.names = config.names
        self.clock = clock
        self.db = create_engine(config.db_url)
        self.store = OrderStore(self.db)
        self.bus = bus or MessageBus.from_env(
            mode=config.bus_mode,
            urls=config.bus_urls or None,
            service="execution",
            registry=bus_registry(),
            metrics_registry=registry,
        )
        if MatchingEvents not in self.bus.registry:
            self.bus.registry.register(MatchingEvents)
        self.metrics = ExecutionMetrics.create(registry)
        # Counted when scraped: counting every order on every save was O(orders) per
        # matching message, a CPU cost that grew with the run.
        self.metrics.live_orders.set_function(self._live_count)
        self.book = ExecutionBook()
        self.parents: dict[str, ParentRecord] = {}
        self.limiter = RateLimiter(config.rate, config.burst)
        self.specs = {s.symbol: s for s in config.specs}
        self.role = Role.STANDBY
        self.epoch = config.epoch
        self.http = ServiceHttp(self.readiness, tokens or tokens_from_env(), registry or REGISTRY)
        self.openapi = build_openapi(ROUTES, "TradingSystem execution API", "1")
        for route in ROUTES:
            if route.handler_name:
                self.http.app.router.add_route(route.method, route.path, self._handler(route))
        self.http_port: int | None = None
        self._role_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self.inserts = GroupCommit(lambda records: self.store.insert_orders(self.fence, records))
        # Concurrent submits share AMQP messages: each is still answered only once the
        # broker confirmed the message carrying its placement.
        self.placements = PublishBatcher(
            self.bus,
            exchange=self.names.exchange,
            routing_key=PLACE_KEY,
            max_batch=32,
            writers=4,
            name="execution-placements",
        )
        self._subscriptions: list[Subscription] = []
        self.ledger_gate = LedgerGate(self.db)
        self._unpublished: set[str] = set()
        self._dirty: set[str] = set()
        self._to_save: set[str] = set()
        self._parents_reported: set[str] = set()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._report_role()

    def _live_count(self) -> float:
        return float(sum(1 for r in self.book.orders.values() if r.live))

    def _handler(self, route: Route) -> Handler:
        method: Handler = getattr(self, route.handler_name)

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await method(request)
            except _Refused as refused:
                return refused.response

        return require(route.scope)(handle) if route.scope is not None else handle

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.role is Role.ACTIVE

    @property
    def fence(self) -> FenceToken:
        return FenceToken(self.config.pair_name, self.epoch)

    async def start(self, *, serve_http: bool = True) -> None:
        """Migrate, connect, load; ``serve_http=False`` leaves the app to a test server."""
        await self.store.migrate()
        await self.bus.start()
        wanted = {self.names.execution, self.names.outcomes, self.names.requests, self.names.settlement}
        full = topology(self.names)
        await self.bus.declare(
            type(full)(exchanges=full.exchanges, queues=tuple(q for q in full.queues if q.name in wanted))
        )
        await self._reload()
        self.ledger_gate.start()
        if serve_http:
            self.http_port = await self.http.start(self.config.http_host, self.config.http_port)
        self._tasks.append(asyncio.create_task(self._watch(), name="execution-watch"))
        if self.config.parent_interval > 0:
            self._tasks.append(asyncio.create_task(self._drive(), name="execution-parents"))
        if self.config.role is Role.ACTIVE:
            await self.promote(self.config.epoch)

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stop_consuming()
        await self.ledger_gate.stop()
        await self.http.stop()
        await self.inserts.close()
        await self.placements.close()
        await self.bus.close()
        await self.db.dispose()

    async def run(self) -> None:
        await run_until_signalled(self, self._stop)

    async def _reload(self) -> None:
        records, parents = await self.store.load()
        self.book.replace_all(records)
        self.parents = {p.parent_id: p for p in parents}

    async def _every(self, interval: float, step: Callable[[], Awaitable[None]]) -> None:
        while not self._stop.is_set():
            try:
                await step()
            except Exception:  # a database or broker hiccup must not end the loop
                log.exception("execution background step failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    async def _watch(self) -> None:
        await self._every(
            min(self.config.epoch_check_interval, self.config.refresh_interval), self._watch_step
        )

    async def _watch_step(self) -> None:
        if self.role is Role.ACTIVE:
            # A paused or partitioned active learns it lost its role even without traffic.
            state = await read_fence(self.db, self.config.pair_name)
            if state is None or state.epoch != self.epoch:
                await self._fenced()
        else:
            async with self._role_lock:
                if not self.active:  # promoted while waiting for the lock
                    await self._reload()

    async def _drive(self) -> None:
        await self._every(self.config.parent_interval, self._drive_step)

    async def _drive_step(self) -> None:
        if self.role is Role.ACTIVE:
            await self.tick_parents()
            await self.republish()

    # -- roles --------------------------------------------------------------------------------

    def _report_role(self) -> None:
        self.metrics.role.set(ROLE_VALUES[self.role.value])
        self.metrics.epoch.set(self.epoch)

    async def promote(self, epoch: int) -> None:
        """Fence row first (only upward), then load every order, then consume."""
        async with self._role_lock:
            if self.role is Role.ACTIVE and self.epoch == epoch:
                return
            await raise_epoch(self.db, self.config.pair_name, epoch, self.config.holder)
            self.epoch = epoch
            await self._reload()
            self.role = Role.ACTIVE
            self._report_role()
            # A placement the old active persisted but may not have published: send it again
            # (the coordinator and the engine are idempotent by transaction and order id).
            self._unpublished |= {
                r.order_id for r in self.book.orders.values() if r.state.status is OrderStatus.PENDING
            }
            await self._start_consuming()
        log.warning("execution: active at epoch %d", epoch)
        with contextlib.suppress(Exception):
            await self.republish()

    async def demote(self) -> None:
        async with self._role_lock:
            if self.role is Role.ACTIVE:
                self.role = Role.STANDBY
                self._report_role()
            await self._stop_consuming()

    async def _fenced(self) -> None:
        if self.role is Role.FENCED:
            return
        log.warning("execution: fenced at epoch %d (the fence row moved on)", self.epoch)
        self.role = Role.FENCED
        self._report_role()
        # Not awaited here: this may run inside one of the handlers being unsubscribed.
        self._tasks.append(asyncio.create_task(self._stop_consuming(), name="execution-fenced"))

    async def _start_consuming(self) -> None:
        if self._subscriptions:
            return
        self._subscriptions = [
            await self.bus.subscribe(self.names.execution, self._on_events, prefetch=100),
            # Outcomes of different orders are independent: handled concurrently, their
            # saves share writes (see ``_save``) instead of one commit per outcome.
            await self.bus.subscribe(self.names.outcomes, self._on_outcome, prefetch=100, concurrency=32),
        ]
        if self.config.settle:
            settlement = SettlementConsumer(
                self.bus,
                self.ledger_gate,
                self.fence,
                self.config.instrument_map(),
                self.config.fee_bps,
                self.names,
            )
            self._subscriptions.append(await settlement.start())

    async def _stop_consuming(self) -> None:
        subs, self._subscriptions = self._subscriptions, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await self.bus.unsubscribe(sub)

    # -- persistence ----------------------------------------------------------------------------

    async def _guard(self, write: Awaitable[None]) -> None:
        """Run a fenced write; a stale epoch turns this member fenced at once."""
        try:
            await write
        except FencedError:
            await self._fenced()
            raise

    async def _save(self, order_ids: Iterable[str]) -> None:
        """Persist the current state of these orders (and any whose last save failed).

        Concurrent callers share writes: each adds its ids to ``_to_save`` and the first
        to get the lock writes everyone's, so a caller that then finds its ids gone
        knows a write that started after its change has committed them (a failed write
        leaves them in ``_dirty``, which the next write includes).
        """
        mine = set(order_ids)
        self._to_save |= mine
        async with self._write_lock:
            ids = self._dirty | self._to_save
            self._to_save = set()
            if mine and not ids:
                return
            records = [self.book.orders[i] for i in ids if i in self.book.orders]
            try:
                await self._guard(self.store.save_orders(self.fence, records))
            except BaseException:
                self._dirty = ids
                raise
            self._dirty = set()

    # -- bus ------------------------------------------------------------------------------------

    async def _on_events(self, env: Envelope[Any]) -> None:
        msg = env.payload
        if not isinstance(msg, MatchingEvents):
            raise PermanentError(f"execution does not take {type(msg).__name__} on {self.names.execution}")
        self._require_consuming()
        applied = self.book.apply_events(msg.venue, msg.events)
        self._observe_fills(applied.fills)
        if applied.changed or self._dirty:
            await self._save_or_retry(applied.changed)
        self._observe_parents({self.book.orders[i].parent_id for i in applied.changed})

    async def _on_outcome(self, env: Envelope[Any]) -> None:
        msg = env.payload
        if not isinstance(msg, TxnOutcome):
            raise PermanentError(f"execution does not take {type(msg).__name__} on {self.names.outcomes}")
        self._require_consuming()
        if self.book.outcome(msg.order_id, msg.result is TxnResult.COMMITTED, msg.reason):
            await self._save_or_retry({msg.order_id})

    def _require_consuming(self) -> None:
        if self.role is not Role.ACTIVE:
            # Back to the queue (through a delay queue) for whoever is active by then.
            raise TransientError(f"execution is {self.role.value}, not consuming")

    async def _save_or_retry(self, order_ids: set[str]) -> None:
        try:
            await self._save(order_ids)
        except FencedError as exc:
            raise TransientError(str(exc)) from exc

    def _observe_fills(self, fills: Sequence[FillReport]) -> None:
        for fill in fills:
            self.metrics.fills.inc()
            if fill.vs_arrival_bps is not None:
                self.metrics.fill_slippage.labels("arrival").observe(fill.vs_arrival_bps)
            if fill.vs_limit_bps is not None:
                self.metrics.fill_slippage.labels("limit").observe(fill.vs_limit_bps)

    def _observe_parents(self, parent_ids: Iterable[str | None]) -> None:
        for pid in parent_ids:
            parent = self.parents.get(pid) if pid else None
            if parent is None or pid in self._parents_reported:
                continue
            children = self._children(parent)
            if not parent.done(children) or not parent.arrival_price:
                continue
            fills = [(f.qty, f.price) for c in children for f in c.state.fills]
            summary = report(parent.side, fills, round(parent.arrival_price), parent.price)
            if summary is not None:
                self.metrics.parent_slippage.labels("arrival").observe(summary.vs_arrival_bps)
                if summary.vs_limit_bps is not None:
                    self.metrics.parent_slippage.labels("limit").observe(summary.vs_limit_bps)
            self._parents_reported.add(parent.parent_id)

    async def _publish_new(self, record: OrderRecord) -> None:
        message = OrderNew(
            order_id=record.order_id,
            client_order_id=record.client_order_id,
            account=record.account,
            symbol=record.symbol,
            side=record.side,
            order_type=record.order_type,
            qty=Decimal(record.qty),
            price=None if record.price is None else Decimal(record.price),
            time_in_force=record.time_in_force,
            post_only=record.post_only,
        )
        await self.placements.publish(message, transaction_id=txn_id_for(record.order_id))
        self._unpublished.discard(record.order_id)

    async def _publish_cancel(self, record: OrderRecord, reason: str) -> None:
        message = OrderCancel(
            order_id=record.order_id, account=record.account, symbol=record.symbol, reason=reason
        )
        await self.bus.publish(
            message,
            exchange=self.names.exchange,
            routing_key=CANCEL_KEY,
            transaction_id=txn_id_for(record.order_id),
        )
        self.metrics.cancels.inc()

    async def republish(self) -> int:
        """Publish again the placements whose publish was never confirmed."""
        sent = 0
        for order_id in sorted(self._unpublished):
            record = self.book.orders.get(order_id)
            if record is None or record.state.status is not OrderStatus.PENDING:
                self._unpublished.discard(order_id)
                continue
            await self._publish_new(record)
            sent += 1
        return sent

    # -- parents --------------------------------------------------------------------------------

    def _children(self, parent: ParentRecord) -> list[OrderRecord]:
        ids = (f"{parent.parent_id}.{s.index}" for s in parent.progress.schedule)
        return [self.book.orders[i] for i in ids if i in self.book.orders]

    async def tick_parents(self) -> int:
        """Release every child whose time has come on the service clock; returns how many."""
        if self.role is not Role.ACTIVE:
            return 0
        now = self.clock()
        released: list[OrderRecord] = []
        for parent in list(self.parents.values()):
            due = parent.progress.due(now)
            if not due:
                continue
            children = [parent.child(piece, now, self.book.mid(parent.symbol)) for piece in due]
            for child in children:
                self.book.add(child)
            try:
                async with self._write_lock:
                    await self._guard(self.store.release_children(self.fence, parent, children))
            except Exception:
                # Not released after all: the next tick tries the same slices again.
                for child in children:
                    self.book.remove(child.order_id)
                parent.progress.released.difference_update(p.index for p in due)
                raise
            released.extend(children)
        for child in released:
            self._unpublished.add(child.order_id)
            self.metrics.children_released.inc()
            with contextlib.suppress(Exception):
                await self._publish_new(child)
        return len(released)

    # -- HTTP helpers ---------------------------------------------------------------------------

    def _require_active(self) -> None:
        if self.role is not Role.ACTIVE:
            raise _Refused(
                json_error(
                    503,
                    f"this execution member is {self.role.value}; writes go to the active one",
                    role=self.role,
                )
            )

    async def _body(self, request: web.Request, model: type[Model]) -> Model:
        try:
            data = await request.json()
        except ValueError as exc:
            raise _Refused(json_error(400, f"request body is not valid JSON: {exc}")) from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise _Refused(json_error(422, format_errors(exc), details=_error_details(exc))) from None

    def _rate_limit(self, key: str, kind: str) -> None:
        if not self.limiter.allow(key, self.clock()):
            retry = self.limiter.retry_after(key)
            self.metrics.submissions.labels(kind, "rate_limited").inc()
            response = json_error(429, f"rate limit for {key!r} exceeded", retry_after_seconds=retry)
            response.headers["Retry-After"] = str(max(1, math.ceil(retry)))
            raise _Refused(response)

    def _check_spec(self, symbol: str, qty: int, price: int | None) -> None:
        if not self.specs:
            return
        spec = self.specs.get(symbol)
        if spec is None:
            raise _Refused(json_error(422, f"unknown symbol {symbol!r}"))
        problem = spec_problem(spec, qty, price, self.book.mid(symbol))
        if problem:
            raise _Refused(json_error(422, problem))

    def _duplicate(self, account: str, client_order_id: str) -> web.Response:
        existing = self.book.by_client.get((account, client_order_id))
        return json_error(
            409, f"client_order_id {client_order_id!r} already used by account {account!r}", order_id=existing
        )

    def _record(self, body: m.SubmitOrder) -> OrderRecord:
        return OrderRecord(
            order_id=_new_id("o"),
            client_order_id=body.client_order_id,
            account=body.account,
            symbol=body.symbol,
            side=body.side.value,
            order_type=body.order_type.value,
            time_in_force=body.time_in_force.value,
            qty=body.qty,
            price=body.price,
            created_at=self.clock(),
            post_only=body.post_only,
            arrival_price=self.book.mid(body.symbol),
        )

    async def _place(self, record: OrderRecord, kind: str = "order") -> web.Response | None:
        """Persist (fenced) then publish; an error answer, or None once confirmed."""
        if self.book.has_client_id(record.account, record.client_order_id):
            self.metrics.submissions.labels(kind, "duplicate").inc()
            return self._duplicate(record.account, record.client_order_id)
        self.book.add(record)  # claims the client id before the first await
        try:
            # No write lock: nothing else writes this row before its placement is published.
            await self._guard(self.inserts.insert(record))
        except DuplicateClientOrderId:
            self.book.remove(record.order_id)
            self.metrics.submissions.labels(kind, "duplicate").inc()
            return self._duplicate(record.account, record.client_order_id)
        except FencedError as exc:
            self.book.remove(record.order_id)
            return json_error(503, str(exc), role=self.role)
        except Exception as exc:
            # Not stored (the database failed or is restarting): free the client id, or a
            # retry would be answered 409 with the id of an order that does not exist.
            self.book.remove(record.order_id)
            log.warning("execution: storing order %s failed: %r", record.order_id, exc)
            return json_error(503, f"the order could not be stored, retry: {type(exc).__name__}")
        self._unpublished.add(record.order_id)
        try:
            await self._publish_new(record)
        except Exception as exc:
            # Stored and retried by the publisher loop; the client was not told it is placed.
            return json_error(
                503, f"placement not confirmed by the broker yet: {exc}", order_id=record.order_id
            )
        self.metrics.submissions.labels(kind, "accepted").inc()
        return None

    def _order(self, order_id: str) -> OrderRecord:
        record = self.book.get(order_id)
        if record is None:
            raise _Refused(json_error(404, f"no order {order_id!r}"))
        return record

    # -- HTTP: orders ---------------------------------------------------------------------------

    async def _submit(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        self._require_active()
        body = await self._body(request, m.SubmitOrder)
        self._rate_limit(body.account, "order")
        self._check_spec(body.symbol, body.qty, body.price)
        record = self._record(body)
        refused = await self._place(record)
        if refused is not None:
            return refused
        self.metrics.submit_latency.observe(time.perf_counter() - started)
        return web.json_response(record.to_json(), status=201)

    async def _list_orders(self, request: web.Request) -> web.Response:
        q = request.query
        status = q.get("status")
        if status is not None and status not in {s.value for s in OrderStatus}:
            return json_error(422, f"unknown status {status!r}")
        records = self.book.select(q.get("account"), q.get("symbol"), status)
        return web.json_response({"orders": [r.to_json() for r in records]})

    async def _get_order(self, request: web.Request) -> web.Response:
        return web.json_response(self._order(request.match_info["order_id"]).to_json())

    async def _cancel(self, request: web.Request) -> web.Response:
        self._require_active()
        record = self._order(request.match_info["order_id"])
        self._rate_limit(record.account, "cancel")
        if not record.live:
            return json_error(
                409, f"order {record.order_id} is {record.status.value}", order_status=record.status.value
            )
        await self._request_cancels([record], "client cancel")
        return web.json_response(record.to_json(), status=202)

    async def _request_cancels(self, records: Sequence[OrderRecord], reason: str) -> None:
        for record in records:
            record.cancel_requested = True
        await self._save_or_503(r.order_id for r in records)
        try:
            for record in records:
                await self._publish_cancel(record, reason)
        except Exception as exc:
            # The request is recorded (cancel_requested); the client may send it again.
            raise _Refused(json_error(503, f"cancel not confirmed by the broker: {exc}")) from None

    async def _save_or_503(self, order_ids: Iterable[str]) -> None:
        try:
            await self._save(order_ids)
        except FencedError as exc:
            raise _Refused(json_error(503, str(exc), role=self.role)) from None

    async def _cancel_all(self, request: web.Request) -> web.Response:
        self._require_active()
        body = await self._body(request, m.CancelAll)
        self._rate_limit(body.account or f"symbol:{body.symbol}", "cancel_all")
        records = self.book.select(body.account, body.symbol, live_only=True)
        await self._request_cancels(records, "cancel-all")
        return web.json_response({"cancel_requested": [r.order_id for r in records]}, status=202)

    async def _replace(self, request: web.Request) -> web.Response:
        self._require_active()
        old = self._order(request.match_info["order_id"])
        body = await self._body(request, m.ReplaceOrder)
        self._rate_limit(old.account, "replace")
        if not old.live or old.cancel_requested:
            return json_error(
                409, f"order {old.order_id} is {old.status.value}; only live orders are replaced"
            )
        if old.order_type == "market" and body.price is not None:
            return json_error(422, "a market order has no price")
        price = body.price if body.price is not None else old.price
        self._check_spec(old.symbol, body.qty, price)
        new = OrderRecord(
            order_id=_new_id("o"),
            client_order_id=body.client_order_id,
            account=old.account,
            symbol=old.symbol,
            side=old.side,
            order_type=old.order_type,
            time_in_force=old.time_in_force,
            qty=body.qty,
            price=price,
            created_at=self.clock(),
            post_only=old.post_only,
            arrival_price=self.book.mid(old.symbol),
            replaces=old.order_id,
        )
        old.cancel_requested = True
        # Cancel first: the book never holds both the old and the new order's quantity.
        refused = await self._place_after_cancel(old, new)
        if refused is not None:
            return refused
        return web.json_response({"order": new.to_json(), "replaced": old.order_id}, status=201)

    async def _place_after_cancel(self, old: OrderRecord, new: OrderRecord) -> web.Response | None:
        if self.book.has_client_id(new.account, new.client_order_id):
            old.cancel_requested = False
            return self._duplicate(new.account, new.client_order_id)
        self.book.add(new)
        try:
            async with self._write_lock:
                await self._guard(self.store.insert_orders(self.fence, [new], [old]))
        except (DuplicateClientOrderId, FencedError) as exc:
            self.book.remove(new.order_id)
            old.cancel_requested = False
            if isinstance(exc, FencedError):
                return json_error(503, str(exc), role=self.role)
            return self._duplicate(new.account, new.client_order_id)
        self._unpublished.add(new.order_id)  # the publisher loop retries it if this fails
        try:
            await self._publish_cancel(old, f"replaced by {new.order_id}")
            await self._publish_new(new)
        except Exception as exc:
            return json_error(503, f"replace not confirmed by the broker yet: {exc}", order_id=new.order_id)
        self.metrics.submissions.labels("replace", "accepted").inc()
        return None

    # -- HTTP: parents --------------------------------------------------------------------------

    async def _submit_parent(self, request: web.Request) -> web.Response:
        self._require_active()
        body = await self._body(request, m.SubmitParent)
        self._rate_limit(body.account, "parent")
        self._check_spec(body.symbol, body.qty, body.price)
        if any(
            p.account == body.account and p.client_order_id == body.client_order_id
            for p in self.parents.values()
        ):
            return json_error(409, f"client_order_id {body.client_order_id!r} already used by a parent order")
        now = self.clock()
        params = body.params()
        try:
            schedule = build_schedule(body.strategy, body.qty, params, now)
        except ValueError as exc:
            return json_error(422, str(exc))
        pid = _new_id("p")
        parent = ParentRecord(
            parent_id=pid,
            client_order_id=body.client_order_id,
            account=body.account,
            symbol=body.symbol,
            side=body.side.value,
            time_in_force=body.time_in_force.value,
            qty=body.qty,
            price=body.price,
            strategy=body.strategy,
            params=params,
            created_at=now,
            progress=ParentOrder(pid, body.qty, schedule),
            arrival_price=self.book.mid(body.symbol),
        )
        try:
            await self._guard(self.store.insert_parent(self.fence, parent))
        except DuplicateClientOrderId:
            return json_error(409, f"client_order_id {body.client_order_id!r} already used by a parent order")
        except FencedError as exc:
            return json_error(503, str(exc), role=self.role)
        self.parents[pid] = parent
        self.metrics.submissions.labels("parent", "accepted").inc()
        try:
            await self.tick_parents()  # the first slice is due now
        except Exception:
            log.exception("releasing the first child of %s failed; the schedule loop retries", pid)
        return web.json_response(parent.to_json(self._children(parent)), status=201)

    def _parent(self, parent_id: str) -> ParentRecord:
        parent = self.parents.get(parent_id)
        if parent is None:
            raise _Refused(json_error(404, f"no parent order {parent_id!r}"))
        return parent

    async def _list_parents(self, request: web.Request) -> web.Response:
        account = request.query.get("account")
        parents = [p for p in self.parents.values() if account is None or p.account == account]
        return web.json_response({"parents": [p.to_json(self._children(p)) for p in parents]})

    async def _get_parent(self, request: web.Request) -> web.Response:
        parent = self._parent(request.match_info["parent_id"])
        return web.json_response(parent.to_json(self._children(parent)))

    async def _cancel_parent(self, request: web.Request) -> web.Response:
        self._require_active()
        parent = self._parent(request.match_info["parent_id"])
        children = self._children(parent)
        if parent.done(children):
            return json_error(409, f"parent order {parent.parent_id} is already done")
        parent.progress.cancel()
        try:
            async with self._write_lock:
                await self._guard(self.store.save_parent(self.fence, parent))
        except FencedError as exc:
            parent.progress.cancelled = False
            return json_error(503, str(exc), role=self.role)
        await self._request_cancels([c for c in children if c.live], f"parent {parent.parent_id} cancelled")
        return web.json_response(parent.to_json(children), status=202)

    # -- HTTP: ledger -----------------------------------------------------------------------------

    async def _account_exists(self, account: str) -> None:
        try:
            async with self.db.connect() as conn:
                found = (
                    await conn.execute(select(exists().where(accounts.c.account_id == account)))
                ).scalar()
        except Exception as exc:
            raise _Refused(json_error(503, f"ledger unavailable: {type(exc).__name__}")) from None
        if not found:
            raise _Refused(json_error(404, f"no account {account!r}"))

    async def _balances(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        await self._account_exists(account)
        rows = await get_balances(self.db, account)
        balances = [
            {"asset": b.asset, "available": b.available, "held": b.held, "total": b.total} for b in rows
        ]
        return web.json_response({"account": account, "balances": balances})

    async def _positions(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        await self._account_exists(account)
        t = settled_trades
        positions: dict[str, dict[str, int]] = {}
        async with self.db.connect() as conn:
            for side_col, side in ((t.c.buyer_account, "bought"), (t.c.seller_account, "sold")):
                rows = await conn.execute(
                    select(t.c.symbol, func.sum(t.c.qty), func.sum(t.c.notional))
                    .where(side_col == account)
                    .group_by(t.c.symbol)
                )
                for symbol, qty, notional in rows:
                    p = positions.setdefault(symbol, _empty_position())
                    p[f"{side}_qty"], p[f"{side}_notional"] = int(qty or 0), int(notional or 0)
        out = [
            {"symbol": s, "net_qty": p["bought_qty"] - p["sold_qty"], **p}
            for s, p in sorted(positions.items())
        ]
        return web.json_response({"account": account, "positions": out})

    # -- HTTP: admin and meta ---------------------------------------------------------------------

    async def _promote(self, request: web.Request) -> web.Response:
        body = await self._body(request, m.EpochBody)
        try:
            await self.promote(body.epoch)
        except FencedError as exc:
            return json_error(409, str(exc), current=exc.current)
        return web.json_response({"role": self.role.value, "epoch": self.epoch})

    async def _demote(self, request: web.Request) -> web.Response:
        await self.demote()
        return web.json_response({"role": self.role.value, "epoch": self.epoch})

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.openapi)

    async def readiness(self) -> Readiness:
        health = self.bus.health()
        try:
            stored = await self.store.count()
            db_ok, db_error = True, None
        except Exception as exc:
            stored, db_ok, db_error = len(self.book.orders), False, repr(exc)
        # Orders in the database this member has not loaded yet (a standby reloads on a
        # timer and at promotion); the active holds them all.
        lag = 0 if self.role is Role.ACTIVE else max(0, stored - len(self.book.orders))
        details: dict[str, object] = {
            "role": self.role.value,
            "epoch": self.epoch,
            "lag": lag,
            "orders": len(self.book.orders),
            "broker": {
                "status": health.status,
                "connected": health.connected,
                "reasons": list(health.reasons),
            },
            "db": {"ok": db_ok, **({"error": db_error} if db_error else {})},
            "consuming": bool(self._subscriptions),
        }
        return Readiness(health.ready and db_ok and self.role is not Role.FENCED, details)


def _empty_position() -> dict[str, int]:
    return {"bought_qty": 0, "sold_qty": 0, "bought_notional": 0, "sold_notional": 0}


def _error_details(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()[:20]]


def spec_problem(spec: SymbolSpec, qty: int, price: int | None, mid: float | None) -> str | None:
    """Why an order breaks the symbol's tick, lot or price band, or None."""
    if qty % spec.lot_size:
        return f"qty {qty} is not a multiple of the lot size {spec.lot_size}"
    if price is None:
        return None
    if price % spec.tick_size:
        return f"price {price} is not a multiple of the tick size {spec.tick_size}"
    reference = mid or spec.reference_price
    if spec.band_bps and reference and abs(price - reference) * 10_000 > spec.band_bps * reference:
        return f"price {price} is more than {spec.band_bps} bps from the reference {reference}"
    return None

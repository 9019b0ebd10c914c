"""The matching service process: bus consumer + runner + HTTP.

    trading-system matching serve --engine-id m1 --db-url postgresql+asyncpg://... \
        --bus-url amqp://... --role active --epoch 1 --port 8080

(the command line is ``matching/service/cli.py``; in a pod every flag comes from the
environment the operator sets).

Commands arrive on the quorum queue ``matching.commands.<engine-id>`` with
single-active-consumer; each handler call hands its command to a batcher, which submits
up to ``--batch-size`` commands at once to the runner (journal, match, publish with
confirms) and releases the handlers, whose return makes the bus ack. Only the active
member consumes; standby and fenced members tail the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry

from trading_system.bus.catalog import OrderCancel, OrderNew
from trading_system.bus.consumer import Subscription, current_delivery
from trading_system.bus.envelope import Envelope
from trading_system.bus.errors import PermanentError
from trading_system.bus.facade import MessageBus
from trading_system.bus.topology import Binding, Exchange, Topology, WorkQueue
from trading_system.common.auth import Scope, TokenSet
from trading_system.common.http import Readiness, ServiceHttp, json_error, require
from trading_system.common.lifecycle import run_until_signalled
from trading_system.matching.core import BUILD as CORE_BUILD
from trading_system.matching.core import Command, SymbolSpec
from trading_system.matching.service.codec import CommandDecodeError, command_from_dict
from trading_system.matching.service.engine_runner import EngineRunner, EventBatch, NotActiveError, Role
from trading_system.matching.service.journal import Journal
from trading_system.matching.service.messages import (
    COMMAND_ROUTING_KEY,
    EVENTS_ROUTING_KEY,
    ORDER_ROUTING_KEYS,
    MatchingCommand,
    MatchingCommandBatch,
    MatchingEvents,
    register,
)
from trading_system.matching.service.metrics import MatchingMetrics
from trading_system.matching.service.orders import command_from_order
from trading_system.storage import create_engine
from trading_system.storage.fencing import FencedError

log = logging.getLogger(__name__)


@dataclass
class MatchingConfig:
    engine_id: str
    db_url: str
    role: Role = Role.STANDBY
    epoch: int = 0
    bus_mode: str | None = None
    bus_urls: tuple[str, ...] = ()
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    holder: str = field(default_factory=socket.gethostname)
    pair_name: str | None = None
    specs: tuple[SymbolSpec, ...] = ()
    batch_size: int = 64
    tail_interval: float = 0.05
    snapshot_every: int = 10_000
    epoch_check_interval: float = 1.0
    # The pipeline's venue: also take the coordinator's catalog order.new / order.cancel
    # from the shared ``orders_queue`` (pipeline.messages.Names.commands).
    accept_orders: bool = False
    orders_queue: str = "matching.commands"
    exchange: str | None = None  # None: the bus's default exchange

    @property
    def command_queue(self) -> str:
        return self.orders_queue if self.accept_orders else f"matching.commands.{self.engine_id}"

    def topology(self, exchange: str) -> Topology:
        keys = [f"{COMMAND_ROUTING_KEY}.{self.engine_id}"]
        if self.accept_orders:
            keys += ORDER_ROUTING_KEYS
        return Topology(
            exchanges=(Exchange(exchange),),
            queues=(
                WorkQueue(
                    self.command_queue,
                    bindings=tuple(Binding(exchange, key) for key in keys),
                    single_active_consumer=True,
                ),
            ),
        )


class _NotActive(Exception):
    """The command was not processed because this member stopped being active."""


class _Batcher:
    """Collects concurrently delivered commands into one runner batch, in arrival order.

    A command the runner refuses because it is no longer active (fenced, demoted) is
    neither acked nor rejected: its handler is *held* until the consumer's channel is
    closed, which returns it to the queue in order for the next active member. Acking
    would lose it; a retry copy would reorder it behind later commands.
    """

    def __init__(self, runner: EngineRunner, max_batch: int) -> None:
        self.runner = runner
        self.max_batch = max_batch
        self.queue: asyncio.Queue[tuple[Command, asyncio.Future[None]]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.busy = asyncio.Lock()
        self.released = asyncio.Event()

    def start(self) -> None:
        self.released = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name="matching-batcher")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking batches; a batch being submitted may finish (up to ``grace``)."""
        if self.task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.busy.acquire()
                    self.busy.release()
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        while not self.queue.empty():
            _, fut = self.queue.get_nowait()
            if not fut.done():
                fut.set_exception(_NotActive())

    def release_held(self) -> None:
        """The consumer is closed (held deliveries went back to the queue): end the handlers."""
        self.released.set()

    async def submit(self, cmds: Sequence[Command]) -> None:
        """Queue ``cmds`` (in this order, with nothing in between) and wait until all are done."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for cmd in cmds:
            futures.append(fut := loop.create_future())
            self.queue.put_nowait((cmd, fut))
        try:
            for fut in futures:
                await fut
        except _NotActive:
            released = self.released
            await released.wait()
            # Not an Exception: the bus must neither ack nor copy this delivery, the
            # broker already returned it to the queue when the channel closed.
            raise asyncio.CancelledError("matching engine is no longer active") from None

    async def _run(self) -> None:
        while True:
            items = [await self.queue.get()]
            while len(items) < self.max_batch and not self.queue.empty():
                items.append(self.queue.get_nowait())
            error: BaseException | None = None
            try:
                async with self.busy:
                    await self._submit_with_retry([cmd for cmd, _ in items])
            except (FencedError, NotActiveError):
                error = _NotActive()
            except asyncio.CancelledError:
                error = _NotActive()
                raise
            finally:
                for _, fut in items:
                    if not fut.done():
                        if error is None:
                            fut.set_result(None)
                        else:
                            fut.set_exception(error)

    async def _submit_with_retry(self, commands: list[Command]) -> None:
        # A database or broker failure is retried here, in place, rather than through
        # the bus's delay queues: a retried copy would come back behind later commands
        # and the journal order is the book. Consumption pauses meanwhile (the handlers
        # wait), /readyz reports the failing dependency, and the operator decides.
        delay = 0.05
        while True:
            try:
                await self.runner.submit(commands)
                return
            except (FencedError, NotActiveError):
                raise
            except Exception as exc:
                log.warning("matching batch of %d failed, retrying in %.2fs: %r", len(commands), delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


class MatchingService:
    def __init__(
        self,
        config: MatchingConfig,
        *,
        bus: MessageBus | None = None,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.config = config
        self.db = create_engine(config.db_url)
        self.journal = Journal(self.db, config.engine_id, config.pair_name)
        self.metrics = MatchingMetrics.create(registry)
        self.bus = bus or MessageBus.from_env(
            mode=config.bus_mode,
            urls=config.bus_urls or None,
            service=f"matching-{config.engine_id}",
            metrics_registry=registry,
        )
        register(self.bus.registry)
        self.exchange = config.exchange or self.bus.settings.default_exchange
        self.runner = EngineRunner(
            self.journal,
            self.publish,
            role=Role.STANDBY,
            epoch=config.epoch,
            specs=config.specs,
            holder=config.holder,
            snapshot_every=config.snapshot_every,
            metrics=self.metrics,
            on_role_change=self._role_changed,
        )
        self.batcher = _Batcher(self.runner, config.batch_size)
        self.http = ServiceHttp(self.readiness, TokenSet.from_env(), registry or REGISTRY)

        @require(Scope.ADMIN)
        async def promote(request: web.Request) -> web.StreamResponse:
            return await self._promote(request)

        @require(Scope.ADMIN)
        async def demote(request: web.Request) -> web.StreamResponse:
            return await self._demote(request)

        self.http.app.router.add_post("/promote", promote)
        self.http.app.router.add_post("/demote", demote)
        self.http.app.router.add_get("/book/{symbol}", self._book)
        self.http_port: int | None = None
        self._subscription: Subscription | None = None
        self._role_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.journal.migrate()
        await self.bus.start()
        await self.bus.declare(self.config.topology(self.exchange))
        applied = await self.runner.recover()
        log.info(
            "matching %s rebuilt to seq %d (%d replayed), core build %s",
            self.config.engine_id,
            self.runner.applied_seq,
            applied,
            CORE_BUILD,
        )
        self.http_port = await self.http.start(self.config.http_host, self.config.http_port)
        self._tasks.append(
            asyncio.create_task(self.runner.run_standby(self._stop, self.config.tail_interval))
        )
        self._tasks.append(asyncio.create_task(self._watch_epoch()))
        if self.config.role is Role.ACTIVE:
            await self.runner.promote(self.config.epoch)

    async def stop(self) -> None:
        self._stop.set()
        if self._role_task is not None:
            with contextlib.suppress(Exception):
                await self._role_task
        await self._stop_consuming()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.http.stop()
        await self.bus.close()
        await self.db.dispose()

    async def _watch_epoch(self) -> None:
        # A paused or partitioned active learns it lost its role even without traffic.
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                await self.runner.check_epoch()
            self._report_depth()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.config.epoch_check_interval)

    def _report_depth(self) -> None:
        engine = self.runner.engine
        for symbol in engine.symbols:
            depth = engine.depth(symbol, levels=100_000)
            self.metrics.book_depth.labels(symbol, "bid").set(len(depth.bids))
            self.metrics.book_depth.labels(symbol, "ask").set(len(depth.asks))

    def _role_changed(self, role: Role) -> None:
        # Called inside the runner's lock: switch consumption in a task of its own.
        previous = self._role_task
        self._role_task = asyncio.create_task(self._apply_role(role, previous))

    async def _apply_role(self, role: Role, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        if role is Role.ACTIVE:
            await self._start_consuming()
        else:
            await self._stop_consuming()

    async def _start_consuming(self) -> None:
        if self._subscription is not None:
            return
        self.batcher.start()
        self._subscription = await self.bus.subscribe(
            self.config.command_queue,
            self._handle,
            prefetch=max(self.config.batch_size * 2, 1),
            concurrency=self.config.batch_size,
        )

    async def _stop_consuming(self) -> None:
        sub, self._subscription = self._subscription, None
        await self.batcher.stop()
        if sub is not None:
            # Held handlers never finish on their own: a short grace, then the channel
            # closes and the broker returns their deliveries to the queue.
            await sub.cancel(grace=0.2)
            self.batcher.release_held()
            await self.bus.unsubscribe(sub)
        self.batcher.release_held()

    async def _handle(self, env: Envelope[Any]) -> None:
        delivery = current_delivery()
        if delivery is not None and delivery.items > 1 and self.config.batch_size > 1:
            # Items of two bus-level batches handled at once would interleave: refuse
            # loudly (dead-letter) rather than match commands out of their order.
            raise PermanentError(
                "matching commands sent with publish_batch can be reordered; "
                "send one matching.command per message or one matching.commands batch"
            )
        try:
            cmds = self._commands_of(env)
        except CommandDecodeError as exc:
            raise PermanentError(str(exc)) from exc
        await self.batcher.submit(cmds)

    def _commands_of(self, env: Envelope[Any]) -> list[Command]:
        """The core commands a message carries (all or nothing), or CommandDecodeError."""
        payload, engine_id = env.payload, self.config.engine_id
        if isinstance(payload, MatchingCommand | MatchingCommandBatch):
            if payload.engine_id != engine_id:
                raise CommandDecodeError(f"not a command for matching engine {engine_id}")
            raw = payload.commands if isinstance(payload, MatchingCommandBatch) else [payload.command]
            return [command_from_dict(item) for item in raw]
        if isinstance(payload, OrderNew | OrderCancel) and self.config.accept_orders:
            # Milliseconds of the producer's clock: the engine clock for GTD expiry.
            ts = int(env.produced_at.timestamp() * 1000)
            return [command_from_order(payload, env.message_id, ts)]
        raise CommandDecodeError(f"matching engine {engine_id} does not take {type(payload).__name__}")

    async def publish(self, batch: EventBatch) -> None:
        envelopes = [
            self.bus.envelope(
                MatchingEvents(
                    venue=batch.engine_id,
                    epoch=batch.epoch,
                    seq=entry.seq,
                    command_id=entry.command_id,
                    events=tuple(tuple(e) for e in entry.events),
                ),
                epoch=batch.epoch,
                sequence=entry.seq,
                message_id=f"{batch.engine_id}:{entry.seq}",
            )
            for entry in batch.entries
        ]
        # One AMQP message per runner batch (one confirm, one quorum write); consumers
        # still see one envelope per journal entry, in order, each with (epoch, seq).
        routing_key = f"{EVENTS_ROUTING_KEY}.{batch.engine_id}"
        step = self.bus.settings.max_batch_size
        for start in range(0, len(envelopes), step):
            await self.bus.publish_batch(
                envelopes[start : start + step],
                exchange=self.exchange,
                routing_key=routing_key,
                mandatory=False,
            )

    # -- HTTP ---------------------------------------------------------------------------

    async def readiness(self) -> Readiness:
        health = self.bus.health()
        try:
            lag = await self.runner.refresh_lag()
            db_ok, db_error = True, None
        except Exception as exc:
            lag, db_ok, db_error = self.runner.lag, False, repr(exc)
        r = self.runner
        details: dict[str, object] = {
            "role": r.role.value,
            "epoch": r.epoch,
            "lag": lag,
            "applied_seq": r.applied_seq,
            "broker": {
                "status": health.status,
                "connected": health.connected,
                "reasons": list(health.reasons),
            },
            "db": {"ok": db_ok, **({"error": db_error} if db_error else {})},
            "consuming": self._subscription is not None,
        }
        ready = health.ready and db_ok and r.role is not Role.FENCED
        return Readiness(ready, details)

    async def _promote(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            epoch = int(body["epoch"])
        except (ValueError, KeyError, TypeError):
            return json_error(400, 'body must be {"epoch": N}')
        try:
            await self.runner.promote(epoch)
        except FencedError as exc:
            return json_error(409, str(exc), current=exc.current)
        except ValueError as exc:
            return json_error(400, str(exc))
        return web.json_response(
            {
                "role": self.runner.role.value,
                "epoch": self.runner.epoch,
                "applied_seq": self.runner.applied_seq,
            }
        )

    async def _demote(self, request: web.Request) -> web.Response:
        await self.runner.demote()
        return web.json_response({"role": self.runner.role.value, "epoch": self.runner.epoch})

    async def _book(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        levels = int(request.query.get("levels", "10"))
        if symbol not in self.runner.engine.symbols:
            return json_error(404, f"unknown symbol {symbol!r}")
        return web.json_response(self.runner.book(symbol, levels))

    async def run(self) -> None:
        await run_until_signalled(self, self._stop)


# -- CLI ----------------------------------------------------------------------------------


def parse_symbol(text: str) -> SymbolSpec:
    """``SYMBOL[:tick[:lot[:band_bps[:reference_price]]]]``"""
    parts = text.split(":")
    numbers = [int(p) for p in parts[1:]]
    numbers += [0] * (4 - len(numbers))
    tick, lot, band, ref = numbers[:4]
    return SymbolSpec(parts[0], tick_size=tick or 1, lot_size=lot or 1, band_bps=band, reference_price=ref)

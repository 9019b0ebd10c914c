"""Consuming: decode, hand to the handler, and settle every delivery exactly once.

What happens to a message depends on how its handler failed (see ``errors``):

=============  ================================================================
outcome        what the consumer does
=============  ================================================================
success        ack
transient      copy to the delay queue for this attempt (TTL = backoff with jitter),
               then ack; it comes back to the work queue when the TTL expires; after
               ``retry.max_attempts`` attempts it is parked instead
permanent      reject without requeue: the broker dead-letters it to ``Q.dead``
               (at-least-once strategy); also for bodies that do not decode or fail
               the schema, so a bad message never crash-loops a consumer
poison         parked at once
unknown        requeued; the quorum queue counts the delivery, and on the delivery
               after ``delivery_limit`` failed ones the consumer parks it unread
=============  ================================================================

Copies (retry, parking) are published with a confirm *before* the original is acked, so
a crash in between duplicates a message but never loses one. If the copy cannot be
published, the original is requeued, which the delivery limit bounds as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from trading_system.bus.codec import ENVELOPE_CONTENT_TYPE, Codec
from trading_system.bus.dedup import Deduplicator
from trading_system.bus.envelope import Envelope, new_message_id
from trading_system.bus.epoch import EpochGate, Verdict
from trading_system.bus.errors import (
    DeliveryLostError,
    ErrorClassifier,
    ErrorKind,
    MessageDecodeError,
    PublishError,
)
from trading_system.bus.messages import BusMessage
from trading_system.bus.metrics import BusMetrics
from trading_system.bus.topology import (
    WorkQueue,
    dead_letter_queue_name,
    parking_queue_name,
    retry_queue_name,
)
from trading_system.bus.transport import DELIVERY_COUNT_HEADER, ConsumerHandle, Delivery, Outgoing, Transport

log = logging.getLogger(__name__)

Handler = Callable[[Envelope[Any]], Awaitable[None]]

ATTEMPT_HEADER = "x-ts-attempt"
ERROR_HEADER = "x-ts-error"
PARKED_REASON_HEADER = "x-ts-parked-reason"
PARKED_FROM_HEADER = "x-ts-parked-from"
PARKED_AT_HEADER = "x-ts-parked-at"
DEAD_REASON_HEADER = "x-ts-dead-reason"
MAX_ERROR_LENGTH = 500


@dataclass(frozen=True, slots=True)
class ConsumeOptions:
    prefetch: int = 200
    concurrency: int = 1
    """1 keeps the queue's order (the matching engine needs that); more trades it for speed."""
    handler_timeout: float | None = None
    dedup: Deduplicator | None = None
    epoch_gate: EpochGate | None = None
    stream_key: Callable[[Envelope[Any]], str] | None = None
    """The ordering stream of an envelope for ``epoch_gate``; default: its source."""


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    """How the message a handler is working on arrived (see ``current_delivery``)."""

    queue: str
    message_id: str | None
    redelivered: bool
    delivery_count: int
    attempt: int
    """Handler attempts made before this one through retries (0 on the first)."""
    items: int = 1
    """Envelopes in the AMQP message (more than 1 for a ``publish_batch`` message)."""


_CURRENT: ContextVar[Delivery | None] = ContextVar("bus_current_delivery", default=None)
_ITEMS: ContextVar[int] = ContextVar("bus_current_items", default=1)


def current_delivery() -> DeliveryInfo | None:
    """Inside a handler: the delivery being handled (redelivered flag, counts), else None.

    Each delivery is handled in its own task, so this is per message even when a
    subscription handles several at once.
    """
    delivery = _CURRENT.get()
    if delivery is None:
        return None
    return DeliveryInfo(
        delivery.queue,
        delivery.message_id,
        delivery.redelivered,
        delivery.delivery_count,
        attempts_so_far(delivery.headers),
        _ITEMS.get(),
    )


@dataclass(slots=True)
class _Copy:
    """What is needed to publish a copy of a message (whole delivery or one batch item)."""

    body: bytes
    content_type: str
    message_id: str
    message_type: str
    correlation_id: str | None
    headers: dict[str, Any]


def describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 3] + "..."


def attempts_so_far(headers: Mapping[str, Any]) -> int:
    value = headers.get(ATTEMPT_HEADER, 0)
    return value if isinstance(value, int) and value >= 0 else 0


def forwarded_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    # The broker sets the delivery count per queue; carrying it into a copy would make
    # the copy look like it had already failed deliveries in its next queue.
    return {k: v for k, v in headers.items() if k != DELIVERY_COUNT_HEADER}


class Subscription:
    """A running consumer of one work queue."""

    def __init__(
        self,
        *,
        work: WorkQueue,
        handler: Handler,
        transport: Transport,
        codec: Codec,
        classifier: ErrorClassifier,
        metrics: BusMetrics,
        options: ConsumeOptions,
        publish_timeout: float,
    ) -> None:
        self.work = work
        self.queue = work.name
        self._handler = handler
        self._transport = transport
        self._codec = codec
        self._classifier = classifier
        self._metrics = metrics
        self._options = options
        self._publish_timeout = publish_timeout
        self._stream_key = options.stream_key or (lambda env: env.source or "")
        # The transport runs each delivery's callback as its own task, in delivery order.
        # Processing right there under a FIFO lock keeps the queue's order without a
        # hand-off to a worker task, which would cost an extra event-loop step per message.
        self._gate: asyncio.Semaphore | asyncio.Lock = (
            asyncio.Lock() if options.concurrency <= 1 else asyncio.Semaphore(options.concurrency)
        )
        self._consumer: ConsumerHandle | None = None
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self.processed = 0

    async def start(self) -> None:
        self._consumer = await self._transport.consume(
            self.queue, self._on_delivery, prefetch=self._options.prefetch
        )

    async def _on_delivery(self, delivery: Delivery) -> None:
        async with self._gate:
            if self._stopping:
                return  # left unsettled: the broker returns it when the consumer closes
            self._busy += 1
            self._idle.clear()
            try:
                await self.process(delivery)
            except DeliveryLostError as exc:
                log.info("%s: %s; the broker will redeliver it", self.queue, exc)
            except Exception:
                # A bug in the bus itself must not kill the consumer. An unsettled delivery
                # would hold a prefetch slot until the channel closes, so it goes back to
                # the queue, where the delivery limit bounds how often this can happen.
                log.exception("unexpected failure while processing a delivery from %s", self.queue)
                if not delivery.settled:
                    with contextlib.suppress(Exception):
                        await delivery.reject(requeue=True)
            finally:
                self._busy -= 1
                self.processed += 1
                if self._busy == 0:
                    self._idle.set()

    async def cancel(self, grace: float = 5.0) -> None:
        """Stop taking deliveries, let a running handler finish (up to ``grace``), close."""
        self._stopping = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        if self._consumer is not None:
            await self._consumer.cancel()
            self._consumer = None

    # -- one delivery -------------------------------------------------------------------

    async def process(self, delivery: Delivery) -> None:
        m, q = self._metrics, self.queue
        _CURRENT.set(delivery)
        if delivery.redelivered:
            m.redelivered(q).inc()
        try:
            envelopes = self._codec.decode(delivery.body, delivery.content_type)
        except MessageDecodeError as exc:
            m.consumed(q).inc()
            log.error("dead-lettering undecodable message %s from %s: %s", delivery.message_id, q, exc)
            await self._reject(delivery, "invalid")
            return
        m.consumed(q).inc(len(envelopes))
        _ITEMS.set(len(envelopes))
        if delivery.delivery_count >= self.work.delivery_limit:
            await self._park(
                delivery,
                self._copy_of(delivery),
                "delivery_limit",
                f"delivered {delivery.delivery_count + 1} times without being settled",
            )
            return
        if len(envelopes) == 1:
            error = await self._handle(envelopes[0])
            await self._settle(delivery, error)
        else:
            await self._settle_batch(delivery, envelopes)

    async def _handle(self, env: Envelope[BusMessage]) -> Exception | None:
        opts, m, q = self._options, self._metrics, self.queue
        if opts.dedup is not None and opts.dedup.seen(env.message_id):
            m.dropped(q, "duplicate").inc()
            return None
        gate, stream = opts.epoch_gate, ""
        if gate is not None and env.epoch is not None:
            stream = self._stream_key(env)
            verdict = gate.check(stream, env.epoch, env.sequence or 0)
            if verdict is not Verdict.ACCEPT:
                m.dropped(q, verdict.value).inc()
                return None
        started = time.perf_counter()
        try:
            if opts.handler_timeout is None:
                await self._handler(env)
            else:
                await asyncio.wait_for(self._handler(env), opts.handler_timeout)
        except Exception as exc:
            return exc
        finally:
            m.handler_latency(q).observe(time.perf_counter() - started)
        if opts.dedup is not None:
            opts.dedup.mark(env.message_id)
        if gate is not None and env.epoch is not None:
            gate.commit(stream, env.epoch, env.sequence or 0)
        return None

    async def _settle(self, delivery: Delivery, error: Exception | None) -> None:
        if error is None:
            await delivery.ack()
            self._metrics.acked(self.queue).inc()
            return
        kind = self._classifier.classify(error)
        log.warning(
            "handler for %s failed on message %s (%s): %s",
            self.queue,
            delivery.message_id,
            kind.value,
            describe_error(error),
        )
        if kind is ErrorKind.PERMANENT:
            await self._reject(delivery, "permanent")
        elif kind is ErrorKind.POISON:
            await self._park(delivery, self._copy_of(delivery), "poison", describe_error(error))
        elif kind is ErrorKind.TRANSIENT:
            await self._retry(delivery, self._copy_of(delivery), error)
        else:
            await delivery.reject(requeue=True)
            self._metrics.requeued(self.queue).inc()

    async def _settle_batch(self, delivery: Delivery, envelopes: list[Envelope[BusMessage]]) -> None:
        # A batch is one AMQP message, so it can only be acked as a whole: items that
        # failed leave as messages of their own (retry, dead-letter or parking) first.
        failures = [(env, err) for env in envelopes if (err := await self._handle(env)) is not None]
        attempts = attempts_so_far(delivery.headers)
        for env, error in failures:
            kind = self._classifier.classify(error)
            log.warning("batch item %s from %s failed (%s): %s", env.message_id, self.queue, kind, error)
            item = _Copy(
                self._codec.encode(env),
                ENVELOPE_CONTENT_TYPE,
                env.message_id,
                env.message_type,
                env.correlation_id,
                {ATTEMPT_HEADER: attempts},
            )
            if kind is ErrorKind.PERMANENT:
                item.headers |= {DEAD_REASON_HEADER: "permanent", ERROR_HEADER: describe_error(error)}
                if not await self._copy(delivery, item, dead_letter_queue_name(self.queue)):
                    return
                self._metrics.dead_lettered(self.queue, "permanent").inc()
            elif kind is ErrorKind.POISON:
                if not await self._copy_to_parking(delivery, item, "poison", describe_error(error)):
                    return
            elif not await self._copy_for_retry(delivery, item, error):
                return
        await delivery.ack()
        self._metrics.acked(self.queue).inc()

    # -- the ways out -------------------------------------------------------------------

    def _copy_of(self, delivery: Delivery) -> _Copy:
        return _Copy(
            delivery.body,
            delivery.content_type or ENVELOPE_CONTENT_TYPE,
            delivery.message_id or new_message_id(),
            delivery.message_type or "",
            delivery.correlation_id,
            forwarded_headers(delivery.headers),
        )

    async def _reject(self, delivery: Delivery, reason: str) -> None:
        await delivery.reject(requeue=False)
        self._metrics.dead_lettered(self.queue, reason).inc()

    async def _retry(self, delivery: Delivery, item: _Copy, error: BaseException) -> None:
        if await self._copy_for_retry(delivery, item, error):
            await delivery.ack()

    async def _park(self, delivery: Delivery, item: _Copy, reason: str, detail: str) -> None:
        if await self._copy_to_parking(delivery, item, reason, detail):
            await delivery.ack()

    async def _copy_for_retry(self, delivery: Delivery, item: _Copy, error: BaseException) -> bool:
        attempts = attempts_so_far(item.headers) + 1
        policy = self.work.retry
        if policy.exhausted(attempts):
            return await self._copy_to_parking(
                delivery, item, "retries_exhausted", f"{attempts} attempts, last: {describe_error(error)}"
            )
        item.headers |= {ATTEMPT_HEADER: attempts, ERROR_HEADER: describe_error(error)}
        target = retry_queue_name(self.queue, policy.tier(attempts))
        if not await self._copy(delivery, item, target, expiration=policy.delay(attempts)):
            return False
        self._metrics.retried(self.queue).inc()
        return True

    async def _copy_to_parking(self, delivery: Delivery, item: _Copy, reason: str, detail: str) -> bool:
        item.headers |= {
            PARKED_REASON_HEADER: reason,
            PARKED_FROM_HEADER: self.queue,
            PARKED_AT_HEADER: datetime.now(UTC).isoformat(),
            ERROR_HEADER: detail[:MAX_ERROR_LENGTH],
        }
        if not await self._copy(delivery, item, parking_queue_name(self.queue)):
            return False
        log.error("parked message %s from %s (%s): %s", item.message_id, self.queue, reason, detail)
        self._metrics.parked(self.queue, reason).inc()
        return True

    async def _copy(
        self, delivery: Delivery, item: _Copy, queue: str, expiration: float | None = None
    ) -> bool:
        """Publish ``item`` to ``queue`` with a confirm; on failure requeue ``delivery``."""
        out = Outgoing(
            item.body,
            item.message_id,
            item.message_type,
            item.content_type,
            item.correlation_id,
            item.headers,
            expiration,
        )
        try:
            await self._transport.publish(
                "", queue, out, mandatory=True, confirm_timeout=self._publish_timeout
            )
        except PublishError as exc:
            log.warning("could not move %s to %s (%s); requeueing it", item.message_id, queue, exc)
            await delivery.reject(requeue=True)
            self._metrics.requeued(self.queue).inc()
            return False
        return True

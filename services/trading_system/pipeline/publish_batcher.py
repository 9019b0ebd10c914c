"""Confirmed publishes of many callers, several logical messages per AMQP message.

Every logical message used to be its own AMQP message: one frame set, one quorum write
on three brokers, one confirm, one delivery and one ack. With the two cores shared by
the brokers and every service, that per-message cost set the pipeline's ceiling. While
one batch is being confirmed, the messages that callers publish queue up and go out
together as one ``publish_batch`` (the bus packs them into one AMQP message, and the
consumer hands them to its handler one by one, in order); a lone message still goes out
at once, as a plain message.

Each caller still returns only once the broker confirmed the AMQP message that carries
its message, and gets the error if that publish failed, exactly as with ``publish``.
"""

from __future__ import annotations

from typing import Any

from trading_system.bus import Envelope, MessageBus
from trading_system.bus.messages import BusMessage
from trading_system.storage.commit_queue import CommitQueue, Pending


class PublishBatcher:
    """Publishes to one exchange and routing key; ``writers`` batches in flight at once."""

    def __init__(
        self,
        bus: MessageBus,
        *,
        exchange: str,
        routing_key: str,
        max_batch: int = 64,
        writers: int = 2,
        name: str = "publish-batcher",
    ) -> None:
        self.bus = bus
        self.exchange = exchange
        self.routing_key = routing_key
        self.batches = 0
        self.messages = 0
        self._queue: CommitQueue[Envelope[BusMessage]] = CommitQueue(
            self._publish,
            max_batch=min(max_batch, bus.settings.max_batch_size),
            writers=writers,
            name=name,
            closing="publisher closing",
        )

    async def publish(self, message: BusMessage, **meta: Any) -> Envelope[BusMessage]:
        """Publish ``message`` (``meta``: the envelope fields of ``bus.envelope``); return
        once the broker confirmed it."""
        envelope: Envelope[BusMessage] = self.bus.envelope(message, **meta)
        await self._queue.run(envelope)
        return envelope

    async def close(self) -> None:
        await self._queue.close()

    async def _publish(self, batch: list[Pending[Envelope[BusMessage]]]) -> None:
        envelopes = [pending.item for pending in batch]
        try:
            if len(envelopes) == 1:
                await self.bus.publish(envelopes[0], exchange=self.exchange, routing_key=self.routing_key)
            else:
                await self.bus.publish_batch(envelopes, exchange=self.exchange, routing_key=self.routing_key)
        except Exception as exc:
            for pending in batch:
                pending.fail(exc)
            return
        self.batches += 1
        self.messages += len(batch)
        for pending in batch:
            pending.resolve(None)

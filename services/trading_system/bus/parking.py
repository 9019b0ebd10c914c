"""Inspect and re-publish parked (or dead-lettered) messages.

    python -m trading_system.bus.parking list matching.commands
    python -m trading_system.bus.parking list matching.commands --source dead --json
    python -m trading_system.bus.parking republish matching.commands --id 3f2a... --id 9bc1...
    python -m trading_system.bus.parking republish matching.commands --all

Broker URLs come from ``--urls`` or ``TRADING_SYSTEM_RABBITMQ_URLS``. Re-publishing sends
the original body to the work queue with the bookkeeping headers removed, so the message
gets a fresh set of attempts; the parked copy is acked only after the broker confirmed the
new one. Messages are held unacked while the tool looks at them, so a second operator
running the tool at the same time never sees the same message twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from trading_system.bus.codec import ENVELOPE_CONTENT_TYPE, peek_message_ids
from trading_system.bus.config import URLS_ENV, BusSettings
from trading_system.bus.consumer import (
    ATTEMPT_HEADER,
    DEAD_REASON_HEADER,
    ERROR_HEADER,
    PARKED_AT_HEADER,
    PARKED_FROM_HEADER,
    PARKED_REASON_HEADER,
    attempts_so_far,
)
from trading_system.bus.envelope import new_message_id
from trading_system.bus.topology import dead_letter_queue_name, parking_queue_name
from trading_system.bus.transport import DELIVERY_COUNT_HEADER, Delivery, Outgoing, Transport

Source = Literal["parking", "dead"]
REPUBLISHED_HEADER = "x-ts-republished"
# Everything the bus or the broker added while the message failed; a re-published
# message starts over without it.
_BOOKKEEPING = frozenset(
    {
        ATTEMPT_HEADER,
        ERROR_HEADER,
        PARKED_REASON_HEADER,
        PARKED_FROM_HEADER,
        PARKED_AT_HEADER,
        DEAD_REASON_HEADER,
        DELIVERY_COUNT_HEADER,
        "x-death",
        "x-first-death-reason",
        "x-first-death-queue",
        "x-first-death-exchange",
        "x-last-death-reason",
        "x-last-death-queue",
        "x-last-death-exchange",
    }
)


@dataclass(frozen=True, slots=True)
class ParkedMessage:
    message_id: str
    message_type: str
    reason: str
    error: str
    attempts: int
    parked_at: str
    item_ids: tuple[str, ...]
    size: int


def _reason(headers: dict[str, Any]) -> str:
    if PARKED_REASON_HEADER in headers:
        return str(headers[PARKED_REASON_HEADER])
    if DEAD_REASON_HEADER in headers:
        return str(headers[DEAD_REASON_HEADER])
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return str(deaths[0].get("reason", "unknown"))
    return "unknown"


def describe(delivery: Delivery) -> ParkedMessage:
    headers = dict(delivery.headers)
    return ParkedMessage(
        message_id=delivery.message_id or "",
        message_type=delivery.message_type or "",
        reason=_reason(headers),
        error=str(headers.get(ERROR_HEADER, "")),
        attempts=attempts_so_far(headers),
        parked_at=str(headers.get(PARKED_AT_HEADER, "")),
        item_ids=tuple(peek_message_ids(delivery.body)),
        size=len(delivery.body),
    )


def source_queue(queue: str, source: Source) -> str:
    return parking_queue_name(queue) if source == "parking" else dead_letter_queue_name(queue)


class ParkingTool:
    """The operations behind the CLI, usable from code (and tests) on any transport."""

    def __init__(self, transport: Transport, publish_timeout: float = 10.0, settle: float = 1.0) -> None:
        self._transport = transport
        self._timeout = publish_timeout
        self._settle = settle
        self._returned_at = -math.inf

    async def _take(
        self, queue: str, limit: int | None, wanted: Collection[str] | None = None
    ) -> list[Delivery]:
        # A quorum queue applies a requeue (ours, or that of a tool run that just ended)
        # asynchronously, after a basic.get that follows it, so for a moment such
        # messages are invisible. An empty answer is asked again until ``settle`` has
        # passed since this tool put messages back, or, when specific ids are wanted and
        # not all found yet, since the start.
        start = time.monotonic()
        taken: list[Delivery] = []
        missing = set(wanted) if wanted is not None else set()
        while limit is None or len(taken) < limit:
            delivery = await self._transport.get(queue)
            if delivery is not None:
                taken.append(delivery)
                missing -= {delivery.message_id or "", *peek_message_ids(delivery.body)}
                continue
            since = max(self._returned_at, start if missing else -math.inf)
            if time.monotonic() - since > self._settle:
                break
            await asyncio.sleep(0.05)
        return taken

    async def _give_back(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in reversed(deliveries):
            await delivery.reject(requeue=True)
        if deliveries:
            self._returned_at = time.monotonic()

    async def inspect(
        self, queue: str, *, source: Source = "parking", limit: int = 100
    ) -> list[ParkedMessage]:
        taken = await self._take(source_queue(queue, source), limit)
        try:
            return [describe(d) for d in taken]
        finally:
            await self._give_back(taken)

    async def republish(
        self,
        queue: str,
        *,
        source: Source = "parking",
        message_ids: Collection[str] | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """Move the selected messages (all when ``message_ids`` is None) back to ``queue``."""
        taken = await self._take(source_queue(queue, source), limit, message_ids)
        done: list[str] = []
        moved: set[int] = set()
        try:
            for delivery in taken:
                info = describe(delivery)
                if message_ids is not None and not (
                    info.message_id in message_ids or set(info.item_ids) & set(message_ids)
                ):
                    continue
                await self._transport.publish(
                    "", queue, self._fresh(delivery), mandatory=True, confirm_timeout=self._timeout
                )
                await delivery.ack()
                moved.add(id(delivery))
                done.append(info.message_id)
        finally:
            await self._give_back([d for d in taken if id(d) not in moved])
        return done

    @staticmethod
    def _fresh(delivery: Delivery) -> Outgoing:
        headers = {k: v for k, v in delivery.headers.items() if k not in _BOOKKEEPING}
        count = headers.get(REPUBLISHED_HEADER, 0)
        headers[REPUBLISHED_HEADER] = (count if isinstance(count, int) else 0) + 1
        return Outgoing(
            delivery.body,
            delivery.message_id or new_message_id(),
            delivery.message_type or "",
            delivery.content_type or ENVELOPE_CONTENT_TYPE,
            delivery.correlation_id,
            headers,
        )


# -- command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trading_system.bus.parking",
        description="List and re-publish parked or dead-lettered messages of a work queue.",
    )
    parser.add_argument("--urls", help=f"comma-separated AMQP URLs (default: ${URLS_ENV})")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("list", "show messages"), ("republish", "send messages back to the work queue")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("queue", help="the work queue, e.g. matching.commands")
        cmd.add_argument("--source", choices=("parking", "dead"), default="parking")
        cmd.add_argument("--limit", type=int, default=None, help="look at most at this many messages")
    listing = sub.choices["list"]
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    again = sub.choices["republish"]
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="ids", action="append", help="message id (repeatable)")
    which.add_argument("--all", action="store_true", help="every message in the source queue")
    return parser


async def run(args: argparse.Namespace, out: Any = sys.stdout) -> int:
    from trading_system.bus.transport_rabbitmq import RabbitMQTransport

    settings = BusSettings.from_env(urls=args.urls, service="parking-tool")
    if not settings.urls:
        print(f"no broker URLs: pass --urls or set {URLS_ENV}", file=sys.stderr)
        return 2
    transport = RabbitMQTransport(settings.urls, connection_name="parking-tool")
    await transport.connect()
    try:
        tool = ParkingTool(transport)
        if args.command == "list":
            rows = await tool.inspect(args.queue, source=args.source, limit=args.limit or 100)
            for row in rows:
                if args.json:
                    print(json.dumps(asdict(row)), file=out)
                else:
                    print(
                        f"{row.message_id}  {row.message_type:<20} {row.reason:<18} "
                        f"attempts={row.attempts} items={len(row.item_ids)} {row.parked_at}  {row.error}",
                        file=out,
                    )
            print(f"{len(rows)} message(s) in {source_queue(args.queue, args.source)}", file=out)
        else:
            ids = None if args.all else set(args.ids)
            done = await tool.republish(args.queue, source=args.source, message_ids=ids, limit=args.limit)
            for message_id in done:
                print(f"republished {message_id}", file=out)
            print(f"{len(done)} message(s) re-published to {args.queue}", file=out)
            if ids is not None and len(done) < len(ids):
                return 1
    finally:
        await transport.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

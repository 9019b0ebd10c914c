"""Group commit of new orders: concurrent submits share one fenced transaction.

A submit's cost is dominated by the commit (an fsync on PostgreSQL) and the statement
round trips, not by the row. While one transaction is committing, the submits that
arrive queue up and go in the next one together, so under load the commits per second
stay flat while the orders per commit grow; a lone submit still goes at once.

Each caller gets its own answer: when a batch hits a duplicate client order id (one bad
row fails the whole transaction) the batch is retried row by row, so only the duplicate
is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from trading_system.execution.book import OrderRecord
from trading_system.execution.service.store import DuplicateClientOrderId

Write = Callable[[Sequence[OrderRecord]], Awaitable[None]]


class GroupCommit:
    def __init__(self, write: Write, max_batch: int = 128) -> None:
        self.write = write
        self.max_batch = max_batch
        self.batches = 0
        self._queue: asyncio.Queue[tuple[OrderRecord, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def insert(self, record: OrderRecord) -> None:
        """Return once ``record`` is committed; raise what its write raised."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="execution-group-commit")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((record, future))
        await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("execution service stopping"))

    async def _run(self) -> None:
        while True:
            items = [await self._queue.get()]
            while len(items) < self.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            self.batches += 1
            try:
                await self._write_all(items)
            except asyncio.CancelledError:
                for _, future in items:
                    if not future.done():
                        future.set_exception(RuntimeError("execution service stopping"))
                raise

    async def _write_all(self, items: list[tuple[OrderRecord, asyncio.Future[None]]]) -> None:
        try:
            await self.write([record for record, _ in items])
        except DuplicateClientOrderId as exc:
            if len(items) == 1:
                _settle(items[0][1], exc)
                return
            for item in items:
                await self._write_all([item])
            return
        except Exception as exc:
            for _, future in items:
                _settle(future, exc)
            return
        for _, future in items:
            _settle(future, None)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)

"""The queue behind a group commit: callers wait on futures, writers take what queued.

While a writer commits one batch, the callers that arrive queue up; the writer then takes
everything queued (up to ``max_batch``) as its next batch, so under load the commits per
second stay flat while the items per commit grow, and a lone caller still goes at once.
What a batch means (one transaction, a retry item by item after a fault) is the
``commit`` callback's business: it must settle every item's future.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

ItemT = TypeVar("ItemT")


@dataclass(slots=True)
class Pending(Generic[ItemT]):
    """One caller's item and the future it waits on."""

    item: ItemT
    future: asyncio.Future[Any]

    def resolve(self, value: Any) -> None:
        if not self.future.done():
            self.future.set_result(value)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class CommitQueue(Generic[ItemT]):
    """``writers`` batches may be in flight at once (each on its own connection)."""

    def __init__(
        self,
        commit: Callable[[list[Pending[ItemT]]], Awaitable[None]],
        *,
        max_batch: int,
        writers: int = 1,
        name: str,
        closing: str,
    ) -> None:
        self.commit = commit
        self.max_batch = max_batch
        self.writers = writers
        self.name = name
        self.closing = closing  # what callers still waiting are told when the queue closes
        self._queue: asyncio.Queue[Pending[ItemT]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self, item: ItemT) -> Any:
        """Queue ``item``; return (or raise) what its batch's commit settled it with."""
        self._ensure_writers()
        pending = Pending(item, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(pending)
        return await pending.future

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            self._queue.get_nowait().fail(RuntimeError(self.closing))

    def _ensure_writers(self) -> None:
        self._tasks = [task for task in self._tasks if not task.done()]
        while len(self._tasks) < self.writers:
            self._tasks.append(asyncio.create_task(self._write_forever(), name=self.name))

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self.commit(batch)
            except asyncio.CancelledError:
                for pending in batch:
                    pending.fail(RuntimeError(self.closing))
                raise

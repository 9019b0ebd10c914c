"""Group commit for ledger writes: many operations, one transaction, one fsync.

Every ledger operation accepts a connection and then joins the caller's transaction, so
the gate collects whatever callers queued while the previous commit ran, runs each in
its own SAVEPOINT (a refusal rolls back only its own savepoint, and ledger refusals
change nothing anyway) and commits once. A caller's future resolves only after the
commit, so "done" still means durable. On SQLite this also replaces busy-waiting of
several connections on the write lock by one writer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trading_system.storage.transactions import transaction

T = TypeVar("T")
Operation = Callable[[AsyncConnection], Awaitable[Any]]


class LedgerGate:
    def __init__(self, db: AsyncEngine, max_batch: int = 256) -> None:
        self.db = db
        self.max_batch = max_batch
        self.commits = 0
        self.operations = 0
        self._queue: asyncio.Queue[tuple[Operation, asyncio.Future[Any]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="ledger-group-commit")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def run(self, operation: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        return await self.submit(operation)

    def submit(self, operation: Callable[[AsyncConnection], Awaitable[T]]) -> asyncio.Future[T]:
        """Queue ``operation`` now (operations run in submission order); await the result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((operation, future))
        return future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[Operation, asyncio.Future[Any]]]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            async with transaction(self.db) as conn:
                for operation, future in batch:
                    try:
                        async with conn.begin_nested():
                            outcomes.append((future, True, await operation(conn)))
                    except Exception as exc:
                        outcomes.append((future, False, exc))
        except Exception as exc:  # the commit itself failed: nothing of the batch landed
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        self.commits += 1
        self.operations += len(batch)
        for future, ok, value in outcomes:
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

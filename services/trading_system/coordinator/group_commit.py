"""Group commit for coordinator writes: many transactions' steps, one database commit.

A coordinator step's cost was its commit (an fsync on PostgreSQL) and the round trips
around it (pool checkout, BEGIN, COMMIT), not its one or two statements. Concurrent
steps of different transactions (creations, claims, saves, releases, outbox flags)
queue here while the previous batch commits and then go in the next batch together, so
under load the commits per second stay flat while the steps per commit grow.

Each caller still awaits its own durable commit: its future resolves only after the
batch's COMMIT returned, so "saved" still means fsync-committed before any effect runs.

Rules an operation must keep (the ``SqlStore`` writes do):

* it writes nothing (and defers no rows) before it raises a refusal of its own (``LeaseLostError`` after an
  UPDATE that matched no row, ``LeaseBusyError``): such an exception is that caller's
  answer and the rest of the batch commits;
* it locks only the rows of its own key (the transaction id). Operations run sorted by
  key (stable, so one transaction's operations keep their order), so every batch of
  every replica takes row locks in one global order and batches cannot deadlock.

A database error inside an operation (a deadlock with a writer outside these rules, a
constraint) aborts the whole database transaction; the batch is then retried one
operation per transaction, so only the operation at fault fails. A failure of the
connection or of the COMMIT itself fails every caller of the batch, exactly as a
failed commit of their own would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trading_system.coordinator.bulk import Write, run_bulk

T = TypeVar("T")


class Batch:
    """The connection of one database transaction, and inserts left for its end.

    ``later`` collects rows for one INSERT per table, sent as one ``executemany`` (one
    pipelined round trip on asyncpg) just before the commit, instead of a round trip
    per operation: the steps' history rows are most of a batch's statements.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self._inserts: dict[Table, list[dict[str, Any]]] = {}

    def later(self, table: Table, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._inserts.setdefault(table, []).extend(rows)

    async def flush(self) -> None:
        inserts, self._inserts = self._inserts, {}
        for table, rows in inserts.items():
            await self.conn.execute(table.insert(), rows)


Operation = Callable[[Batch], Awaitable[Any]]


@dataclass(slots=True)
class _Item:
    key: str
    operation: Operation
    future: asyncio.Future[Any]
    write: Write | None


class _OperationFailed(Exception):
    """A database error inside one operation: nothing of the batch was committed."""


class GroupCommitter:
    """``writers`` batches may be in flight at once (each on its own connection): while
    one waits for its fsync, the next already collects and runs statements."""

    def __init__(self, db: AsyncEngine, *, max_batch: int = 128, writers: int = 2) -> None:
        self.db = db
        self.max_batch = max_batch
        self.writers = writers
        self.commits = 0
        self.operations = 0
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def run(
        self, key: str, operation: Callable[[Batch], Awaitable[T]], write: Write | None = None
    ) -> T:
        """Run ``operation`` in the next batch; return once that batch has committed.

        ``write`` is the same write for the set-based statements of ``bulk`` (PostgreSQL);
        when every write of a batch has one, the batch runs as those statements.
        """
        self._ensure_writers()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(key, operation, future, write))
        return await future

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            _settle(self._queue.get_nowait().future, RuntimeError("coordinator store closing"))

    def _ensure_writers(self) -> None:
        self._tasks = [task for task in self._tasks if not task.done()]
        while len(self._tasks) < self.writers:
            self._tasks.append(asyncio.create_task(self._write_forever(), name="coordinator-group-commit"))

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                for item in batch:
                    _settle(item.future, RuntimeError("coordinator store closing"))
                raise

    async def _commit(self, batch: list[_Item]) -> None:
        batch.sort(key=lambda item: item.key)
        try:
            outcomes = await self._run_batch(batch)
        except _OperationFailed as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc.__cause__ or exc)
                return
            for item in batch:  # find the one at fault: each alone
                await self._commit([item])
            return
        except Exception as exc:
            for item in batch:
                _settle(item.future, exc)
            return
        self.commits += 1
        self.operations += len(batch)
        for item, (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                _resolve(item.future, value)
            else:
                _settle(item.future, value)

    async def _run_batch(self, batch: list[_Item]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        async with self.db.begin() as conn:
            writes = [item.write for item in batch if item.write is not None]
            if len(writes) == len(batch) > 1 and conn.dialect.name == "postgresql":
                try:
                    return await run_bulk(conn, writes)
                except DBAPIError as exc:
                    raise _OperationFailed(str(exc)) from exc
            work = Batch(conn)
            for item in batch:
                try:
                    outcomes.append((True, await item.operation(work)))
                except DBAPIError as exc:
                    raise _OperationFailed(str(exc)) from exc
                except Exception as exc:  # the operation's own refusal: it wrote nothing
                    outcomes.append((False, exc))
            try:
                await work.flush()
            except DBAPIError as exc:
                raise _OperationFailed(str(exc)) from exc
        return outcomes


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _settle(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)

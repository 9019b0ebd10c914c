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

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trading_system.coordinator.bulk import Write, run_bulk
from trading_system.storage.commit_queue import CommitQueue, Pending

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


@dataclass(slots=True, frozen=True)
class _Item:
    key: str
    operation: Operation
    write: Write | None


class _OperationFailed(Exception):
    """A database error inside one operation: nothing of the batch was committed."""


class GroupCommitter:
    """``writers`` batches may be in flight at once (each on its own connection): while
    one waits for its fsync, the next already collects and runs statements."""

    def __init__(self, db: AsyncEngine, *, max_batch: int = 128, writers: int = 2) -> None:
        self.db = db
        self.commits = 0
        self.operations = 0
        self._queue = CommitQueue(
            self._commit,
            max_batch=max_batch,
            writers=writers,
            name="coordinator-group-commit",
            closing="coordinator store closing",
        )

    @property
    def writers(self) -> int:
        return self._queue.writers

    async def run(
        self, key: str, operation: Callable[[Batch], Awaitable[T]], write: Write | None = None
    ) -> T:
        """Run ``operation`` in the next batch; return once that batch has committed.

        ``write`` is the same write for the set-based statements of ``bulk`` (PostgreSQL);
        when every write of a batch has one, the batch runs as those statements.
        """
        result: T = await self._queue.run(_Item(key, operation, write))
        return result

    async def close(self) -> None:
        await self._queue.close()

    async def _commit(self, batch: list[Pending[_Item]]) -> None:
        batch.sort(key=lambda pending: pending.item.key)
        try:
            outcomes = await self._run_batch([pending.item for pending in batch])
        except _OperationFailed as exc:
            if len(batch) == 1:
                batch[0].fail(exc.__cause__ or exc)
                return
            for pending in batch:  # find the one at fault: each alone
                await self._commit([pending])
            return
        except Exception as exc:
            for pending in batch:
                pending.fail(exc)
            return
        self.commits += 1
        self.operations += len(batch)
        for pending, (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                pending.resolve(value)
            else:
                pending.fail(value)

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

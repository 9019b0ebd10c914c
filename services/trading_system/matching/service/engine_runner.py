"""The matching engine's control loop, independent of any transport.

Active: ``submit(batch)`` journals the batch (fenced), applies the new commands to the
book, hands their events to the publisher and returns only once it confirmed them; the
caller acks the commands after ``submit`` returns and never before. A
:class:`FencedError` from the journal turns the runner ``fenced`` at once: nothing of
that batch was written, applied or published, and every later ``submit`` is refused.

Standby: ``catch_up()`` (called every N ms by ``run_standby``) applies the journal tail
to a warm book and measures the lag. ``promote(epoch)`` writes the new epoch to the
fence row (only if greater), catches up to the head (the old active can no longer
append once the fence moved), republishes the events the old active may not have had
confirmed, and becomes active.

Every event batch carries ``(epoch, seq)``: the publisher's epoch and the journal
sequence of the command that caused it, so consumers can drop older epochs and
deduplicate on ``(engine_id, seq)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from trading_system.matching.core import Command, Event, MatchingEngine, SymbolSpec
from trading_system.matching.service.journal import AppendResult, Journal, JournalEntry
from trading_system.matching.service.metrics import ROLE_VALUES, MatchingMetrics
from trading_system.storage.fencing import FencedError, raise_epoch, read_fence

log = logging.getLogger(__name__)


class Role(enum.StrEnum):
    ACTIVE = "active"
    STANDBY = "standby"
    FENCED = "fenced"


@dataclass(frozen=True, slots=True)
class EntryEvents:
    seq: int
    """Journal sequence of the command."""
    command_id: str
    events: list[Event]


@dataclass(frozen=True, slots=True)
class EventBatch:
    engine_id: str
    epoch: int
    entries: list[EntryEvents]

    @property
    def event_count(self) -> int:
        return sum(len(e.events) for e in self.entries)


Publisher = Callable[[EventBatch], Awaitable[None]]
RoleListener = Callable[["Role"], None]


class NotActiveError(RuntimeError):
    """``submit`` on a runner that is not the active member."""


@dataclass(slots=True)
class SubmitResult:
    appended: list[int] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    events: int = 0


class EngineRunner:
    def __init__(
        self,
        journal: Journal,
        publisher: Publisher,
        *,
        role: Role = Role.STANDBY,
        epoch: int = 0,
        specs: Iterable[SymbolSpec] = (),
        holder: str | None = None,
        snapshot_every: int = 10_000,
        page_size: int = 5_000,
        metrics: MatchingMetrics | None = None,
        on_role_change: RoleListener | None = None,
    ) -> None:
        self.journal = journal
        self.publisher = publisher
        self.role = role
        self.epoch = epoch
        self.specs = tuple(specs)
        self.holder = holder or f"{journal.engine_id}-runner"
        self.snapshot_every = snapshot_every
        self.page_size = page_size
        self.metrics = metrics
        self.on_role_change = on_role_change
        self.engine = MatchingEngine(self.specs)
        self.applied_seq = 0
        self.head_seq = 0
        self.published_seq = 0
        self._persisted_published = 0
        self._last_snapshot_seq = 0
        self._pending: list[EntryEvents] = []
        self._lock = asyncio.Lock()
        self._report_role()

    # -- state --------------------------------------------------------------------------

    @property
    def engine_id(self) -> str:
        return self.journal.engine_id

    @property
    def lag(self) -> int:
        """Journal entries known to exist but not yet applied."""
        return max(0, self.head_seq - self.applied_seq)

    @property
    def pending_events(self) -> int:
        return len(self._pending)

    def _set_role(self, role: Role) -> None:
        if role is self.role:
            return
        log.warning("matching %s: role %s -> %s (epoch %d)", self.engine_id, self.role, role, self.epoch)
        self.role = role
        self._report_role()
        if self.on_role_change is not None:
            self.on_role_change(role)

    def _report_role(self) -> None:
        if self.metrics is not None:
            self.metrics.role.set(ROLE_VALUES[self.role.value])
            self.metrics.epoch.set(self.epoch)

    # -- start-up -----------------------------------------------------------------------

    async def recover(self) -> int:
        """Rebuild the book: latest snapshot + replay of the journal after it."""
        async with self._lock:
            snapshot = await self.journal.latest_snapshot()
            if snapshot is None:
                self.engine = MatchingEngine(self.specs)
                self.applied_seq = 0
            else:
                self.engine = MatchingEngine.from_snapshot(snapshot.state)
                self.applied_seq = self._last_snapshot_seq = snapshot.seq
            self._pending.clear()
            return await self._catch_up()

    # -- active -------------------------------------------------------------------------

    async def submit(self, commands: Sequence[Command]) -> SubmitResult:
        """Journal, apply and publish ``commands``; return only when all is confirmed.

        Raises :class:`NotActiveError` unless active, :class:`FencedError` (and turns
        fenced) if the epoch is stale, and whatever the publisher raises: then the
        commands are journaled and applied but not confirmed, so the caller must not ack;
        their events stay pending and go out before those of the next batch (a
        redelivered command is a journal duplicate, so its events are not made twice).
        """
        async with self._lock:
            if self.role is not Role.ACTIVE:
                raise NotActiveError(f"matching {self.engine_id} is {self.role}, not active")
            m = self.metrics
            started = time.perf_counter()
            watermark = self.published_seq if self.published_seq > self._persisted_published else None
            try:
                result: AppendResult = await self.journal.append(
                    commands, self.epoch, published_seq=watermark
                )
            except FencedError:
                self._fence()
                raise
            if watermark is not None:
                self._persisted_published = watermark
            appended = time.perf_counter()
            if result.new:
                if result.new[0].seq != self.applied_seq + 1:
                    # Entries we have not applied (another writer of this epoch): apply
                    # them first so the book follows the journal order exactly.
                    await self._apply_range(self.applied_seq + 1, result.new[0].seq - 1, keep_events=True)
                self._apply(result.new, keep_events=True)
            self.head_seq = max(self.head_seq, self.applied_seq)
            matched = time.perf_counter()
            events = await self._publish_pending()
            if m is not None:
                m.journal_latency.observe(appended - started)
                m.match_latency.observe(matched - appended)
                m.publish_latency.observe(time.perf_counter() - matched)
                m.commands.inc(len(result.new))
                m.duplicates.inc(len(result.duplicates))
                m.applied_seq.set(self.applied_seq)
                m.lag.set(0)
            await self._maybe_snapshot()
            return SubmitResult([e.seq for e in result.new], result.duplicates, events)

    async def _publish_pending(self) -> int:
        if not self._pending:
            return 0
        batch = EventBatch(self.engine_id, self.epoch, list(self._pending))
        await self.publisher(batch)
        self.published_seq = max(self.published_seq, batch.entries[-1].seq)
        self._pending.clear()
        if self.metrics is not None:
            self.metrics.events.inc(batch.event_count)
        return batch.event_count

    def _fence(self) -> None:
        self._pending.clear()
        self._set_role(Role.FENCED)

    # -- applying -----------------------------------------------------------------------

    def _apply(self, entries: Sequence[JournalEntry], *, keep_events: bool) -> None:
        process = self.engine.process
        for entry in entries:
            if entry.seq != self.applied_seq + 1:
                raise RuntimeError(f"journal gap: expected seq {self.applied_seq + 1}, got {entry.seq}")
            events = process(entry.command)
            self.applied_seq = entry.seq
            if keep_events and entry.seq > self.published_seq:
                self._pending.append(EntryEvents(entry.seq, entry.command_id, events))

    async def _apply_range(self, first: int, last: int, *, keep_events: bool) -> None:
        nxt = first
        while nxt <= last:
            entries = [
                e
                for e in await self.journal.read_from(nxt, min(self.page_size, last - nxt + 1))
                if e.seq <= last
            ]
            if not entries:
                raise RuntimeError(f"journal entries {nxt}..{last} are missing")
            self._apply(entries, keep_events=keep_events)
            nxt = entries[-1].seq + 1

    async def _catch_up(self) -> int:
        """Apply everything journaled after ``applied_seq``; keeps the events the broker
        has not confirmed yet (above the published watermark) for a possible promotion."""
        self.published_seq = max(self.published_seq, await self.journal.published_seq())
        self._persisted_published = max(self._persisted_published, self.published_seq)
        self._pending = [p for p in self._pending if p.seq > self.published_seq]
        self.head_seq = max(self.head_seq, await self.journal.head())
        applied = 0
        while True:
            entries = await self.journal.read_from(self.applied_seq + 1, self.page_size)
            if not entries:
                break
            self._apply(entries, keep_events=True)
            applied += len(entries)
            self.head_seq = max(self.head_seq, self.applied_seq)
            await self._maybe_snapshot()
        if self.metrics is not None:
            self.metrics.applied_seq.set(self.applied_seq)
            self.metrics.lag.set(self.lag)
        return applied

    async def _maybe_snapshot(self) -> None:
        if self.snapshot_every > 0 and self.applied_seq - self._last_snapshot_seq >= self.snapshot_every:
            await self.write_snapshot()

    async def write_snapshot(self) -> int:
        seq = self.applied_seq
        await self.journal.write_snapshot(seq, self.epoch, self.engine.snapshot())
        self._last_snapshot_seq = seq
        return seq

    # -- standby ------------------------------------------------------------------------

    async def catch_up(self) -> int:
        """Apply the journal tail (standby or fenced); returns the entries applied."""
        async with self._lock:
            if self.role is Role.ACTIVE:
                return 0
            return await self._catch_up()

    async def refresh_lag(self) -> int:
        self.head_seq = max(self.head_seq, await self.journal.head())
        if self.metrics is not None:
            self.metrics.lag.set(self.lag)
        return self.lag

    async def run_standby(self, stop: asyncio.Event, interval: float = 0.05) -> None:
        """Tail the journal every ``interval`` seconds while not active, until ``stop``."""
        while not stop.is_set():
            if self.role is not Role.ACTIVE:
                try:
                    await self.catch_up()
                except Exception:  # a database hiccup must not end the tailing
                    log.exception("matching %s: journal tail failed", self.engine_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    # -- role changes -------------------------------------------------------------------

    async def promote(self, new_epoch: int) -> None:
        """Take ``new_epoch``: fence row first (only if greater), catch up, become active.

        Raises :class:`FencedError` if the fence already stands higher (or at this epoch
        for another holder).
        """
        async with self._lock:
            if self.role is Role.ACTIVE and self.epoch == new_epoch:
                return
            await raise_epoch(self.journal.db, self.journal.pair_name, new_epoch, self.holder)
            self.epoch = new_epoch
            # Cut off the old writer at the fence: from here the journal cannot grow
            # behind our back, so this catch-up reaches the final head.
            await self._catch_up()
            self._set_role(Role.ACTIVE)
            self._report_role()
            try:
                await self._publish_pending()
            except Exception:
                log.exception(
                    "matching %s: republishing unconfirmed events failed; retried with the next batch",
                    self.engine_id,
                )

    async def demote(self) -> None:
        """Stop being active (stop consuming and publishing); keep tailing as standby."""
        async with self._lock:
            self._set_role(Role.STANDBY)

    async def check_epoch(self) -> None:
        """Verify (read-only) that this active's epoch still holds; fences itself if not."""
        if self.role is not Role.ACTIVE:
            return
        state = await read_fence(self.journal.db, self.journal.pair_name)
        if state is None or state.epoch != self.epoch:
            async with self._lock:
                self._fence()

    def book(self, symbol: str, levels: int = 10) -> dict[str, object]:
        depth = self.engine.depth(symbol, levels)
        return {
            "symbol": depth.symbol,
            "seq": depth.seq,
            "applied_seq": self.applied_seq,
            "bids": [list(level) for level in depth.bids],
            "asks": [list(level) for level in depth.asks],
        }

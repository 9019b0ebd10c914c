"""Ordering by (epoch, sequence): consumers drop events from a fenced, older epoch.

After a failover the new active publishes under a higher epoch. The old active may still
have events in flight (or may not know yet that it lost its role), so consumers keep the
highest epoch seen per stream and refuse anything older; within one epoch a sequence at
or below the last one is a redelivery and is dropped as a duplicate.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass


class Verdict(enum.StrEnum):
    ACCEPT = "accept"
    STALE_EPOCH = "stale_epoch"
    DUPLICATE = "duplicate"


@dataclass(slots=True)
class _Position:
    epoch: int
    sequence: int


class EpochGate:
    """Per-stream high-water mark of (epoch, sequence), with a bound on remembered streams.

    A stream is whatever orders the events, e.g. the producing pair or a symbol. Gaps in
    the sequence are accepted (a gap is not a reason to stall a trading system); the
    ``gaps`` counter tells monitoring they happened.
    """

    def __init__(self, max_streams: int = 100_000) -> None:
        if max_streams < 1:
            raise ValueError("max_streams must be positive")
        self._positions: OrderedDict[str, _Position] = OrderedDict()
        self._max_streams = max_streams
        self.gaps = 0

    def check(self, stream: str, epoch: int, sequence: int) -> Verdict:
        """Decide without recording; call ``commit`` once the event has been applied."""
        pos = self._positions.get(stream)
        if pos is None or epoch > pos.epoch:
            return Verdict.ACCEPT
        if epoch < pos.epoch:
            return Verdict.STALE_EPOCH
        return Verdict.ACCEPT if sequence > pos.sequence else Verdict.DUPLICATE

    def commit(self, stream: str, epoch: int, sequence: int) -> None:
        pos = self._positions.get(stream)
        if pos is None:
            self._positions[stream] = _Position(epoch, sequence)
            if len(self._positions) > self._max_streams:
                self._positions.popitem(last=False)
            return
        self._positions.move_to_end(stream)
        if epoch > pos.epoch:
            pos.epoch, pos.sequence = epoch, sequence
        elif epoch == pos.epoch and sequence > pos.sequence:
            if sequence > pos.sequence + 1:
                self.gaps += 1
            pos.sequence = sequence

    def accept(self, stream: str, epoch: int, sequence: int) -> Verdict:
        """``check`` and, when accepted, ``commit`` in one step."""
        verdict = self.check(stream, epoch, sequence)
        if verdict is Verdict.ACCEPT:
            self.commit(stream, epoch, sequence)
        return verdict

    def position(self, stream: str) -> tuple[int, int] | None:
        pos = self._positions.get(stream)
        return None if pos is None else (pos.epoch, pos.sequence)

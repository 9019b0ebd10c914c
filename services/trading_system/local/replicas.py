"""All-active replicas (the coordinators) kept at a count: a local ReplicaSet.

A replica that exits is replaced by a new one with the next name; the replicas' own
protocol (leases in PostgreSQL) hands its unfinished work to the others, so nothing here
needs to know what a replica was doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from trading_system.local.members import (
    MemberCommand,
    MemberRegistry,
    member_index,
)

log = logging.getLogger(__name__)


@dataclass
class ReplicaSpec:
    prefix: str
    slot: int
    replicas: int
    command: MemberCommand
    check_period: float = 0.5


class ReplicaSupervisor:
    def __init__(self, spec: ReplicaSpec, registry: MemberRegistry) -> None:
        self.spec = spec
        self.registry = registry
        self.members = registry.adopt_all(spec.prefix)
        self.replaced = 0

    def _next_name(self) -> str:
        known = [member_index(n) for n in {*self.members, *self.registry.recorded(self.spec.prefix)}]
        return f"{self.spec.prefix}-{max(known, default=-1) + 1}"

    def reconcile(self) -> list[str]:
        """Forget exited replicas and start new ones up to the count; returns the started."""
        for name in self.registry.reap(self.members):
            log.warning("%s: replica %s exited; replacing it", self.spec.prefix, name)
            self.replaced += 1
        started = []
        while len(self.members) < self.spec.replicas:
            name = self._next_name()
            host = self.registry.address(self.spec.slot, name)
            self.members[name] = self.registry.start(name, host, self.spec.command)
            started.append(name)
        return started

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.reconcile()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.spec.check_period)

    def stop_members(self) -> None:
        for member in self.members.values():
            member.kill()

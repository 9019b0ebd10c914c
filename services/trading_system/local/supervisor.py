"""The local supervisor: health-checks a pair of processes and fails over, like the operator.

The policy is the operator's own, ``trading_system.ha.decide``; this module is its
executor for processes instead of pods, and keeps the same executor contract
(``trading_system.ha.actions``): the decision's state is written to
``<dir>/state/<pair>.json`` (atomically, fsynced) before any action runs, actions run in
order and stop at the first failure, and each is idempotent. A supervisor killed at any
step therefore resumes the failover from the file when it is started again, and adopts
the member processes its predecessor started (``members.MemberRegistry``).

Locally the Service is ``<dir>/routes.json``: the member that receives client traffic
per pair (what the ``role=active`` label selects in Kubernetes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from trading_system.ha import (
    Action,
    CreateStandby,
    DeleteMember,
    FailoverPolicy,
    FenceMember,
    Observation,
    PairState,
    PromoteMember,
    RaiseEpoch,
    RecordEvent,
    SwitchService,
    Wait,
    decide,
    significant,
)
from trading_system.ha.probe import Endpoint, admin_call, probe_member
from trading_system.local.files import write_atomically
from trading_system.local.members import (
    MemberCommand,
    MemberProcess,
    MemberRegistry,
)

log = logging.getLogger(__name__)


@dataclass
class PairSpec:
    """One active/standby pair: its name prefix, slot (address block) and member command."""

    prefix: str
    slot: int
    command: MemberCommand
    policy: FailoverPolicy = field(default_factory=FailoverPolicy)
    probe_period: float = 1.0
    probe_timeout: float = 1.0


class Routes:
    """``routes.json``: which member of each pair clients should use."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def target(self, pair: str) -> str | None:
        entry = self.read().get(pair)
        return None if entry is None else str(entry.get("member"))

    def switch(self, pair: str, member: MemberProcess) -> None:
        routes = self.read()
        routes[pair] = {"member": member.name, "url": f"http://{member.host}:{member.port}"}
        write_atomically(self.path, json.dumps(routes, indent=2, sort_keys=True))


class PairSupervisor:
    def __init__(self, spec: PairSpec, directory: Path, registry: MemberRegistry, admin_token: str) -> None:
        self.spec = spec
        self.registry = registry
        self.admin_token = admin_token
        self.routes = Routes(directory / "routes.json")
        self.events = directory / "events.jsonl"
        self.state_file = directory / "state" / f"{spec.prefix}.json"
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state = self._load_state()
        self.members = registry.adopt_all(spec.prefix)

    @property
    def pair(self) -> str:
        return self.spec.prefix

    def _load_state(self) -> PairState:
        try:
            return PairState.from_dict(json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            return PairState.initial(self.spec.prefix)

    def _persist(self, state: PairState) -> None:
        write_atomically(self.state_file, json.dumps(state.to_dict(), sort_keys=True))

    # -- one round ----------------------------------------------------------------------

    async def observe(self, session: aiohttp.ClientSession) -> Observation:
        for name in self.registry.reap(self.members):
            # A process that exited is a pod that is gone: the decision replaces it.
            log.warning("%s: member %s has exited", self.pair, name)
        endpoints = [Endpoint(name, m.host, True, m.port) for name, m in sorted(self.members.items())]
        members = tuple(
            await asyncio.gather(*(probe_member(session, e, self.spec.probe_timeout) for e in endpoints))
        )
        target = self.routes.target(self.pair)
        return Observation(
            now=time.time(), members=members, service_target=target if target in self.members else None
        )

    async def round(self, session: aiohttp.ClientSession) -> tuple[Action, ...]:
        """Observe, decide, persist, execute; returns the actions that were executed."""
        decision = decide(self.state, await self.observe(session), self.spec.policy)
        actionable = [a for a in decision.actions if not isinstance(a, Wait)]
        if actionable or significant(decision.state) != significant(self.state):
            self._persist(decision.state)  # before any action: the executor contract
        self.state = decision.state
        done: list[Action] = []
        for action in decision.actions:
            try:
                ok = await self._execute(session, action)
            except OSError as exc:
                log.warning("%s: %s failed: %s", self.pair, action, exc)
                ok = False
            if not ok:
                break  # the next round asks again
            done.append(action)
        return tuple(done)

    def next_delay(self) -> float:
        # A failover in progress moves on quickly instead of waiting a probe period.
        return 0.2 if self.state.failover is not None else self.spec.probe_period

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    await self.round(session)
                except Exception:  # one bad round must not end supervision
                    log.exception("%s: supervision round failed", self.pair)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.next_delay())

    # -- actions ------------------------------------------------------------------------

    async def _execute(self, session: aiohttp.ClientSession, action: Action) -> bool:
        timeout = self.spec.probe_timeout
        match action:
            case RaiseEpoch(epoch=epoch):
                log.info("%s: epoch raised to %d", self.pair, epoch)
                return True
            case FenceMember(name=name):
                member = self.members.get(name)
                if member is not None and member.alive():
                    # Courtesy only: the raised epoch in PostgreSQL is what stops its writes.
                    await admin_call(
                        session,
                        member.host,
                        "demote",
                        self.admin_token,
                        {"epoch": self.state.epoch},
                        timeout,
                        member.port,
                    )
                return True
            case DeleteMember(name=name):
                member = self.members.pop(name, None)
                if member is not None:
                    await asyncio.to_thread(member.kill)
                self.registry.forget(name)
                return True
            case PromoteMember(name=name, epoch=epoch):
                return await self._promote(session, name, epoch)
            case SwitchService(name=name):
                member = self.members.get(name)
                if member is None:
                    return False
                self.routes.switch(self.pair, member)
                return True
            case CreateStandby(name=name):
                if name not in self.members:
                    host = self.registry.address(self.spec.slot, name)
                    self.members[name] = self.registry.start(name, host, self.spec.command)
                return True
            case RecordEvent(reason=reason, message=message, type=kind):
                log.warning("%s: %s: %s", self.pair, reason.value, message)
                record = {"at": time.time(), "pair": self.pair, "type": kind.value, "reason": reason.value}
                with self.events.open("a") as f:
                    f.write(json.dumps({**record, "message": message}) + "\n")
                return True
            case Wait():
                return True
        raise AssertionError(f"unknown action {action!r}")

    async def _promote(self, session: aiohttp.ClientSession, name: str, epoch: int) -> bool:
        member = self.members.get(name)
        if member is None or not member.alive():
            return False
        # Promotion catches up to the journal head: give it longer than a probe.
        ok, detail = await admin_call(
            session,
            member.host,
            "promote",
            self.admin_token,
            {"epoch": epoch},
            max(self.spec.probe_timeout, 30.0),
            member.port,
        )
        if not ok:
            log.warning("%s: promote %s at epoch %d refused: %s", self.pair, name, epoch, detail)
        return ok

    def stop_members(self) -> None:
        for member in self.members.values():
            member.kill()

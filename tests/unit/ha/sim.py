"""An in-memory pair that the decision's actions act on, so tests can run whole failovers.

It plays the executor (operator or supervisor) and the members: it persists each
decision's state through JSON before executing the actions, as the executor contract
requires, and members react to fence / delete / promote / create like the real ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from trading_system.ha import (
    Action,
    CreateStandby,
    Decision,
    DeleteMember,
    FailoverPolicy,
    FenceMember,
    MemberObservation,
    Observation,
    PairState,
    PromoteMember,
    Role,
    SwitchoverRequest,
    SwitchService,
    decide,
)

ROUND_SECONDS = 10.0


@dataclass
class FakeMember:
    name: str
    role: Role = Role.STANDBY
    epoch: int | None = None
    healthy: bool = True
    lag: int | None = 0
    undeletable: bool = False  # a pod on an unreachable node: the delete never completes

    def observe(self) -> MemberObservation:
        if not self.healthy:
            return MemberObservation(name=self.name, exists=True)
        return MemberObservation(
            name=self.name,
            exists=True,
            ready=True,
            healthz_ok=True,
            readyz_ok=True,
            role=self.role,
            epoch=self.epoch,
            lag=self.lag,
        )


@dataclass
class FakePair:
    members: dict[str, FakeMember] = field(default_factory=dict)
    service_target: str | None = None
    now: float = 1_000.0
    executed: list[Action] = field(default_factory=list)

    def observe(self, switchover: SwitchoverRequest | None = None) -> Observation:
        members = tuple(member.observe() for member in self.members.values())
        return Observation(
            now=self.now, members=members, service_target=self.service_target, switchover=switchover
        )

    def apply(self, action: Action) -> None:
        self.executed.append(action)
        match action:
            case FenceMember(name) if name in self.members:
                self.members[name].role = Role.FENCED
                self._unroute(name)
            case DeleteMember(name) if name in self.members and not self.members[name].undeletable:
                del self.members[name]
                self._unroute(name)
            case PromoteMember(name, epoch) if name in self.members and self.members[name].healthy:
                self.members[name].role = Role.ACTIVE
                self.members[name].epoch = epoch
            case SwitchService(name) if name in self.members:
                self.service_target = name
            case CreateStandby(name) if name not in self.members:
                self.members[name] = FakeMember(name)
            case _:
                pass

    def _unroute(self, name: str) -> None:
        if self.service_target == name:
            self.service_target = None

    def actives(self, epoch: int) -> list[str]:
        return [m.name for m in self.members.values() if m.role is Role.ACTIVE and m.epoch == epoch]


def persisted(state: PairState) -> PairState:
    """The state as the executor reads it back after writing it to the status."""
    restored = PairState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state
    return restored


def run_round(
    state: PairState,
    pair: FakePair,
    policy: FailoverPolicy,
    switchover: SwitchoverRequest | None = None,
    execute_first: int | None = None,
) -> Decision:
    """Decide, persist, execute (only ``execute_first`` actions, to model a crash), tick."""
    decision = decide(state, pair.observe(switchover), policy)
    stored = persisted(decision.state)
    for action in decision.actions[:execute_first]:
        pair.apply(action)
    pair.now += ROUND_SECONDS
    return Decision(stored, decision.actions)


def run_rounds(
    state: PairState,
    pair: FakePair,
    policy: FailoverPolicy,
    rounds: int,
    switchover: SwitchoverRequest | None = None,
) -> tuple[PairState, list[Action]]:
    actions: list[Action] = []
    for _ in range(rounds):
        decision = run_round(state, pair, policy, switchover)
        state = decision.state
        actions.extend(decision.actions)
    return state, actions


def bootstrap(policy: FailoverPolicy, prefix: str = "m") -> tuple[PairState, FakePair]:
    """A healthy pair: m-0 active at epoch 1, m-1 standby."""
    state, pair = PairState.initial(prefix), FakePair()
    state, _ = run_rounds(state, pair, policy, rounds=6)
    assert (state.active, state.standby, state.epoch) == (f"{prefix}-0", f"{prefix}-1", 1)
    return state, pair

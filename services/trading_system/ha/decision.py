"""The failover decision for one active/standby pair: observations in, actions out.

``decide`` is a pure function of the carried ``PairState``, one probe round's
``Observation`` and the ``FailoverPolicy``. It holds no Kubernetes and does no I/O, so
the operator and the local process supervisor share it and the tests drive it directly.

A failover is a sequence of persisted steps (see ``Phase``). Each round re-derives what
the current step still needs from the observations, so re-running the decision after a
crash at any point continues where it stopped; the epoch is raised only when a failover
starts, and that raise is part of the state the executor persists before acting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from trading_system.ha.actions import (
    Action,
    CreateStandby,
    Decision,
    DeleteMember,
    EventType,
    FenceMember,
    PromoteMember,
    RaiseEpoch,
    RecordEvent,
    SwitchService,
    Wait,
)
from trading_system.ha.model import (
    FailoverMode,
    FailoverPolicy,
    MemberObservation,
    Observation,
    Role,
    SwitchoverRequest,
)
from trading_system.ha.state import (
    FailoverKind,
    FailoverProgress,
    FailoverRecord,
    Health,
    Outcome,
    PairState,
    Phase,
    Reason,
)

_NO_STANDBY = (Reason.STANDBY_MISSING, "the pair has no standby")
_KIND_REASONS = {
    FailoverKind.ELECTION: Reason.ELECTING,
    FailoverKind.FAILOVER: Reason.FAILING_OVER,
    FailoverKind.SWITCHOVER: Reason.SWITCHING_OVER,
}


def decide(state: PairState, observation: Observation, policy: FailoverPolicy) -> Decision:
    """One probe round. Persist ``Decision.state`` before executing ``Decision.actions``."""
    plan = _Plan(state, observation, policy)
    _police_epochs(plan)
    _police_stray_actives(plan)
    _drive_failover(plan)
    if plan.state.failover is None:
        _steady(plan)
    _clean_up_fenced(plan)
    _report_health(plan)
    plan.finish_round()
    return Decision(plan.state, plan.ordered_actions())


@dataclass
class _Plan:
    """The state being rewritten during one round and the actions gathered so far."""

    state: PairState
    observation: Observation
    policy: FailoverPolicy
    actions: list[Action] = field(default_factory=list)
    blocked: tuple[Reason, str] | None = None

    @property
    def now(self) -> float:
        return self.observation.now

    def member(self, name: str) -> MemberObservation:
        return self.observation.member(name)

    def emit(self, *actions: Action) -> None:
        # Two rules may ask for the same fence in one round; the executor needs it once.
        for action in actions:
            if action not in self.actions:
                self.actions.append(action)

    def has_event(self, reason: Reason) -> bool:
        return any(isinstance(action, RecordEvent) and action.reason is reason for action in self.actions)

    def block(self, reason: Reason, message: str) -> None:
        self.blocked = (reason, message)
        self.emit(Wait(reason, message))

    def finish_round(self) -> None:
        last = self.state.last_observed_at
        seen = self.now if last is None else max(last, self.now)
        self.state = replace(self.state, last_observed_at=seen)

    def ordered_actions(self) -> tuple[Action, ...]:
        # An executor that runs actions in order must never fence or promote before the
        # new epoch is known to it.
        return tuple(sorted(self.actions, key=lambda action: not isinstance(action, RaiseEpoch)))


# --- members that must not be trusted -------------------------------------------------


def _police_epochs(plan: _Plan) -> None:
    """Only this decision raises the epoch, so a member ahead of it was promoted behind our back."""
    for member in plan.observation.members:
        if not member.exists or member.epoch is None or member.epoch <= plan.state.epoch:
            continue
        highest = max(plan.state.highest_seen_epoch, member.epoch)
        plan.state = replace(plan.state, highest_seen_epoch=highest)
        message = f"{member.name} reports epoch {member.epoch}, above the pair's epoch {plan.state.epoch}"
        _fence(plan, member.name, Reason.EPOCH_CONFLICT, message)


def _police_stray_actives(plan: _Plan) -> None:
    """A member claiming ``active`` that we did not promote (e.g. back from a partition) is fenced."""
    allowed = {plan.state.active, _target(plan.state)}
    for member in plan.observation.members:
        if member.exists and member.role is Role.ACTIVE and member.name not in allowed:
            message = f"{member.name} claims to be active but the pair's active is {plan.state.active}"
            _fence(plan, member.name, Reason.STRAY_ACTIVE, message)


def _fence(plan: _Plan, name: str, reason: Reason, message: str) -> None:
    if name in plan.state.fenced:
        return
    standby = None if plan.state.standby == name else plan.state.standby
    plan.state = replace(plan.state, fenced=(*plan.state.fenced, name), standby=standby)
    plan.emit(RecordEvent(reason, message, EventType.WARNING))


def _clean_up_fenced(plan: _Plan) -> None:
    """Keep removing fenced members until they are gone, then forget them."""
    remaining = tuple(name for name in plan.state.fenced if plan.member(name).exists)
    for name in remaining:
        plan.emit(FenceMember(name), DeleteMember(name))
    plan.state = replace(plan.state, fenced=remaining)


def _target(state: PairState) -> str | None:
    return None if state.failover is None else state.failover.target


# --- steady state ---------------------------------------------------------------------


def _steady(plan: _Plan) -> None:
    if _start_switchover(plan):
        return
    if plan.state.active is None:
        if _start_election(plan):
            return
    else:
        _count_probe(plan)
        if _start_automatic_failover(plan):
            return
    _ensure_standby(plan)


def _count_probe(plan: _Plan) -> None:
    last = plan.state.last_observed_at
    if last is not None and plan.now <= last:
        return  # the same round replayed after a crash must not count twice
    failures = 0 if _active_healthy(plan) else plan.state.failures + 1
    if _active_gone(plan):
        # The threshold debounces flaky probes; a member that no longer exists (its pod
        # deleted, its process reaped) is not coming back, and waiting it out only
        # prolongs the outage.
        failures = max(failures, plan.policy.failure_threshold)
    plan.state = replace(plan.state, failures=failures)


def _active_gone(plan: _Plan) -> bool:
    name = plan.state.active
    return name is not None and not plan.member(name).exists


def _active_healthy(plan: _Plan) -> bool:
    name = plan.state.active
    if name is None or name in plan.state.fenced:
        return False
    member = plan.member(name)
    return member.probes_ok and member.role is Role.ACTIVE and member.epoch == plan.state.epoch


def _standby_problem(plan: _Plan) -> tuple[Reason, str] | None:
    """Why the standby cannot be promoted right now, or None if it can."""
    name = plan.state.standby
    if name is None:
        return _NO_STANDBY
    member = plan.member(name)
    if not member.exists:
        return Reason.STANDBY_MISSING, f"standby {name} does not exist"
    if not (member.probes_ok and member.role is Role.STANDBY):
        return Reason.STANDBY_UNHEALTHY, f"standby {name} is not healthy ({_describe(member)})"
    if member.lag is None or member.lag > plan.policy.max_promotion_lag:
        limit = plan.policy.max_promotion_lag
        return Reason.STANDBY_LAGGING, f"standby {name} lags {member.lag} entries (limit {limit})"
    return None


def _describe(member: MemberObservation) -> str:
    return (
        f"ready={member.ready}, healthz={member.healthz_ok}, readyz={member.readyz_ok}, "
        f"role={member.role}, epoch={member.epoch}"
    )


def _start_election(plan: _Plan) -> bool:
    """With no active at all nobody is deposed, so an election needs neither threshold nor automatic mode."""
    standby = plan.state.standby
    if standby is None or _standby_problem(plan) is not None:
        return False
    _start_failover(plan, FailoverKind.ELECTION, standby, "the pair has no active member")
    return True


def _start_automatic_failover(plan: _Plan) -> bool:
    state = plan.state
    if state.failures < plan.policy.failure_threshold:
        return False
    blocker = _failover_blocker(plan)
    if blocker is not None or state.standby is None:  # a blocker is None only with a standby
        plan.block(*(blocker or _NO_STANDBY))
        return False
    reason = (
        f"active {state.active} no longer exists"
        if _active_gone(plan)
        else f"active {state.active} failed {state.failures} consecutive probe rounds"
    )
    _start_failover(plan, FailoverKind.FAILOVER, state.standby, reason)
    return True


def _failover_blocker(plan: _Plan) -> tuple[Reason, str] | None:
    failed = f"active {plan.state.active} failed {plan.state.failures} consecutive probe rounds"
    problem = _standby_problem(plan)
    if problem is not None:
        return problem[0], f"{failed}; no promotion: {problem[1]}"
    if plan.policy.mode is FailoverMode.MANUAL:
        return Reason.MANUAL_FAILOVER_REQUIRED, f"{failed}; failover mode is manual: request a switchover"
    remaining = _cooldown_remaining(plan)
    if remaining > 0:
        return Reason.COOLDOWN, f"{failed}; waiting {remaining:.0f}s more since the last failover"
    return None


def _cooldown_remaining(plan: _Plan) -> float:
    last = plan.state.last_failover_at
    if last is None:
        return 0.0
    return max(0.0, plan.policy.cooldown_seconds - (plan.now - last))


def _start_switchover(plan: _Plan) -> bool:
    request = plan.observation.switchover
    if request is None or request.request_id == plan.state.handled_switchover:
        return False
    target = request.target or plan.state.standby
    if target is not None and target == plan.state.active:
        _settle_switchover(plan, request, Reason.SWITCHOVER_IGNORED, f"{target} is already active")
        return False
    if target is not None and target != plan.state.standby:
        why = f"{target} is not the standby ({plan.state.standby})"
        _settle_switchover(plan, request, Reason.SWITCHOVER_REJECTED, why)
        return False
    problem = _standby_problem(plan)
    if target is None or problem is not None:
        reason, why = problem or _NO_STANDBY
        plan.block(reason, f"switchover {request.request_id} waits: {why}")
        return False
    # Marked handled in the same state as the raise, so a resumed round cannot start it twice.
    plan.state = replace(plan.state, handled_switchover=request.request_id)
    _start_failover(plan, FailoverKind.SWITCHOVER, target, f"switchover {request.request_id} requested")
    return True


def _settle_switchover(plan: _Plan, request: SwitchoverRequest, reason: Reason, why: str) -> None:
    plan.state = replace(plan.state, handled_switchover=request.request_id)
    kind = EventType.WARNING if reason is Reason.SWITCHOVER_REJECTED else EventType.NORMAL
    plan.emit(RecordEvent(reason, f"switchover {request.request_id}: {why}", kind))


def _ensure_standby(plan: _Plan) -> None:
    name = _standby_name(plan)
    if not plan.member(name).exists:
        plan.emit(CreateStandby(name))


def _standby_name(plan: _Plan) -> str:
    """The standby's name, allocating a fresh one if there is none."""
    if plan.state.standby is not None:
        return plan.state.standby
    index = plan.state.next_index
    # Never reuse a name still around: it would adopt or delete the wrong member.
    while (name := f"{plan.state.prefix}-{index}") in plan.state.fenced or plan.member(name).exists:
        index += 1
    plan.state = replace(plan.state, standby=name, next_index=index + 1)
    return name


# --- the failover sequence ------------------------------------------------------------


def _start_failover(plan: _Plan, kind: FailoverKind, target: str, reason: str) -> None:
    state = plan.state
    # Past any epoch a member has reported, so the promoted member's fencing write wins.
    epoch = max(state.epoch, state.highest_seen_epoch) + 1
    source = state.active
    fenced = state.fenced if source is None or source in state.fenced else (*state.fenced, source)
    progress = FailoverProgress(
        kind=kind,
        source=source,
        target=target,
        epoch=epoch,
        reason=reason,
        started_at=plan.now,
        step=Phase.EPOCH_RAISED,
        step_started_at=plan.now,
    )
    plan.state = replace(
        state, epoch=epoch, active=None, standby=None, fenced=fenced, failures=0, failover=progress
    )
    message = f"{kind} from {source or 'no member'} to {target} at epoch {epoch}: {reason}"
    event_type = EventType.WARNING if kind is FailoverKind.FAILOVER else EventType.NORMAL
    plan.emit(RaiseEpoch(epoch), RecordEvent(Reason.FAILOVER_STARTED, message, event_type))
    _drive_failover(plan)


def _drive_failover(plan: _Plan) -> None:
    # Each step either advances, and the next one runs in the same round on the same
    # observations, or emits what it is waiting for and ends the round.
    while (progress := plan.state.failover) is not None:
        if _target_lost(plan, progress):
            _abandon(plan, progress, f"{progress.target} disappeared or was fenced")
            return
        if not _STEPS[progress.step](plan, progress):
            return


def _target_lost(plan: _Plan, progress: FailoverProgress) -> bool:
    return progress.target in plan.state.fenced or not plan.member(progress.target).exists


def _step_fence_old(plan: _Plan, progress: FailoverProgress) -> bool:
    source = progress.source
    if source is None or _out_of_service(plan.member(source)):
        return _advance(plan, progress, Phase.OLD_FENCED)
    if _step_timed_out(plan, progress, plan.policy.fence_timeout_seconds):
        # The new epoch in PostgreSQL is the real fence; an unreachable node may keep the
        # pod object forever, and waiting on it would only prolong the outage.
        message = f"{source} still exists after fencing; relying on the epoch {progress.epoch} fence"
        plan.emit(RecordEvent(Reason.FENCE_TIMEOUT, message, EventType.WARNING))
        return _advance(plan, progress, Phase.OLD_FENCED)
    plan.emit(FenceMember(source), DeleteMember(source))
    return False


def _out_of_service(member: MemberObservation) -> bool:
    return not member.exists or member.role is Role.FENCED


def _step_promote(plan: _Plan, progress: FailoverProgress) -> bool:
    target = plan.member(progress.target)
    if target.role is Role.ACTIVE and target.epoch == progress.epoch:
        plan.state = replace(plan.state, active=progress.target)
        return _advance(plan, progress, Phase.PROMOTED)
    if _step_timed_out(plan, progress, plan.policy.promote_timeout_seconds):
        timeout = plan.policy.promote_timeout_seconds
        _abandon(plan, progress, f"{progress.target} did not confirm its promotion within {timeout:.0f}s")
        return True
    plan.emit(PromoteMember(progress.target, progress.epoch))
    return False


def _step_switch_service(plan: _Plan, progress: FailoverProgress) -> bool:
    if plan.observation.service_target == progress.target:
        return _advance(plan, progress, Phase.SERVICE_SWITCHED)
    plan.emit(SwitchService(progress.target))
    return False


def _step_replace_standby(plan: _Plan, progress: FailoverProgress) -> bool:
    name = _standby_name(plan)
    if plan.member(name).exists:
        _complete(plan, progress)
        return True
    plan.emit(CreateStandby(name))
    return False


_STEPS: dict[Phase, Callable[[_Plan, FailoverProgress], bool]] = {
    Phase.EPOCH_RAISED: _step_fence_old,
    Phase.OLD_FENCED: _step_promote,
    Phase.PROMOTED: _step_switch_service,
    Phase.SERVICE_SWITCHED: _step_replace_standby,
}


def _advance(plan: _Plan, progress: FailoverProgress, step: Phase) -> bool:
    advanced = replace(progress, step=step, step_started_at=plan.now)
    plan.state = replace(plan.state, failover=advanced)
    return True


def _step_timed_out(plan: _Plan, progress: FailoverProgress, timeout: float) -> bool:
    return plan.now - progress.step_started_at >= timeout


def _complete(plan: _Plan, progress: FailoverProgress) -> None:
    state = plan.state
    # An election deposed nobody, so it cannot be the first half of a ping-pong.
    deposed = progress.source is not None
    plan.state = replace(
        state,
        failover=None,
        failures=0,
        last_failover_at=plan.now if deposed else state.last_failover_at,
        failover_count=state.failover_count + 1,
        history=_with_record(plan, progress, Outcome.COMPLETED),
    )
    took = plan.now - progress.started_at
    message = f"{progress.kind} to {progress.target} completed at epoch {progress.epoch} in {took:.1f}s"
    plan.emit(RecordEvent(Reason.FAILOVER_COMPLETED, message))


def _abandon(plan: _Plan, progress: FailoverProgress, why: str) -> None:
    """Give up on this target; a later election promotes another member under a fresh epoch.

    Reusing this epoch for another member is unsafe: the target may have written it to
    the fencing row before it vanished and could still be running somewhere.
    """
    state = plan.state
    fenced = state.fenced if progress.target in state.fenced else (*state.fenced, progress.target)
    plan.state = replace(
        state,
        failover=None,
        active=None,
        fenced=fenced,
        history=_with_record(plan, progress, Outcome.ABANDONED),
    )
    message = f"{progress.kind} to {progress.target} at epoch {progress.epoch} abandoned: {why}"
    plan.emit(RecordEvent(Reason.FAILOVER_ABANDONED, message, EventType.WARNING))


def _with_record(plan: _Plan, progress: FailoverProgress, outcome: Outcome) -> tuple[FailoverRecord, ...]:
    record = progress.finished(plan.now, outcome)
    return (*plan.state.history, record)[-plan.policy.history_limit :]


# --- reporting ------------------------------------------------------------------------


def _report_health(plan: _Plan) -> None:
    """Store the pair's health; tell a human only when it changes, so replays stay quiet."""
    health, reason, message = _assess(plan)
    state = plan.state
    changed = (health, reason) != (state.health, state.reason)
    # A failover announces itself with FailoverStarted, and a fence with its own event;
    # a second event would only repeat them.
    if changed and health is not Health.FAILING_OVER and not plan.has_event(reason):
        event_type = EventType.NORMAL if health is Health.HEALTHY else EventType.WARNING
        plan.emit(RecordEvent(reason, message, event_type))
    plan.state = replace(state, health=health, reason=reason, message=message)


def _assess(plan: _Plan) -> tuple[Health, Reason, str]:
    state = plan.state
    if state.failover is not None:
        progress = state.failover
        message = f"{progress.kind} to {progress.target} at epoch {progress.epoch}: {progress.step}"
        return Health.FAILING_OVER, _KIND_REASONS[progress.kind], message
    if state.highest_seen_epoch > state.epoch:
        message = (
            f"a member reported epoch {state.highest_seen_epoch}, above the pair's epoch {state.epoch}; "
            "the next failover or switchover raises the epoch past it"
        )
        return Health.DEGRADED, Reason.EPOCH_CONFLICT, message
    if plan.blocked is not None:
        return Health.DEGRADED, *plan.blocked
    if state.active is None:
        problem = _standby_problem(plan)
        detail = f"; {problem[1]}" if problem else ""
        return Health.DEGRADED, Reason.NO_ACTIVE, f"no active member{detail}"
    problem = _standby_problem(plan)
    if problem is not None:
        return Health.DEGRADED, *problem
    return Health.HEALTHY, Reason.HEALTHY, _healthy_message(state, plan.policy)


def _healthy_message(state: PairState, policy: FailoverPolicy) -> str:
    message = f"active {state.active}, standby {state.standby}, epoch {state.epoch}"
    if state.failures:
        message += f"; active failed {state.failures} of {policy.failure_threshold} probe rounds"
    return message

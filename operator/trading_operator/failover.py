"""Executes the failover decision for one pair against Kubernetes and the members' HTTP APIs.

The policy is ``trading_system.ha.decide``; this module only observes (pods and probes),
persists the decision's state, and carries out its actions in order. The executor contract
from ``trading_system.ha.actions`` is kept: the state is durably written (a conditional
status patch) before any action runs, actions stop at the first failure, and every action
is idempotent, so an operator killed at any point resumes from the status it left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from trading_operator import api, metrics, probes
from trading_operator.k8s_io import ApiError, Kube
from trading_operator.manifests import pairs as pair_manifests
from trading_operator.manifests.common import Names
from trading_operator.spec import FailoverSpec, Owner, TradingSystemSpec
from trading_system.ha import (
    Action,
    CreateStandby,
    Decision,
    DeleteMember,
    FailoverMode,
    FailoverPolicy,
    FenceMember,
    Health,
    MemberObservation,
    Observation,
    PairState,
    PromoteMember,
    RaiseEpoch,
    Reason,
    RecordEvent,
    SwitchoverRequest,
    SwitchService,
    Wait,
    decide,
    significant,
)

logger = logging.getLogger(__name__)

# A member is deleted only once fenced: the raised epoch already refuses its writes, so it has
# nothing left to finish, and a failover waits for it to be gone (up to fenceTimeoutSeconds).
# A short grace keeps "the pod is gone" meaning "its containers stopped" (the kubelet still
# confirms) without waiting out the pod's own grace period behind, say, a cut network.
FENCED_MEMBER_GRACE_SECONDS = 1

Pod = Mapping[str, Any]
PersistState = Callable[[str, PairState], Awaitable[bool]]
PostEvent = Callable[[str, str, str], None]


def policy_of(spec: FailoverSpec) -> FailoverPolicy:
    return FailoverPolicy(
        mode=FailoverMode(spec.mode),
        failure_threshold=spec.failure_threshold,
        max_promotion_lag=spec.max_promotion_lag,
        cooldown_seconds=float(spec.cooldown_seconds),
        fence_timeout_seconds=float(spec.fence_timeout_seconds),
        promote_timeout_seconds=float(spec.promote_timeout_seconds),
        history_limit=spec.history_limit,
    )


def pod_ready(pod: Pod) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_role(pod: Pod) -> str | None:
    role = (pod.get("metadata", {}).get("labels") or {}).get(api.LABEL_ROLE)
    return None if role is None else str(role)


def spec_hash(pod: Pod) -> str | None:
    annotations = pod.get("metadata", {}).get("annotations") or {}
    value = annotations.get(api.ANNOTATION_SPEC_HASH)
    return None if value is None else str(value)


def service_target(pods: Mapping[str, Pod]) -> str | None:
    """The member the role=active selector matches, if exactly one."""
    active = [name for name, pod in pods.items() if pod_role(pod) == api.ROLE_ACTIVE]
    return active[0] if len(active) == 1 else None


def switchover_request(annotations: Mapping[str, str], pair: str) -> SwitchoverRequest | None:
    request_id = annotations.get(f"{api.ANNOTATION_SWITCHOVER_PREFIX}{pair}")
    if not request_id:
        return None
    target = annotations.get(f"{api.ANNOTATION_SWITCHOVER_PREFIX}{pair}-target") or None
    return SwitchoverRequest(request_id=request_id, target=target)


@dataclass
class RoundResult:
    decision: Decision
    executed: int
    failed: str | None = None
    conflict: bool = False  # the persisted state moved under us; nothing was executed


class PairController:
    """One pair of one TradingSystem."""

    def __init__(self, owner: Owner, pair: str, state: PairState) -> None:
        self.owner = owner
        self.pair = pair
        self.persisted = state
        self.state = state
        self.next_round = 0.0
        self.admin_token: str | None = None
        self._labels = [owner.namespace, owner.name, pair]

    def due(self, now: float) -> bool:
        return now >= self.next_round

    async def observe(
        self,
        session: aiohttp.ClientSession,
        pods: Mapping[str, Pod],
        seconds: float,
        switchover: SwitchoverRequest | None,
    ) -> Observation:
        endpoints = [
            probes.Endpoint(name, (pod.get("status") or {}).get("podIP") or None, pod_ready(pod))
            for name, pod in sorted(pods.items())
        ]
        members: list[MemberObservation] = list(
            await asyncio.gather(*(probes.probe_member(session, e, seconds) for e in endpoints))
        )
        return Observation(
            now=time.time(),
            members=tuple(members),
            service_target=service_target(pods),
            switchover=switchover,
        )

    async def round(
        self,
        *,
        kube: Kube,
        session: aiohttp.ClientSession,
        spec: TradingSystemSpec,
        pods: Mapping[str, Pod],
        annotations: Mapping[str, str],
        paused: bool,
        persist: PersistState,
        post_event: PostEvent,
    ) -> RoundResult:
        failover = spec.failover
        self.next_round = time.monotonic() + failover.probe_period_seconds
        request = switchover_request(annotations, self.pair)
        if request is None or request.request_id == self.state.handled_switchover:
            request = None if paused else await self._rollout(kube, spec, pods) or request
        observation = await self.observe(session, pods, failover.probe_timeout_seconds, request)
        policy = policy_of(failover)
        if paused:
            # A dry run in manual mode: report what the decision sees, change nothing. The
            # failure count is kept so that unpausing acts on a failure that lasted.
            decision = decide(self.state, observation, dataclasses.replace(policy, mode=FailoverMode.MANUAL))
            seen = decision.state
            health, message = seen.health, seen.message
            if seen.failover is not None and self.state.failover is None:
                health, message = Health.DEGRADED, f"would start: {message}"
            self.state = dataclasses.replace(
                self.state,
                health=health,
                reason=seen.reason,
                message=f"paused; {message}",
                failures=seen.failures,
                last_observed_at=seen.last_observed_at,
            )
            return RoundResult(decision, 0)
        decision = decide(self.state, observation, policy)
        actionable = [a for a in decision.actions if not isinstance(a, Wait)]
        if actionable or significant(decision.state) != significant(self.persisted):
            if not await persist(self.pair, decision.state):
                # Someone else moved the state (another operator replica, a restore);
                # the caller reloads it and the next round decides afresh.
                return RoundResult(decision, 0, failed="state changed concurrently", conflict=True)
            self.persisted = decision.state
        previous = self.state
        self.state = decision.state
        self._record_metrics(previous, decision.state)
        executed = 0
        for action in decision.actions:
            try:
                ok = await self._execute(
                    action, kube=kube, session=session, spec=spec, pods=pods, post_event=post_event
                )
            except ApiError as exc:
                ok = False
                logger.warning(
                    "%s/%s %s: %s failed: %s", self.owner.namespace, self.owner.name, self.pair, action, exc
                )
            if not ok:
                metrics.ERRORS.labels(self.owner.namespace, self.owner.name, f"failover-{self.pair}").inc()
                # Stop at the first failure (executor contract); the next round retries.
                self.next_round = min(self.next_round, time.monotonic() + 1.0)
                return RoundResult(decision, executed, failed=type(action).__name__)
            executed += 1
        if decision.state.failover is not None:
            # A failover in progress re-checks quickly instead of waiting a probe period.
            self.next_round = min(self.next_round, time.monotonic() + 0.2)
        return RoundResult(decision, executed)

    async def _rollout(
        self, kube: Kube, spec: TradingSystemSpec, pods: Mapping[str, Pod]
    ) -> SwitchoverRequest | None:
        """Roll members onto a changed pod spec: standby first, then a switchover to it.

        Pods are immutable in the fields that matter (image, resources, env), so a member is
        replaced, never edited; the active is only replaced through a switchover, so the pair
        keeps serving throughout.
        """
        state = self.state
        if state.failover is not None or state.health is not Health.HEALTHY:
            return None
        wanted = pair_manifests.member_spec_hash(self.owner, spec, self.pair)
        standby = pods.get(state.standby or "")
        active = pods.get(state.active or "")
        if standby is None or active is None:
            return None
        if spec_hash(standby) != wanted:
            logger.info(
                "%s/%s %s: replacing standby %s with the new spec",
                *self._labels[:2],
                self.pair,
                state.standby,
            )
            uid = standby["metadata"].get("uid")
            await asyncio.to_thread(
                kube.delete, "v1", "Pod", self.owner.namespace, str(state.standby), uid=uid
            )
            return None
        if spec_hash(active) != wanted:
            return SwitchoverRequest(request_id=f"rollout-{wanted}", target=state.standby)
        return None

    def reload(self, state: PairState) -> None:
        self.persisted = state
        self.state = state

    def _record_metrics(self, previous: PairState, current: PairState) -> None:
        metrics.EPOCH.labels(*self._labels).set(current.epoch)
        metrics.PAIR_HEALTHY.labels(*self._labels).set(1 if current.health is Health.HEALTHY else 0)
        metrics.PROBE_FAILURES.labels(*self._labels).set(current.failures)
        for record in (r for r in current.history if r not in previous.history):
            metrics.FAILOVERS.labels(*self._labels, record.kind.value, record.outcome.value).inc()
            metrics.FAILOVER_SECONDS.labels(self.pair, record.kind.value).observe(
                record.ended_at - record.started_at
            )

    async def _token(self, kube: Kube) -> str | None:
        if self.admin_token is None:
            names = Names(self.owner.name)
            self.admin_token = await asyncio.to_thread(
                kube.read_secret_value, self.owner.namespace, names.admin_token, "token"
            )
        return self.admin_token

    async def _set_role(self, kube: Kube, pods: Mapping[str, Pod], name: str, role: str) -> None:
        if name not in pods or pod_role(pods[name]) == role:
            return
        patch = {"metadata": {"labels": {api.LABEL_ROLE: role}}}
        try:
            await asyncio.to_thread(kube.merge_patch, "v1", "Pod", self.owner.namespace, name, patch)
        except ApiError as exc:
            if not exc.not_found:
                raise

    async def _execute(
        self,
        action: Action,
        *,
        kube: Kube,
        session: aiohttp.ClientSession,
        spec: TradingSystemSpec,
        pods: Mapping[str, Pod],
        post_event: PostEvent,
    ) -> bool:
        ns = self.owner.namespace
        timeout = float(spec.failover.probe_timeout_seconds)
        match action:
            case RaiseEpoch(epoch=epoch):
                logger.info("%s/%s %s: epoch raised to %d", ns, self.owner.name, self.pair, epoch)
                return True
            case FenceMember(name=name):
                await self._set_role(kube, pods, name, api.ROLE_FENCED)
                ip = (pods.get(name, {}).get("status") or {}).get("podIP")
                token = await self._token(kube)
                if ip and token:
                    # Courtesy only: the raised epoch in PostgreSQL is what stops its writes.
                    await probes.admin_call(
                        session, ip, "demote", token, {"epoch": self.state.epoch}, timeout
                    )
                return True
            case DeleteMember(name=name):
                uid = pods.get(name, {}).get("metadata", {}).get("uid")
                await asyncio.to_thread(
                    kube.delete, "v1", "Pod", ns, name, uid=uid, grace_period=FENCED_MEMBER_GRACE_SECONDS
                )
                return True
            case PromoteMember(name=name, epoch=epoch):
                return await self._promote(kube, session, pods, name, epoch, timeout)
            case SwitchService(name=name):
                for other, pod in pods.items():
                    if other != name and pod_role(pod) == api.ROLE_ACTIVE:
                        await self._set_role(kube, pods, other, api.ROLE_FENCED)
                await self._set_role(kube, pods, name, api.ROLE_ACTIVE)
                return True
            case CreateStandby(name=name):
                pod = pair_manifests.member_pod(self.owner, spec, self.pair, name, api.ROLE_STANDBY)
                await asyncio.to_thread(kube.create, pod)
                return True
            case RecordEvent(reason=reason, message=message, type=event_type):
                level = logging.WARNING if event_type.value == "Warning" else logging.INFO
                logger.log(level, "%s/%s %s: %s: %s", ns, self.owner.name, self.pair, reason.value, message)
                post_event(event_type.value, reason.value, f"{self.pair}: {message}")
                return True
            case Wait(reason=reason, message=message):
                if reason is not Reason.HEALTHY:
                    logger.debug("%s/%s %s waits: %s", ns, self.owner.name, self.pair, message)
                return True
        raise AssertionError(f"unknown action {action!r}")

    async def _promote(
        self,
        kube: Kube,
        session: aiohttp.ClientSession,
        pods: Mapping[str, Pod],
        name: str,
        epoch: int,
        seconds: float,
    ) -> bool:
        ip = (pods.get(name, {}).get("status") or {}).get("podIP")
        token = await self._token(kube)
        if not ip or not token:
            logger.warning("cannot promote %s yet: %s", name, "no pod IP" if not ip else "no admin token")
            return False
        ok, detail = await probes.admin_call(session, ip, "promote", token, {"epoch": epoch}, seconds)
        if not ok:
            logger.warning("promote %s at epoch %d refused: %s", name, epoch, detail)
            if "401" in detail or "403" in detail:
                self.admin_token = None  # re-read a rotated token next time
        return ok

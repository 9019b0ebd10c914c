"""Reconciles one TradingSystem: children, RabbitMQ health, the two pairs and the status.

One ``TradingSystemController`` lives per resource (in kopf's per-object memo) and one
loop drives it, so children, failovers and status never race each other inside a process.
What the children look like comes from kopf indexes (watch-fed, in memory), which is what
makes a round that finds nothing to do free: no reads and no writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from trading_operator import api, drift, metrics, probes, status
from trading_operator.failover import PairController, PostEvent, pod_ready
from trading_operator.k8s_io import ApiError, Kube
from trading_operator.manifests import desired_children
from trading_operator.manifests import rabbitmq as rabbit_manifests
from trading_operator.manifests.common import Names
from trading_operator.manifests.config import generated_secrets
from trading_operator.spec import Owner, TradingSystemSpec
from trading_system.ha import PairState

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
ChildKey = tuple[str, str]  # (kind, name)

# Kinds the reconciler deletes when the spec no longer asks for them. Pods (the failover
# controller's), Secrets (never rewritten) and PVCs (data) are deliberately absent.
PRUNABLE = frozenset(
    {
        "ConfigMap",
        "Service",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "StatefulSet",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
)
RABBITMQ_CHECK_SECONDS = 10.0
EXTERNAL_SECRET_CHECK_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Operator-wide knobs (command line), not per resource."""

    resync_seconds: float = 10.0
    management_timeout: float = 2.0


def next_rabbitmq_replicas(desired: int, current: int | None, *, all_ready: bool, quorum_ok: bool) -> int:
    """Scale up at once; scale down one node at a time and only while no queue would lose quorum."""
    if current is None or desired >= current:
        return desired
    return current - 1 if all_ready and quorum_ok else current


def is_paused(spec: TradingSystemSpec, annotations: Mapping[str, str]) -> bool:
    return spec.paused or annotations.get(api.ANNOTATION_PAUSED, "").lower() in ("true", "1", "yes")


@dataclass
class Children:
    """This resource's children as kopf's indexes last saw them."""

    objects: dict[ChildKey, Obj] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> Obj | None:
        return self.objects.get((kind, name))

    def of_kind(self, kind: str) -> dict[str, Obj]:
        return {name: obj for (k, name), obj in self.objects.items() if k == kind}

    def pods(self, component: str) -> dict[str, Obj]:
        return {
            name: pod
            for name, pod in self.of_kind("Pod").items()
            if (pod["metadata"].get("labels") or {}).get(api.LABEL_COMPONENT) == component
        }


class StateConflict(Exception):
    """Another writer changed a pair's persisted decision state."""


class TradingSystemController:
    def __init__(self, kube: Kube, session: aiohttp.ClientSession, settings: Settings, owner: Owner) -> None:
        self.kube = kube
        self.session = session
        self.settings = settings
        self.owner = owner
        self.names = Names(owner.name)
        self.pairs: dict[str, PairController] = {}
        # (kind, name) -> resourceVersion the index showed when we applied; an index entry
        # still at that version is stale, not drift, so it is not applied again.
        self.applied_over: dict[ChildKey, str | None] = {}
        self.rabbitmq_health = probes.RabbitMQHealth()
        self.next_rabbitmq_check = 0.0
        self.external_secret_ok: bool | None = None
        self.next_external_check = 0.0
        self.post_event: PostEvent = lambda _type, _reason, _message: None
        self._desired_cache: tuple[tuple[TradingSystemSpec, int], list[Obj]] | None = None

    # -- the round ---------------------------------------------------------------------

    async def tick(self, body: Mapping[str, Any], children: Children, post_event: PostEvent) -> None:
        started = time.perf_counter()
        outcome = "ok"
        try:
            await self._tick(body, children, post_event)
        except StateConflict as exc:
            outcome = "conflict"
            logger.info("%s: %s", self._id, exc)
        except Exception:
            outcome = "error"
            metrics.ERRORS.labels(self.owner.namespace, self.owner.name, "reconcile").inc()
            raise
        finally:
            metrics.RECONCILES.labels(self.owner.namespace, self.owner.name, outcome).inc()
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    def seconds_to_next_round(self, longest: float) -> float:
        """How long the loop may sleep: a pair mid-failover wants its next round sooner."""
        now = time.monotonic()
        due = [c.next_round - now for c in self.pairs.values()]
        return max(0.0, min([longest, *due]))

    @property
    def _id(self) -> str:
        return f"{self.owner.namespace}/{self.owner.name}"

    async def _tick(self, body: Mapping[str, Any], children: Children, post_event: PostEvent) -> None:
        self.post_event = post_event
        meta = body["metadata"]
        spec = TradingSystemSpec.parse(body.get("spec") or {})
        annotations: Mapping[str, str] = meta.get("annotations") or {}
        paused = is_paused(spec, annotations)
        self._load_pairs(body.get("status"))
        reconcile_error: str | None = None
        if not paused:
            try:
                await self._ensure_secrets(spec, children)
                await self._apply_children(spec, children)
            except ApiError as exc:
                reconcile_error = exc.message
                metrics.ERRORS.labels(self.owner.namespace, self.owner.name, "apply").inc()
                logger.warning("%s: reconcile failed: %s", self._id, exc)
        rabbit = await self._observe_rabbitmq(spec, children)
        await self._check_external_secret(spec)
        for pair, controller in self.pairs.items():
            if controller.due(time.monotonic()):
                result = await controller.round(
                    kube=self.kube,
                    session=self.session,
                    spec=spec,
                    pods=children.pods(pair),
                    annotations=annotations,
                    paused=paused,
                    persist=functools.partial(
                        self._persist_pair, self._observed(body, spec, children, rabbit, paused, None)
                    ),
                    post_event=post_event,
                )
                if result.conflict:
                    raise StateConflict(f"{pair}: {result.failed}")
        observed = self._observed(body, spec, children, rabbit, paused, reconcile_error)
        new_status = status.compute_status(observed, body.get("status"))
        await self._write_status(new_status, body.get("status"))

    # -- children ----------------------------------------------------------------------

    async def _ensure_secrets(self, spec: TradingSystemSpec, children: Children) -> None:
        for secret in generated_secrets(self.owner, spec):
            if children.get("Secret", secret["metadata"]["name"]) is None:
                created = await asyncio.to_thread(self.kube.create, secret)
                if created is not None:
                    logger.info("%s: created Secret %s", self._id, secret["metadata"]["name"])

    def _rabbitmq_target(self, spec: TradingSystemSpec, children: Children) -> int:
        sts = children.get("StatefulSet", self.names.rabbitmq)
        current = None if sts is None else int((sts.get("spec") or {}).get("replicas", 0))
        sts_status = (sts or {}).get("status") or {}
        all_ready = current is not None and int(sts_status.get("readyReplicas", 0)) >= current
        health = self.rabbitmq_health
        quorum_ok = not spec.rabbitmq.management_checks or (
            health.error is None and health.quorum_status == "ok"
        )
        return next_rabbitmq_replicas(
            spec.rabbitmq.replicas, current, all_ready=all_ready, quorum_ok=quorum_ok
        )

    def _desired(self, spec: TradingSystemSpec, children: Children) -> list[Obj]:
        # Building and hashing every manifest is most of a quiet round's CPU; the result
        # only changes with the spec or the RabbitMQ step, so it is kept until they do.
        key = (spec, self._rabbitmq_target(spec, children))
        if self._desired_cache is None or self._desired_cache[0] != key:
            manifests = desired_children(self.owner, spec, rabbitmq_replicas=key[1])
            self._desired_cache = (key, [drift.with_applied_hash(m) for m in manifests])
        return self._desired_cache[1]

    async def _apply_children(self, spec: TradingSystemSpec, children: Children) -> None:
        desired = self._desired(spec, children)
        for manifest in desired:
            key = drift.key(manifest)
            actual = children.get(*key)
            actual_rv = None if actual is None else actual["metadata"].get("resourceVersion")
            if key in self.applied_over and self.applied_over[key] == actual_rv:
                continue  # the index has not caught up with our last apply yet
            if not drift.needs_apply(manifest, actual):
                self.applied_over.pop(key, None)
                continue
            await asyncio.to_thread(self.kube.apply, manifest)
            self.applied_over[key] = actual_rv
            metrics.APPLIES.labels(self.owner.namespace, self.owner.name, manifest["kind"]).inc()
            logger.info(
                "%s: applied %s/%s (%s)", self._id, key[0], key[1], "created" if actual is None else "drift"
            )
        wanted = {drift.key(m) for m in desired}
        for (kind, name), obj in children.objects.items():
            if kind in PRUNABLE and (kind, name) not in wanted and self._owned(obj):
                api_version = obj["apiVersion"]
                await asyncio.to_thread(self.kube.delete, api_version, kind, self.owner.namespace, name)
                logger.info("%s: pruned %s/%s", self._id, kind, name)

    def _owned(self, obj: Mapping[str, Any]) -> bool:
        refs = obj["metadata"].get("ownerReferences") or []
        return any(ref.get("uid") == self.owner.uid and ref.get("controller") for ref in refs)

    # -- observations ------------------------------------------------------------------

    async def _observe_rabbitmq(
        self, spec: TradingSystemSpec, children: Children
    ) -> status.RabbitMQObservation:
        sts = children.get("StatefulSet", self.names.rabbitmq)
        sts_status = (sts or {}).get("status") or {}
        replicas = int(sts_status.get("replicas", 0))
        ready = int(sts_status.get("readyReplicas", 0))
        pods = children.pods("rabbitmq")
        ips = [
            p["status"]["podIP"]
            for _, p in sorted(pods.items())
            if pod_ready(p) and (p.get("status") or {}).get("podIP")
        ]
        checks = spec.rabbitmq.management_checks
        if checks and ips and time.monotonic() >= self.next_rabbitmq_check:
            self.next_rabbitmq_check = time.monotonic() + RABBITMQ_CHECK_SECONDS
            user = await asyncio.to_thread(
                self.kube.read_secret_value, self.owner.namespace, self.names.rabbitmq_admin, "username"
            )
            password = await asyncio.to_thread(
                self.kube.read_secret_value, self.owner.namespace, self.names.rabbitmq_admin, "password"
            )
            if user and password:
                self.rabbitmq_health = await probes.rabbitmq_health(
                    self.session, ips, user, password, self.settings.management_timeout
                )
        health = self.rabbitmq_health
        return status.RabbitMQObservation(
            desired=spec.rabbitmq.replicas,
            replicas=replicas,
            ready_replicas=ready,
            management_checked=checks and bool(ips),
            running_nodes=health.running_nodes,
            alarms=health.alarms,
            quorum_status=health.quorum_status,
            error=health.error,
        )

    def _workload(self, children: Children, name: str, desired: int) -> status.WorkloadObservation:
        deployment = children.get("Deployment", name)
        if deployment is None:
            return status.WorkloadObservation(False, desired, 0, 0)
        st = deployment.get("status") or {}
        fresh = st.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
        return status.WorkloadObservation(
            True, desired, int(st.get("readyReplicas", 0)), int(st.get("updatedReplicas", 0)) if fresh else 0
        )

    def _database(self, spec: TradingSystemSpec, children: Children) -> status.ComponentCheck:
        if spec.database.dev:
            check = self._workload(children, self.names.postgres, 1).check("dev PostgreSQL")
            return (
                check if not check.ready else status.ComponentCheck(True, "DevInstanceReady", check.message)
            )
        if self.external_secret_ok:
            return status.ComponentCheck(
                True, "SecretPresent", f"external database via Secret {spec.database.secret_name}"
            )
        return status.ComponentCheck(
            False,
            "SecretMissing",
            f"Secret {spec.database.secret_name} with key {spec.database.secret_key} not found",
        )

    async def _check_external_secret(self, spec: TradingSystemSpec) -> None:
        if spec.database.dev or time.monotonic() < self.next_external_check:
            return
        # Not indexed (it is the user's Secret, unlabelled); a GET a minute is plenty.
        self.next_external_check = time.monotonic() + EXTERNAL_SECRET_CHECK_SECONDS
        assert spec.database.secret_name is not None
        secret = await asyncio.to_thread(
            self.kube.get, "v1", "Secret", self.owner.namespace, spec.database.secret_name
        )
        self.external_secret_ok = secret is not None and spec.database.secret_key in (
            secret.get("data") or {}
        )

    def _observed(
        self,
        body: Mapping[str, Any],
        spec: TradingSystemSpec,
        children: Children,
        rabbit: status.RabbitMQObservation,
        paused: bool,
        reconcile_error: str | None,
    ) -> status.Observed:
        return status.Observed(
            generation=int(body["metadata"].get("generation", 0)),
            now=time.time(),
            paused=paused,
            rabbitmq=rabbit,
            coordinator=self._workload(children, self.names.coordinator, spec.coordinator_replicas),
            database=self._database(spec, children),
            pairs={pair: c.state for pair, c in self.pairs.items()},
            reconcile_error=reconcile_error,
            children_created=children.get("StatefulSet", self.names.rabbitmq) is not None,
        )

    # -- pair state and status ---------------------------------------------------------

    def _load_pairs(self, current_status: Mapping[str, Any] | None) -> None:
        for pair in api.PAIRS:
            if pair not in self.pairs:
                state = status.load_pair_state(current_status, pair, self.names.pair(pair))
                self.pairs[pair] = PairController(self.owner, pair, state)

    async def _fresh_status(self) -> tuple[dict[str, Any], str]:
        """The resource's current status and resourceVersion, after checking nobody moved our pair states."""
        fresh = await asyncio.to_thread(
            self.kube.get, api.API_VERSION, api.KIND, self.owner.namespace, self.owner.name
        )
        if fresh is None:
            raise StateConflict("the resource is gone")
        current = fresh.get("status") or {}
        for pair, controller in self.pairs.items():
            stored = status.load_pair_state(current, pair, self.names.pair(pair))
            if stored.to_dict() != controller.persisted.to_dict():
                controller.reload(stored)
                raise StateConflict(f"{pair} decision state changed behind this operator; reloaded")
        return current, fresh["metadata"]["resourceVersion"]

    async def _patch_status(
        self, new_status: Mapping[str, Any], resource_version: str, current: Mapping[str, Any]
    ) -> None:
        patch = {"metadata": {"resourceVersion": resource_version}, "status": dict(new_status)}
        await asyncio.to_thread(
            self.kube.merge_patch,
            api.API_VERSION,
            api.KIND,
            self.owner.namespace,
            self.owner.name,
            patch,
            sub="status",
        )
        old_phase, phase = current.get("phase"), new_status.get("phase")
        if phase != old_phase:
            # Every phase change is an Event, whichever write (a failover step or the end of
            # a round) carried it.
            event_type = "Normal" if phase in ("Ready", "Creating", "Pending") else "Warning"
            message = f"phase {old_phase or 'none'} -> {phase}: {new_status.get('message', '')}"
            self.post_event(event_type, f"Phase{phase}", message)
            logger.info("%s: phase %s -> %s", self._id, old_phase, phase)

    async def _persist_pair(self, observed: status.Observed, pair: str, state: PairState) -> bool:
        """Write the pair's new decision state, conditionally: the epoch is a compare-and-swap."""
        for _ in range(3):
            try:
                current, rv = await self._fresh_status()
            except StateConflict:
                return False
            states = {p: c.persisted for p, c in self.pairs.items()}
            states[pair] = state
            now = dataclasses.replace(observed, pairs=states, now=time.time())
            new_status = status.compute_status(now, current)
            try:
                await self._patch_status(new_status, rv, current)
            except ApiError as exc:
                if exc.conflict:
                    continue
                raise
            return True
        return False

    async def _write_status(
        self, new_status: Mapping[str, Any], old_status: Mapping[str, Any] | None
    ) -> None:
        # Pair states in the status are only ever the persisted ones.
        new = dict(new_status)
        new["pairs"] = {p: status.pair_status(c.persisted) for p, c in self.pairs.items()}
        for pair, controller in self.pairs.items():
            # Health is what the last round saw, even when it was not worth persisting.
            live = status.pair_status(controller.state)
            for key in ("health", "reason", "message"):
                new["pairs"][pair][key] = live[key]
        if not status.status_changed(new, old_status):
            return
        current, rv = await self._fresh_status()
        if not status.status_changed(new, current):
            return
        await self._patch_status(new, rv, current)

    # -- deletion ----------------------------------------------------------------------

    async def teardown(self, children: Children) -> bool:
        """Remove children in dependency order; True once only the garbage collector's part remains.

        Pair members go first so nothing trades while its dependencies disappear, then the
        coordinators, then RabbitMQ with its preStop quorum gate switched off (the whole
        cluster is going, so waiting for quorum+1 would only stall the deletion).
        """
        ns = self.owner.namespace
        members = {**children.pods("matching"), **children.pods("execution")}
        for name, pod in members.items():
            if not pod["metadata"].get("deletionTimestamp"):
                await asyncio.to_thread(self.kube.delete, "v1", "Pod", ns, name, grace_period=0)
        if members:
            return False
        for name in (self.names.coordinator, self.names.postgres):
            if children.get("Deployment", name) is not None:
                await asyncio.to_thread(self.kube.delete, "apps/v1", "Deployment", ns, name)
        skip = {"metadata": {"labels": {rabbit_manifests.SKIP_PRESTOP_LABEL: "true"}}}
        for name, pod in children.pods("rabbitmq").items():
            if (pod["metadata"].get("labels") or {}).get(rabbit_manifests.SKIP_PRESTOP_LABEL) != "true":
                await asyncio.to_thread(self.kube.merge_patch, "v1", "Pod", ns, name, skip)
        if children.get("StatefulSet", self.names.rabbitmq) is not None:
            await asyncio.to_thread(self.kube.delete, "apps/v1", "StatefulSet", ns, self.names.rabbitmq)
        return True


def slim(body: Mapping[str, Any]) -> Obj:
    """What the indexes keep of a child: everything but the bulky managedFields."""
    result: Obj = json.loads(json.dumps(dict(body)))
    result.get("metadata", {}).pop("managedFields", None)
    if result.get("kind") == "Secret":
        result.pop("data", None)  # the operator never needs secret values from the index
        result.pop("stringData", None)
    return result


ChildrenSource = Callable[[str, str], Children]

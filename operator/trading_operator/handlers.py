"""kopf wiring: indexes of children, one reconcile loop per TradingSystem, ordered deletion.

Importing this module registers the handlers with kopf's default registry; ``main`` runs
them. All decisions live elsewhere (``controller``, ``failover``, ``trading_system.ha``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kopf

from trading_operator import api, metrics
from trading_operator.controller import Children, Settings, TradingSystemController, slim
from trading_operator.k8s_io import ApiError, Kube
from trading_operator.spec import Owner

logger = logging.getLogger(__name__)

# (group, version, plural, kind): what the reconciler needs to see of its children.
CHILD_RESOURCES: tuple[tuple[str, str, str, str], ...] = (
    ("", "v1", "pods", "Pod"),
    ("", "v1", "services", "Service"),
    ("", "v1", "configmaps", "ConfigMap"),
    ("", "v1", "secrets", "Secret"),
    ("", "v1", "serviceaccounts", "ServiceAccount"),
    ("apps", "v1", "statefulsets", "StatefulSet"),
    ("apps", "v1", "deployments", "Deployment"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
)
INDEX_IDS = tuple(f"children_{plural}" for _, _, plural, _ in CHILD_RESOURCES)
MANAGED = {api.LABEL_MANAGED_BY: api.MANAGED_BY}

Key = tuple[str, str]
TEARDOWN_WAIT_SECONDS = 60.0


@dataclass
class Runtime:
    """Process-wide objects every handler shares (kopf copies the memo into each object's)."""

    kube: Kube
    session: aiohttp.ClientSession
    settings: Settings
    wakers: dict[Key, asyncio.Event] = field(default_factory=dict)

    def wake(self, key: Key) -> None:
        event = self.wakers.get(key)
        if event is not None:
            event.set()


def _runtime(memo: Any) -> Runtime:
    runtime = getattr(memo, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return runtime


def settings_from_environment() -> Settings:
    return Settings(resync_seconds=float(os.environ.get("TRADING_OPERATOR_RESYNC_SECONDS", "10")))


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = api.FINALIZER
    # Our status schema has no room for kopf's bookkeeping; annotations do.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    # Reconnect watches regularly: a watch that silently stops delivering (kopf #1276)
    # would freeze the indexes and with them drift detection.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 8
    settings.peering.lifetime = int(os.environ.get("TRADING_OPERATOR_PEERING_LIFETIME", "60"))
    kube = await asyncio.to_thread(Kube.from_environment)
    memo.runtime = Runtime(kube=kube, session=aiohttp.ClientSession(), settings=settings_from_environment())
    port = int(os.environ.get("TRADING_OPERATOR_METRICS_PORT", "0"))
    if port:
        metrics.serve(port)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime = getattr(memo, "runtime", None)
    if isinstance(runtime, Runtime):
        await runtime.session.close()
        runtime.kube.close()


def _index_child(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, memo: Any, **_: Any
) -> Any:
    instance = labels.get(api.LABEL_INSTANCE)
    if not instance or namespace is None:
        return None
    key = (namespace, instance)
    runtime = getattr(memo, "runtime", None)
    if isinstance(runtime, Runtime):
        runtime.wake(key)  # a child changed or vanished: look now, not at the next resync
    return {key: slim(body)}


for (_group, _version, _plural, _kind), _id in zip(CHILD_RESOURCES, INDEX_IDS, strict=True):
    kopf.index(_group, _version, _plural, id=_id, labels=MANAGED)(_index_child)


def children_of(indexes: Mapping[str, Any], key: Key) -> Children:
    children = Children()
    for (_, _, _, kind), index_id in zip(CHILD_RESOURCES, INDEX_IDS, strict=True):
        index = indexes.get(index_id)
        if index is None:
            continue
        for obj in index.get(key, ()):
            obj = dict(obj)
            obj.setdefault("kind", kind)
            children.objects[(kind, obj["metadata"]["name"])] = obj
    return children


def _poster(body: kopf.Body) -> Any:
    def post(event_type: str, reason: str, message: str) -> None:
        kopf.event(body, type=event_type, reason=reason, message=message[:1024])

    return post


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def wake_on_change(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    runtime = getattr(memo, "runtime", None)
    if isinstance(runtime, Runtime) and namespace is not None:
        runtime.wake((namespace, name))


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, id="reconcile", cancellation_timeout=10.0)
async def reconcile(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
    """The level-triggered loop: every resync (or sooner, when something changed) one round."""
    runtime = _runtime(memo)
    owner = Owner.from_body(body)
    key = (owner.namespace, owner.name)
    controller = TradingSystemController(runtime.kube, runtime.session, runtime.settings, owner)
    wake = runtime.wakers.setdefault(key, asyncio.Event())
    post = _poster(body)
    metrics.RESOURCES.inc()
    try:
        while not stopped:
            wake.clear()
            # After a failed round the pairs' schedule may be stale; never spin on it.
            pause = runtime.settings.resync_seconds
            try:
                await controller.tick(body, children_of(kwargs, key), post)
                pause = max(0.05, controller.seconds_to_next_round(pause))
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                logger.warning("%s/%s: round failed: %s", *key, exc)
            except Exception as exc:
                logger.exception("%s/%s: round failed", *key)
                post("Warning", "ReconcileError", f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=pause)
    finally:
        runtime.wakers.pop(key, None)
        metrics.RESOURCES.dec()
        metrics.forget(*key)


@kopf.on.delete(api.GROUP, api.VERSION, api.PLURAL, id="teardown")
async def teardown(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    runtime = _runtime(memo)
    owner = Owner.from_body(body)
    if (body.get("status") or {}).get("phase") != "Deleting":
        with contextlib.suppress(ApiError):
            await asyncio.to_thread(
                runtime.kube.merge_patch,
                api.API_VERSION,
                api.KIND,
                owner.namespace,
                owner.name,
                {"status": {"phase": "Deleting", "message": "removing children in order"}},
                sub="status",
            )
    controller = TradingSystemController(runtime.kube, runtime.session, runtime.settings, owner)
    # The indexes in kwargs are live, so polling them costs no API calls. Waiting here
    # rather than raising TemporaryError keeps a routine wait out of the error log.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TEARDOWN_WAIT_SECONDS
    while not await controller.teardown(children_of(kwargs, (owner.namespace, owner.name))):
        if loop.time() > deadline:
            raise kopf.TemporaryError("pair members are still terminating", delay=5)
        await asyncio.sleep(0.2)

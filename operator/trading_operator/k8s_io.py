"""The only module that talks to the Kubernetes API (besides kopf itself).

A thin, typed layer over the official client's transport: objects are plain dicts, the
paths come from a small table of the kinds the operator manages (no discovery round
trips), server-side apply uses the operator's own field manager, and every error becomes
``ApiError`` with the HTTP status and the server's message.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from trading_operator import api

logger = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class KindInfo:
    plural: str
    namespaced: bool = True


KINDS: dict[tuple[str, str], KindInfo] = {
    ("v1", "ConfigMap"): KindInfo("configmaps"),
    ("v1", "Secret"): KindInfo("secrets"),
    ("v1", "Service"): KindInfo("services"),
    ("v1", "ServiceAccount"): KindInfo("serviceaccounts"),
    ("v1", "Pod"): KindInfo("pods"),
    ("v1", "PersistentVolumeClaim"): KindInfo("persistentvolumeclaims"),
    ("v1", "Event"): KindInfo("events"),
    ("v1", "Namespace"): KindInfo("namespaces", namespaced=False),
    ("apps/v1", "StatefulSet"): KindInfo("statefulsets"),
    ("apps/v1", "Deployment"): KindInfo("deployments"),
    ("policy/v1", "PodDisruptionBudget"): KindInfo("poddisruptionbudgets"),
    ("networking.k8s.io/v1", "NetworkPolicy"): KindInfo("networkpolicies"),
    ("rbac.authorization.k8s.io/v1", "Role"): KindInfo("roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): KindInfo("rolebindings"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): KindInfo("servicemonitors"),
    ("monitoring.coreos.com/v1", "PodMonitor"): KindInfo("podmonitors"),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): KindInfo(
        "customresourcedefinitions", namespaced=False
    ),
    ("kopf.dev/v1", "ClusterKopfPeering"): KindInfo("clusterkopfpeerings", namespaced=False),
    ("kopf.dev/v1", "KopfPeering"): KindInfo("kopfpeerings"),
    (api.API_VERSION, api.KIND): KindInfo(api.PLURAL),
}

# The client's loaders are untyped; these are their signatures as used here.
_load_incluster = cast(Callable[..., None], config.load_incluster_config)
_load_kubeconfig = cast(Callable[..., None], config.load_kube_config)

REQUEST_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds: a hung API call must not hang a handler


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @classmethod
    def from_exception(cls, exc: ApiException) -> ApiError:
        message = str(exc.reason or "")
        reason = ""
        try:
            payload = json.loads(exc.body or "{}")
            message = payload.get("message", message)
            reason = payload.get("reason", "")
        except (TypeError, ValueError):
            pass
        return cls(int(exc.status or 0), reason, message)


def path(
    api_version: str, kind: str, namespace: str | None, name: str | None = None, sub: str | None = None
) -> str:
    info = KINDS[(api_version, kind)]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    parts = [base]
    if info.namespaced:
        if namespace is None:
            raise ValueError(f"{kind} is namespaced; a namespace is required")
        parts.append(f"namespaces/{namespace}")
    parts.append(info.plural)
    if name is not None:
        parts.append(name)
    if sub is not None:
        parts.append(sub)
    return "/".join(parts)


def object_path(obj: Mapping[str, Any], sub: str | None = None) -> str:
    meta = obj["metadata"]
    return path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"], sub)


class Kube:
    """Synchronous API calls; async callers run them with ``asyncio.to_thread``."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.client = api_client

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> Kube:
        """An explicit kubeconfig, else in-cluster credentials, else ``KUBECONFIG``."""
        configuration = client.Configuration()
        if kubeconfig is None:
            try:
                _load_incluster(client_configuration=configuration)
                return cls(client.ApiClient(configuration))
            except config.ConfigException:
                pass  # not in a pod
        _load_kubeconfig(config_file=kubeconfig, client_configuration=configuration)
        return cls(client.ApiClient(configuration))

    def close(self) -> None:
        cast(Callable[[], None], self.client.close)()

    # -- transport -----------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        query: list[tuple[str, Any]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        serialized = self.client.param_serialize(
            method,
            url,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.client.call_api(*serialized, _request_timeout=REQUEST_TIMEOUT)
            data = cast(Callable[[], bytes], response.read)()
        except ApiException as exc:
            raise ApiError.from_exception(exc) from exc
        if not 200 <= response.status <= 299:
            raise ApiError.from_exception(
                ApiException(http_resp=response, body=data.decode(errors="replace"))
            )
        return json.loads(data) if data else None

    # -- verbs ---------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        try:
            result: Obj = self.request("GET", path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        return result

    def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str | None = None
    ) -> list[Obj]:
        query = [("labelSelector", label_selector)] if label_selector else []
        result = self.request("GET", path(api_version, kind, namespace), query=query)
        items: list[Obj] = result.get("items", [])
        for item in items:  # list items come without their type
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items

    def apply(self, obj: Mapping[str, Any], *, force: bool = True, dry_run: bool = False) -> Obj:
        """Server-side apply as the operator's field manager.

        ``force`` takes ownership of fields another manager changed (``kubectl edit``):
        the operator is the source of truth for every field it sets, which is what
        correcting drift means.
        """
        query: list[tuple[str, Any]] = [("fieldManager", api.FIELD_MANAGER), ("force", str(force).lower())]
        if dry_run:
            query.append(("dryRun", "All"))
        result: Obj = self.request(
            "PATCH",
            object_path(obj),
            body=dict(obj),
            query=query,
            content_type="application/apply-patch+yaml",
        )
        return result

    def create(self, obj: Mapping[str, Any]) -> Obj | None:
        """Create, or return None if it already exists (never overwrite)."""
        meta = obj["metadata"]
        url = path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        try:
            result: Obj = self.request(
                "POST", url, body=dict(obj), query=[("fieldManager", api.FIELD_MANAGER)]
            )
        except ApiError as exc:
            if exc.conflict:
                return None
            raise
        return result

    def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        *,
        grace_period: int | None = None,
        uid: str | None = None,
    ) -> bool:
        """Delete; False if it was already gone. ``uid`` guards against deleting a successor."""
        body: Obj = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if grace_period is not None:
            body["gracePeriodSeconds"] = grace_period
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", path(api_version, kind, namespace, name), body=body)
        except ApiError as exc:
            if exc.not_found:
                return False
            raise
        return True

    def merge_patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        sub: str | None = None,
    ) -> Obj:
        """JSON merge patch. A ``metadata.resourceVersion`` in the patch makes it conditional."""
        result: Obj = self.request(
            "PATCH",
            path(api_version, kind, namespace, name, sub),
            body=dict(patch),
            content_type="application/merge-patch+json",
        )
        return result

    def read_secret_value(self, namespace: str, name: str, key: str) -> str | None:
        secret = self.get("v1", "Secret", namespace, name)
        if secret is None:
            return None
        encoded = (secret.get("data") or {}).get(key)
        return None if encoded is None else base64.b64decode(encoded).decode()

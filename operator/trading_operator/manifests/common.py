"""Shared pieces of the child manifests: names, labels, metadata and security settings.

Every builder in this package is a pure function from the spec to plain dicts, so the
unit tests check the manifests without a server and the reconciler compares them with
what the API server holds.
"""

from __future__ import annotations

from typing import Any

from trading_operator import api
from trading_operator.spec import Owner, Resources, TradingSystemSpec

Manifest = dict[str, Any]

# The services run as this unprivileged user (the Dockerfile creates it).
SERVICE_UID = 10001
RABBITMQ_UID = 999
POSTGRES_UID = 999
CONFIG_MOUNT = "/etc/trading-system"
CONFIG_FILE = f"{CONFIG_MOUNT}/config.json"


class Names:
    """Child names derived from the TradingSystem's name."""

    def __init__(self, instance: str) -> None:
        self.instance = instance

    def _n(self, suffix: str) -> str:
        return f"{self.instance}-{suffix}"

    @property
    def config(self) -> str:
        return self._n("config")

    @property
    def rabbitmq(self) -> str:
        return self._n("rabbitmq")

    @property
    def rabbitmq_nodes(self) -> str:
        return self._n("rabbitmq-nodes")

    @property
    def rabbitmq_config(self) -> str:
        return self._n("rabbitmq-config")

    @property
    def erlang_cookie(self) -> str:
        return self._n("rabbitmq-erlang-cookie")

    @property
    def rabbitmq_admin(self) -> str:
        return self._n("rabbitmq-admin")

    @property
    def admin_token(self) -> str:
        return self._n("admin-token")

    @property
    def api_token(self) -> str:
        return self._n("api-token")

    @property
    def postgres(self) -> str:
        return self._n("postgres")

    @property
    def coordinator(self) -> str:
        return self._n("coordinator")

    def pair(self, pair: str) -> str:
        """The pair's Service, ServiceAccount and PDB; members are ``<pair name>-<n>``."""
        return self._n(pair)

    def rabbitmq_pod(self, index: int) -> str:
        return f"{self.rabbitmq}-{index}"


def labels(owner: Owner | str, component: str) -> dict[str, str]:
    instance = owner if isinstance(owner, str) else owner.name
    return {
        api.LABEL_NAME: "trading-system",
        api.LABEL_INSTANCE: instance,
        api.LABEL_COMPONENT: component,
        api.LABEL_MANAGED_BY: api.MANAGED_BY,
        api.LABEL_PART_OF: api.PART_OF,
    }


def selector(owner: Owner, component: str) -> dict[str, str]:
    """The immutable subset of labels a workload selects its pods by."""
    return {api.LABEL_INSTANCE: owner.name, api.LABEL_COMPONENT: component}


def metadata(
    owner: Owner,
    name: str,
    component: str,
    *,
    extra_labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**labels(owner, component), **(extra_labels or {})},
        "ownerReferences": [owner.reference()],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


def manifest(api_version: str, kind: str, meta: dict[str, Any], **body: Any) -> Manifest:
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, **body}


def pod_security_context(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def image_pull_secrets(spec: TradingSystemSpec) -> list[dict[str, str]]:
    return [{"name": name} for name in spec.image.pull_secrets]


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def database_env(owner: Owner, spec: TradingSystemSpec) -> dict[str, Any]:
    names = Names(owner.name)
    if spec.database.dev:
        return secret_env("TRADING_SYSTEM_DATABASE_URL", names.postgres, "dsn")
    assert spec.database.secret_name is not None  # the CRD's CEL rule guarantees one of the two
    return secret_env("TRADING_SYSTEM_DATABASE_URL", spec.database.secret_name, spec.database.secret_key)


def service_env(owner: Owner, spec: TradingSystemSpec, component: str) -> list[dict[str, Any]]:
    """Environment every service container gets: who it is and where its dependencies are."""
    names = Names(owner.name)
    return [
        field_env("TRADING_SYSTEM_POD_NAME", "metadata.name"),
        field_env("TRADING_SYSTEM_POD_IP", "status.podIP"),
        {"name": "TRADING_SYSTEM_INSTANCE", "value": owner.name},
        {"name": "TRADING_SYSTEM_COMPONENT", "value": component},
        {"name": "TRADING_SYSTEM_CONFIG", "value": CONFIG_FILE},
        {"name": "TRADING_SYSTEM_HTTP_PORT", "value": str(api.SERVICE_HTTP_PORT)},
        {"name": "TRADING_SYSTEM_MESSAGE_BUS_MODE", "value": "rabbitmq"},
        {"name": "TRADING_SYSTEM_LOG_FORMAT", "value": "json"},
        database_env(owner, spec),
        secret_env("TRADING_SYSTEM_RABBITMQ_URL", names.rabbitmq_admin, "url"),
        secret_env("TRADING_SYSTEM_ADMIN_TOKEN", names.admin_token, "token"),
        secret_env("TRADING_SYSTEM_API_TOKEN", names.api_token, "token"),
    ]


def http_probe(path: str, *, period: int, failure_threshold: int, initial_delay: int = 0) -> dict[str, Any]:
    probe: dict[str, Any] = {
        "httpGet": {"path": path, "port": "http", "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failure_threshold,
        "successThreshold": 1,
    }
    if initial_delay:
        probe["initialDelaySeconds"] = initial_delay
    return probe


def scrape_annotations(spec: TradingSystemSpec, port: int) -> dict[str, str]:
    if not spec.metrics:
        return {}
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def pdb(owner: Owner, name: str, component: str, match: dict[str, str], **budget: int) -> Manifest:
    return manifest(
        "policy/v1",
        "PodDisruptionBudget",
        metadata(owner, name, component),
        spec={"selector": {"matchLabels": match}, **budget},
    )


def service_account(owner: Owner, name: str, component: str) -> Manifest:
    # No component talks to the API server except RabbitMQ's peer discovery, so tokens are
    # only mounted where a Role grants something.
    return manifest(
        "v1",
        "ServiceAccount",
        metadata(owner, name, component),
        automountServiceAccountToken=component == "rabbitmq",
    )


def service(
    owner: Owner,
    name: str,
    component: str,
    ports: list[tuple[str, int]],
    *,
    select: dict[str, str] | None = None,
    headless: bool = False,
    extra_labels: dict[str, str] | None = None,
) -> Manifest:
    """A Service whose ports target the container ports of the same name."""
    spec: dict[str, Any] = {"type": "ClusterIP"}
    if headless:
        # Nodes must find each other before they are ready, or a cluster never forms.
        spec = {"clusterIP": "None", "publishNotReadyAddresses": True}
    spec["selector"] = select if select is not None else selector(owner, component)
    spec["ports"] = [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports]
    return manifest("v1", "Service", metadata(owner, name, component, extra_labels=extra_labels), spec=spec)


def spread(owner: Owner, component: str) -> list[dict[str, Any]]:
    """Prefer one pod of a component per node; never block scheduling over it."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector(owner, component)},
        }
    ]


def service_container(
    owner: Owner, spec: TradingSystemSpec, component: str, resources: Resources
) -> dict[str, Any]:
    """The container of a pipeline service: ``trading-system <component> serve`` on port 8080."""
    return {
        "name": component,
        "image": spec.image.reference,
        "imagePullPolicy": spec.image.pull_policy,
        # The image has no ENTRYPOINT (its CMD is ``trading-system --help``), so ``args``
        # alone would make the runtime exec ``matching``: the command must be explicit.
        "command": ["trading-system"],
        "args": [component, "serve"],
        "env": service_env(owner, spec, component),
        "ports": [{"name": "http", "containerPort": api.SERVICE_HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": http_probe("/readyz", period=5, failure_threshold=2),
        # Liveness is lenient: the operator's own probes decide failovers, the kubelet
        # only restarts a process that is truly stuck.
        "livenessProbe": http_probe("/healthz", period=10, failure_threshold=6, initial_delay=10),
        "resources": resources.to_k8s(),
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def service_volumes(owner: Owner) -> list[dict[str, Any]]:
    return [
        {"name": "config", "configMap": {"name": Names(owner.name).config}},
        {"name": "tmp", "emptyDir": {}},
    ]

"""The RabbitMQ cluster: StatefulSet, Services, config, PDB and the RBAC peer discovery needs."""

from __future__ import annotations

from typing import Any

from trading_operator import api
from trading_operator.manifests.common import (
    RABBITMQ_UID,
    Manifest,
    Names,
    container_security_context,
    field_env,
    image_pull_secrets,
    labels,
    manifest,
    metadata,
    pdb,
    pod_security_context,
    scrape_annotations,
    selector,
    service,
    service_account,
    spread,
)
from trading_operator.spec import Owner, TradingSystemSpec, stable_hash

COMPONENT = "rabbitmq"
DATA_DIR = "/var/lib/rabbitmq/mnesia"
# Long enough for the preStop gate to wait out a quorum queue catching up; the finalizer
# skips the gate when the whole TradingSystem is deleted.
TERMINATION_GRACE_SECONDS = 3600
SKIP_PRESTOP_FILE = "/etc/pod-info/skipPreStopChecks"
SKIP_PRESTOP_LABEL = f"{api.GROUP}/skip-prestop-checks"
PLUGINS = "[rabbitmq_management,rabbitmq_peer_discovery_k8s,rabbitmq_prometheus].\n"


def rabbitmq_conf(owner: Owner, spec: TradingSystemSpec) -> str:
    names = Names(owner.name)
    replicas = spec.rabbitmq.replicas
    lines = [
        "cluster_formation.peer_discovery_backend = rabbit_peer_discovery_k8s",
        "cluster_formation.k8s.host = kubernetes.default.svc",
        "cluster_formation.k8s.address_type = hostname",
        f"cluster_formation.k8s.service_name = {names.rabbitmq_nodes}",
        f"cluster_formation.k8s.hostname_suffix = .{names.rabbitmq_nodes}.{owner.namespace}",
        f"cluster_formation.target_cluster_size_hint = {replicas}",
        # A minority must stop rather than accept writes it may have to throw away.
        "cluster_partition_handling = pause_minority",
        "default_queue_type = quorum",
        "queue_leader_locator = balanced",
        # Quorum queues grow onto new nodes and drop departed ones by themselves, which is
        # what makes a one-step scale-down safe once the departing node is drained.
        "quorum_queue.continuous_membership_reconciliation.enabled = true",
        "quorum_queue.continuous_membership_reconciliation.auto_remove = true",
        f"quorum_queue.continuous_membership_reconciliation.target_group_size = {replicas}",
        "disk_free_limit.absolute = 2GB",
        "management.tcp.port = 15672",
        "prometheus.tcp.port = 15692",
        "loopback_users.guest = true",
    ]
    return "\n".join(lines) + "\n"


def config_map(owner: Owner, spec: TradingSystemSpec) -> Manifest:
    names = Names(owner.name)
    return manifest(
        "v1",
        "ConfigMap",
        metadata(owner, names.rabbitmq_config, COMPONENT),
        data={"operator.conf": rabbitmq_conf(owner, spec), "enabled_plugins": PLUGINS},
    )


def headless_service(owner: Owner) -> Manifest:
    ports = [("epmd", api.RABBITMQ_EPMD_PORT), ("cluster-links", api.RABBITMQ_DIST_PORT)]
    return service(owner, Names(owner.name).rabbitmq_nodes, COMPONENT, ports, headless=True)


def client_service(owner: Owner) -> Manifest:
    ports = [
        ("amqp", api.RABBITMQ_AMQP_PORT),
        ("management", api.RABBITMQ_MANAGEMENT_PORT),
        ("prometheus", api.RABBITMQ_PROMETHEUS_PORT),
    ]
    return service(owner, Names(owner.name).rabbitmq, COMPONENT, ports)


def _container(owner: Owner, spec: TradingSystemSpec) -> dict[str, Any]:
    names = Names(owner.name)
    # Wait for every quorum queue to keep quorum without this node, then hand its leaders
    # away; only then may the node stop. Skipped when the whole system is being deleted.
    pre_stop = (
        f'if [ -s "{SKIP_PRESTOP_FILE}" ]; then exit 0; fi; '
        f"rabbitmq-upgrade await_online_quorum_plus_one -t {TERMINATION_GRACE_SECONDS} && "
        "rabbitmq-upgrade drain -t 600"
    )
    return {
        "name": "rabbitmq",
        "image": spec.rabbitmq.image,
        "imagePullPolicy": spec.image.pull_policy,
        "env": [
            field_env("MY_POD_NAME", "metadata.name"),
            field_env("MY_POD_NAMESPACE", "metadata.namespace"),
            {"name": "K8S_SERVICE_NAME", "value": names.rabbitmq_nodes},
            {"name": "RABBITMQ_USE_LONGNAME", "value": "true"},
            {
                "name": "RABBITMQ_NODENAME",
                "value": "rabbit@$(MY_POD_NAME).$(K8S_SERVICE_NAME).$(MY_POD_NAMESPACE)",
            },
            {"name": "K8S_HOSTNAME_SUFFIX", "value": ".$(K8S_SERVICE_NAME).$(MY_POD_NAMESPACE)"},
            {"name": "RABBITMQ_ENABLED_PLUGINS_FILE", "value": "/etc/rabbitmq-operator/enabled_plugins"},
        ],
        "ports": [
            {"name": "amqp", "containerPort": api.RABBITMQ_AMQP_PORT, "protocol": "TCP"},
            {"name": "management", "containerPort": api.RABBITMQ_MANAGEMENT_PORT, "protocol": "TCP"},
            {"name": "prometheus", "containerPort": api.RABBITMQ_PROMETHEUS_PORT, "protocol": "TCP"},
            {"name": "epmd", "containerPort": api.RABBITMQ_EPMD_PORT, "protocol": "TCP"},
            {"name": "cluster-links", "containerPort": api.RABBITMQ_DIST_PORT, "protocol": "TCP"},
        ],
        # A TCP check on AMQP, as the RabbitMQ Cluster Operator does: a rabbitmq-diagnostics
        # probe is slow enough to time out under load and wedge pods in Terminating.
        "readinessProbe": {
            "tcpSocket": {"port": "amqp"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
            "successThreshold": 1,
        },
        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", pre_stop]}}},
        "resources": spec.rabbitmq.resources.to_k8s(),
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "rabbitmq-home", "mountPath": "/var/lib/rabbitmq"},
            {"name": "data", "mountPath": DATA_DIR},
            {
                "name": "config",
                "mountPath": "/etc/rabbitmq/conf.d/10-operator.conf",
                "subPath": "operator.conf",
            },
            {
                "name": "config",
                "mountPath": "/etc/rabbitmq-operator/enabled_plugins",
                "subPath": "enabled_plugins",
            },
            {
                "name": "admin",
                "mountPath": "/etc/rabbitmq/conf.d/11-default_user.conf",
                "subPath": "default_user.conf",
            },
            {"name": "pod-info", "mountPath": "/etc/pod-info"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def _cookie_init_container(spec: TradingSystemSpec) -> dict[str, Any]:
    # The cookie must be a 0600 file owned by rabbitmq; a Secret volume cannot be both.
    return {
        "name": "erlang-cookie",
        "image": spec.rabbitmq.image,
        "imagePullPolicy": spec.image.pull_policy,
        "command": [
            "/bin/sh",
            "-c",
            "cp /tmp/cookie/.erlang.cookie /var/lib/rabbitmq/.erlang.cookie && "
            "chmod 600 /var/lib/rabbitmq/.erlang.cookie",
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "rabbitmq-home", "mountPath": "/var/lib/rabbitmq"},
            {"name": "erlang-cookie", "mountPath": "/tmp/cookie"},
        ],
    }


def _volumes(owner: Owner, spec: TradingSystemSpec) -> list[dict[str, Any]]:
    names = Names(owner.name)
    volumes: list[dict[str, Any]] = [
        {"name": "rabbitmq-home", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "config", "configMap": {"name": names.rabbitmq_config}},
        {"name": "admin", "secret": {"secretName": names.rabbitmq_admin}},
        {"name": "erlang-cookie", "secret": {"secretName": names.erlang_cookie}},
        {
            "name": "pod-info",
            "downwardAPI": {
                "items": [
                    {
                        "path": "skipPreStopChecks",
                        "fieldRef": {"fieldPath": f"metadata.labels['{SKIP_PRESTOP_LABEL}']"},
                    }
                ]
            },
        },
    ]
    if spec.rabbitmq.empty_dir:
        volumes.append({"name": "data", "emptyDir": {}})
    return volumes


def _volume_claims(owner: Owner, spec: TradingSystemSpec) -> list[dict[str, Any]]:
    if spec.rabbitmq.empty_dir:
        return []
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.rabbitmq.storage_size}},
        "volumeMode": "Filesystem",
    }
    if spec.rabbitmq.storage_class:
        claim_spec["storageClassName"] = spec.rabbitmq.storage_class
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "labels": labels(owner, COMPONENT)},
            "spec": claim_spec,
        }
    ]


def statefulset(owner: Owner, spec: TradingSystemSpec, replicas: int) -> Manifest:
    """``replicas`` may lag the spec: the reconciler steps it one node at a time."""
    names = Names(owner.name)
    config_hash = stable_hash(rabbitmq_conf(owner, spec))
    pod_spec: dict[str, Any] = {
        "serviceAccountName": names.rabbitmq,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": pod_security_context(RABBITMQ_UID),
        "enableServiceLinks": False,
        "initContainers": [_cookie_init_container(spec)],
        "containers": [_container(owner, spec)],
        "volumes": _volumes(owner, spec),
        "topologySpreadConstraints": spread(owner, COMPONENT),
    }
    if spec.image.pull_secrets:
        pod_spec["imagePullSecrets"] = image_pull_secrets(spec)
    sts_spec: dict[str, Any] = {
        "serviceName": names.rabbitmq_nodes,
        "replicas": replicas,
        # Nodes join each other, so none should wait for its predecessor to be ready.
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
        "selector": {"matchLabels": selector(owner, COMPONENT)},
        "template": {
            "metadata": {
                "labels": labels(owner, COMPONENT),
                "annotations": {
                    f"{api.GROUP}/config-hash": config_hash,
                    **scrape_annotations(spec, api.RABBITMQ_PROMETHEUS_PORT),
                },
            },
            "spec": pod_spec,
        },
    }
    claims = _volume_claims(owner, spec)
    if claims:
        sts_spec["volumeClaimTemplates"] = claims
    return manifest("apps/v1", "StatefulSet", metadata(owner, names.rabbitmq, COMPONENT), spec=sts_spec)


def rbac(owner: Owner) -> list[Manifest]:
    names = Names(owner.name)
    role = manifest(
        "rbac.authorization.k8s.io/v1",
        "Role",
        metadata(owner, names.rabbitmq, COMPONENT),
        rules=[
            # rabbit_peer_discovery_k8s (3.x) lists the headless Service's endpoints.
            {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        ],
    )
    binding = manifest(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        metadata(owner, names.rabbitmq, COMPONENT),
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.rabbitmq},
        subjects=[{"kind": "ServiceAccount", "name": names.rabbitmq, "namespace": owner.namespace}],
    )
    return [service_account(owner, names.rabbitmq, COMPONENT), role, binding]


def children(owner: Owner, spec: TradingSystemSpec, replicas: int) -> list[Manifest]:
    names = Names(owner.name)
    return [
        config_map(owner, spec),
        *rbac(owner),
        headless_service(owner),
        client_service(owner),
        statefulset(owner, spec, replicas),
        # One node at a time: with 3 nodes that keeps a quorum, with 5 it keeps quorum + 1.
        pdb(owner, names.rabbitmq, COMPONENT, selector(owner, COMPONENT), maxUnavailable=1),
    ]

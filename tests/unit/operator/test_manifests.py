"""The pure manifest builders: what every child looks like, without a server."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
from typing import Any

import pytest

from trading_operator import api
from trading_operator.manifests import desired_children
from trading_operator.manifests import pairs as pair_manifests
from trading_operator.manifests.config import generated_secrets, pipeline_config
from trading_operator.manifests.rabbitmq import rabbitmq_conf
from trading_operator.spec import Owner, TradingSystemSpec

pytestmark = pytest.mark.unit

OWNER = Owner(name="prod", namespace="trading", uid="0000-1111")
BASE: dict[str, Any] = {
    "symbols": [{"name": "BTC-USD", "tickSize": "0.01", "lotSize": "0.001"}],
    "database": {"dev": True},
}


def spec(**overrides: Any) -> TradingSystemSpec:
    return TradingSystemSpec.parse({**BASE, **overrides})


def children(**overrides: Any) -> dict[tuple[str, str], dict[str, Any]]:
    built = desired_children(OWNER, spec(**overrides), rabbitmq_replicas=3)
    return {(m["kind"], m["metadata"]["name"]): m for m in built}


def containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    pod = manifest["spec"]["template"]["spec"] if "template" in manifest.get("spec", {}) else manifest["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_every_child_is_owned_labelled_and_unique() -> None:
    built = desired_children(OWNER, spec(), rabbitmq_replicas=3)
    keys = [(m["kind"], m["metadata"]["name"]) for m in built]
    assert len(keys) == len(set(keys))
    for manifest in built:
        meta = manifest["metadata"]
        assert meta["namespace"] == "trading"
        assert meta["ownerReferences"] == [OWNER.reference()]
        assert meta["labels"][api.LABEL_INSTANCE] == "prod"
        assert meta["labels"][api.LABEL_MANAGED_BY] == api.MANAGED_BY
        assert len(meta["name"]) <= 63


def test_containers_run_unprivileged_on_a_read_only_root() -> None:
    workloads = [
        m
        for m in desired_children(OWNER, spec(), rabbitmq_replicas=3)
        if m["kind"] in ("StatefulSet", "Deployment")
    ]
    workloads.append(
        pair_manifests.member_pod(OWNER, spec(), "matching", "prod-matching-0", api.ROLE_STANDBY)
    )
    for manifest in workloads:
        pod = manifest["spec"]["template"]["spec"] if manifest["kind"] != "Pod" else manifest["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in containers(manifest):
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert "resources" in container


def test_rabbitmq_statefulset() -> None:
    sts = children()[("StatefulSet", "prod-rabbitmq")]["spec"]
    assert sts["podManagementPolicy"] == "Parallel" and sts["serviceName"] == "prod-rabbitmq-nodes"
    assert sts["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    container = sts["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["tcpSocket"] == {"port": "amqp"}
    pre_stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert "await_online_quorum_plus_one" in pre_stop and "skipPreStopChecks" in pre_stop
    env = {e["name"]: e for e in container["env"]}
    assert env["RABBITMQ_NODENAME"]["value"].startswith("rabbit@$(MY_POD_NAME).$(K8S_SERVICE_NAME)")
    pdb = children()[("PodDisruptionBudget", "prod-rabbitmq")]["spec"]
    assert pdb["maxUnavailable"] == 1


def test_rabbitmq_empty_dir_has_no_claims_and_replicas_follow_the_argument() -> None:
    sts = desired_children(OWNER, spec(rabbitmq={"storage": {"emptyDir": True}}), rabbitmq_replicas=4)
    statefulset = next(m for m in sts if m["kind"] == "StatefulSet")["spec"]
    assert "volumeClaimTemplates" not in statefulset and statefulset["replicas"] == 4
    assert {"name": "data", "emptyDir": {}} in statefulset["template"]["spec"]["volumes"]


def test_rabbitmq_config_forms_a_quorum_queue_cluster() -> None:
    conf = rabbitmq_conf(OWNER, spec(rabbitmq={"replicas": 5}))
    assert "cluster_formation.peer_discovery_backend = rabbit_peer_discovery_k8s" in conf
    assert "cluster_formation.target_cluster_size_hint = 5" in conf
    assert "default_queue_type = quorum" in conf and "cluster_partition_handling = pause_minority" in conf
    assert "cluster_formation.k8s.hostname_suffix = .prod-rabbitmq-nodes.trading" in conf


def test_config_change_rolls_the_statefulset_and_the_coordinators() -> None:
    def hashes(**overrides: Any) -> tuple[str, str]:
        c = children(**overrides)
        sts = c[("StatefulSet", "prod-rabbitmq")]["spec"]["template"]["metadata"]["annotations"]
        dep = c[("Deployment", "prod-coordinator")]["spec"]["template"]["metadata"]["annotations"]
        return sts[f"{api.GROUP}/config-hash"], dep[f"{api.GROUP}/config-hash"]

    base = hashes()
    assert hashes(rabbitmq={"replicas": 5})[0] != base[0]
    more_symbols = [*BASE["symbols"], {"name": "ETH-USD", "tickSize": "0.1", "lotSize": "0.01"}]
    assert hashes(symbols=more_symbols)[1] != base[1]


def test_pair_service_selects_the_active_member_only() -> None:
    for pair in api.PAIRS:
        selector = children()[("Service", f"prod-{pair}")]["spec"]["selector"]
        assert selector == {
            api.LABEL_INSTANCE: "prod",
            api.LABEL_COMPONENT: pair,
            api.LABEL_PAIR: pair,
            api.LABEL_ROLE: api.ROLE_ACTIVE,
        }


def test_member_pod() -> None:
    pod = pair_manifests.member_pod(OWNER, spec(), "execution", "prod-execution-3", api.ROLE_STANDBY)
    labels = pod["metadata"]["labels"]
    assert labels[api.LABEL_ROLE] == "standby" and labels[api.LABEL_PAIR] == "execution"
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["trading-system"] and container["args"] == ["execution", "serve"]
    assert container["ports"] == [{"name": "http", "containerPort": api.SERVICE_HTTP_PORT, "protocol": "TCP"}]
    env = {e["name"]: e for e in container["env"]}
    assert env["TRADING_SYSTEM_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "prod-admin-token",
        "key": "token",
    }
    assert env["TRADING_SYSTEM_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "prod-postgres"
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_member_spec_hash_changes_with_the_image_only_when_the_pod_would() -> None:
    same = pair_manifests.member_spec_hash(OWNER, spec(), "matching")
    assert pair_manifests.member_spec_hash(OWNER, spec(paused=True), "matching") == same
    other = pair_manifests.member_spec_hash(OWNER, spec(image={"tag": "0.2.0"}), "matching")
    assert other != same


def test_external_database_uses_the_users_secret_and_no_dev_instance() -> None:
    c = children(database={"secretRef": {"name": "pg-prod", "key": "url"}})
    assert not [k for k in c if "postgres" in k[1]]
    pod = pair_manifests.member_pod(
        OWNER, spec(database={"secretRef": {"name": "pg-prod", "key": "url"}}), "matching", "m", "standby"
    )
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["TRADING_SYSTEM_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "pg-prod",
        "key": "url",
    }


def test_network_policies_and_monitors_follow_their_toggles() -> None:
    assert not [k for k in children(networkPolicy={"enabled": False}) if k[0] == "NetworkPolicy"]
    policies = {k[1]: m for k, m in children().items() if k[0] == "NetworkPolicy"}
    assert policies["prod-default-deny"]["spec"]["ingress"] == []
    execution = policies["prod-execution"]["spec"]["ingress"]
    assert execution == [{"ports": [{"protocol": "TCP", "port": api.SERVICE_HTTP_PORT}]}]
    assert not [k for k in children() if k[0] in ("ServiceMonitor", "PodMonitor")]
    monitors = {
        k for k in children(monitoring={"serviceMonitor": True}) if k[0] in ("ServiceMonitor", "PodMonitor")
    }
    assert monitors == {
        ("ServiceMonitor", "prod-rabbitmq"),
        ("ServiceMonitor", "prod-coordinator"),
        ("PodMonitor", "prod-pairs"),
    }


def test_coordinator_pdb_only_with_more_than_one_replica() -> None:
    assert ("PodDisruptionBudget", "prod-coordinator") in children()
    assert ("PodDisruptionBudget", "prod-coordinator") not in children(coordinator={"replicas": 1})


def test_generated_secrets_use_the_given_random_source() -> None:
    counter = itertools.count()

    def token(n: int) -> str:
        return f"t{next(counter)}-{n}"

    secrets = {s["metadata"]["name"]: s["stringData"] for s in generated_secrets(OWNER, spec(), token)}
    assert set(secrets) == {
        "prod-rabbitmq-erlang-cookie",
        "prod-rabbitmq-admin",
        "prod-admin-token",
        "prod-api-token",
        "prod-postgres",
    }
    admin = secrets["prod-rabbitmq-admin"]
    assert admin["url"] == f"amqp://ts-admin:{admin['password']}@prod-rabbitmq.trading.svc:5672/"
    assert f"default_pass = {admin['password']}" in admin["default_user.conf"]
    assert secrets["prod-postgres"]["dsn"].startswith("postgresql+asyncpg://trading:")


def test_pipeline_config_is_json_serialisable_and_points_at_services() -> None:
    config = pipeline_config(OWNER, spec())
    assert json.loads(json.dumps(config)) == config
    assert config["services"]["matching"] == "http://prod-matching.trading.svc:8080"
    assert config["rabbitmq"]["nodes"][2] == "prod-rabbitmq-2.prod-rabbitmq-nodes.trading.svc"


def test_the_dev_database_admits_every_pool_the_pipeline_may_open() -> None:
    """PostgreSQL's default 100 connections ran out on real pods during a failover: each
    coordinator replica's pool may double (its overflow), and a pair's old, new and
    replacement members overlap while one is fenced."""
    from trading_system.coordinator.service.app import CoordinatorConfig
    from trading_system.storage.engine import create_engine

    replicas = 3
    built = children(coordinator={"replicas": replicas})
    (postgres,) = containers(built[("Deployment", "prod-postgres")])
    args = postgres["args"]
    assert args[0] == "postgres"  # both the official and the local image's entrypoints
    limit = int(args[args.index("-c") + 1].removeprefix("max_connections="))
    member_pool = inspect.signature(create_engine).parameters["pool_size"].default
    coordinator_pool = next(f.default for f in dataclasses.fields(CoordinatorConfig) if f.name == "pool_size")
    assert isinstance(coordinator_pool, int)
    coordinators = replicas * 2 * coordinator_pool
    members = len(api.PAIRS) * 3 * 2 * member_pool
    assert limit >= coordinators + members + 10  # + the operator's tools and a psql

"""NetworkPolicies: deny by default, then open exactly the paths the pipeline uses.

The operator dials pods directly (health checks, /promote, RabbitMQ's management API), so
its pods are let in from any namespace by their ``app.kubernetes.io/name`` label.
"""

from __future__ import annotations

from typing import Any

from trading_operator import api
from trading_operator.manifests.common import Manifest, manifest, metadata, selector
from trading_operator.spec import Owner, TradingSystemSpec

OPERATOR_POD_LABELS = {api.LABEL_NAME: "trading-operator"}
PROMETHEUS_POD_LABELS = {api.LABEL_NAME: "prometheus"}


def _instance_labels(owner: Owner) -> dict[str, str]:
    # managed-by too: a Helm release named like the TradingSystem must not be caught.
    return {api.LABEL_INSTANCE: owner.name, api.LABEL_MANAGED_BY: api.MANAGED_BY}


def _instance_pods(owner: Owner) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": _instance_labels(owner)}}


def _from_any_namespace(pod_labels: dict[str, str]) -> dict[str, Any]:
    return {"namespaceSelector": {}, "podSelector": {"matchLabels": pod_labels}}


def _ports(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def _policy(owner: Owner, name: str, pods: dict[str, str], ingress: list[dict[str, Any]]) -> Manifest:
    return manifest(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        metadata(owner, name, "network"),
        spec={"podSelector": {"matchLabels": pods}, "policyTypes": ["Ingress"], "ingress": ingress},
    )


def children(owner: Owner, spec: TradingSystemSpec) -> list[Manifest]:
    if not spec.network_policy:
        return []
    name = owner.name
    scrape = [_from_any_namespace(PROMETHEUS_POD_LABELS)] if spec.metrics else []
    http = api.SERVICE_HTTP_PORT
    policies = [
        _policy(owner, f"{name}-default-deny", _instance_labels(owner), []),
        _policy(
            owner,
            f"{name}-rabbitmq",
            selector(owner, "rabbitmq"),
            [
                {"from": [_instance_pods(owner)], "ports": _ports(api.RABBITMQ_AMQP_PORT)},
                {
                    "from": [{"podSelector": {"matchLabels": selector(owner, "rabbitmq")}}],
                    "ports": _ports(
                        api.RABBITMQ_EPMD_PORT, api.RABBITMQ_DIST_PORT, api.RABBITMQ_MANAGEMENT_PORT
                    ),
                },
                {
                    "from": [_from_any_namespace(OPERATOR_POD_LABELS)],
                    "ports": _ports(api.RABBITMQ_MANAGEMENT_PORT),
                },
                *([{"from": scrape, "ports": _ports(api.RABBITMQ_PROMETHEUS_PORT)}] if scrape else []),
            ],
        ),
        # Matching and coordinators are internal: the pipeline, the operator and Prometheus.
        *(
            _policy(
                owner,
                f"{name}-{component}",
                selector(owner, component),
                [
                    {
                        "from": [_instance_pods(owner), _from_any_namespace(OPERATOR_POD_LABELS), *scrape],
                        "ports": _ports(http),
                    }
                ],
            )
            for component in ("matching", "coordinator")
        ),
        # Execution serves the order API to clients wherever they are; its tokens guard it.
        _policy(owner, f"{name}-execution", selector(owner, "execution"), [{"ports": _ports(http)}]),
    ]
    if spec.database.dev:
        policies.append(
            _policy(
                owner,
                f"{name}-postgres",
                selector(owner, "postgres"),
                [{"from": [_instance_pods(owner)], "ports": _ports(api.POSTGRES_PORT)}],
            )
        )
    return policies

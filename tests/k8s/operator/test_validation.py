"""Bad TradingSystems are rejected by the API server itself, with a message that says why."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.environment.kubernetes import ControlPlane
from tests.environment.processes import EnvironmentFailure
from tests.k8s.operator.conftest import apply, get_ts, trading_system
from trading_operator.k8s_io import Kube

pytestmark = pytest.mark.k8s


def rejected(plane: ControlPlane, obj: dict[str, Any]) -> str:
    with pytest.raises(EnvironmentFailure) as failure:
        apply(plane, obj)
    return str(failure.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"rabbitmq": {"replicas": 4}},
            'spec.rabbitmq.replicas: Unsupported value: 4: supported values: "3", "5"',
        ),
        ({"coordinator": {"replicas": 0}}, "spec.coordinator.replicas: Invalid value: 0"),
        ({"failover": {"mode": "sometimes"}}, 'spec.failover.mode: Unsupported value: "sometimes"'),
        ({"failover": {"failureThreshold": 99}}, "spec.failover.failureThreshold: Invalid value: 99"),
        (
            {"failover": {"probePeriodSeconds": 2, "probeTimeoutSeconds": 5}},
            "failover.probeTimeoutSeconds must not exceed failover.probePeriodSeconds",
        ),
        (
            {"database": {"dev": False}},
            "set exactly one of database.secretRef (production) or database.dev: true",
        ),
        ({"database": {"dev": True, "secretRef": {"name": "pg"}}}, "set exactly one of database.secretRef"),
        ({"symbols": []}, "spec.symbols: Invalid value: 0"),
        ({"symbols": [{"name": "BTC-USD", "tickSize": "0", "lotSize": "1"}]}, "spec.symbols[0].tickSize"),
        (
            {
                "symbols": [
                    {"name": "X", "tickSize": "1", "lotSize": "1"},
                    {"name": "X", "tickSize": "1", "lotSize": "1"},
                ]
            },
            'spec.symbols[1]: Duplicate value: {"name":"X"}',
        ),
        (
            {"matching": {"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}},
            "resources.limits.memory must not be below resources.requests.memory",
        ),
        (
            {"paused": "yes"},
            'spec.paused: Invalid value: "string": spec.paused in body must be of type boolean',
        ),
        ({"unknownField": 1}, 'unknown field "spec.unknownField"'),
    ],
)
def test_invalid_spec_is_rejected_with_a_clear_message(
    k8s_cluster: ControlPlane,
    k8s_namespace: str,
    ts_crd: dict[str, Any],
    overrides: dict[str, Any],
    message: str,
) -> None:
    output = rejected(k8s_cluster, trading_system(k8s_namespace, **overrides))
    assert message in output, output


def test_missing_database_and_long_names_are_rejected(
    k8s_cluster: ControlPlane, k8s_namespace: str, ts_crd: dict[str, Any]
) -> None:
    obj = trading_system(k8s_namespace)
    del obj["spec"]["database"]
    assert "spec.database: Required value" in rejected(k8s_cluster, obj)
    long_name = trading_system(k8s_namespace, name="x" * 49)
    assert "metadata.name must be at most 48 characters" in rejected(k8s_cluster, long_name)


def test_immutable_fields_cannot_change(
    k8s_cluster: ControlPlane, k8s_namespace: str, kube: Kube, ts_crd: dict[str, Any]
) -> None:
    apply(k8s_cluster, trading_system(k8s_namespace))
    for patch, message in [
        ({"spec": {"rabbitmq": {"storage": {"size": "20Gi"}}}}, "rabbitmq.storage is immutable once created"),
        ({"spec": {"database": {"dev": False, "secretRef": {"name": "pg"}}}}, "database.dev is immutable"),
    ]:
        with pytest.raises(EnvironmentFailure) as failure:
            k8s_cluster.kubectl(
                "patch", "ts", "ts", "-n", k8s_namespace, "--type=merge", "-p", json.dumps(patch)
            )
        assert message in str(failure.value)
    # Nothing changed: a rejected update is not half-applied.
    spec = get_ts(kube, k8s_namespace)["spec"]
    assert spec["rabbitmq"]["storage"] == {"emptyDir": True, "size": "10Gi"}
    assert spec["database"]["dev"] is True


def test_defaults_are_filled_in_by_the_server(
    k8s_cluster: ControlPlane, k8s_namespace: str, kube: Kube, ts_crd: dict[str, Any]
) -> None:
    obj = trading_system(k8s_namespace)
    obj["spec"] = {"symbols": obj["spec"]["symbols"], "database": {"dev": True}}
    apply(k8s_cluster, obj)
    spec = get_ts(kube, k8s_namespace)["spec"]
    assert spec["rabbitmq"]["replicas"] == 3
    assert spec["failover"]["mode"] == "automatic"
    assert spec["coordinator"]["replicas"] == 2
    assert spec["symbols"][0]["priceBandPercent"] == 10
    assert spec["paused"] is False

"""Fixtures for the operator against the real control plane: the fake pod processes and
helpers to build and inspect resources. The API client, the CRD and the operator as a real
process (``kube``, ``ts_crd``, ``operator``) are in tests/k8s/conftest.py, shared with the
end-to-end suite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.environment.kubernetes import REPO_ROOT, ControlPlane
from tests.k8s.conftest import OperatorProcess as OperatorProcess  # re-exported for the tests
from tests.k8s.operator.fakes import Fleet
from trading_operator import api
from trading_operator.k8s_io import Kube

SAMPLE = REPO_ROOT / "manifests" / "samples" / "tradingsystem.yaml"


@pytest.fixture
def fleet(kube: Kube, k8s_namespace: str) -> Iterator[Fleet]:
    with Fleet(kube, k8s_namespace) as running:
        yield running


def trading_system(namespace: str, name: str = "ts", **overrides: Any) -> dict[str, Any]:
    """A TradingSystem tuned for tests: emptyDir storage, fast probes, no cooldown."""
    spec: dict[str, Any] = {
        "symbols": [{"name": "BTC-USD", "tickSize": "0.01", "lotSize": "0.001"}],
        "database": {"dev": True},
        "rabbitmq": {"storage": {"emptyDir": True}},
        "failover": {
            "probePeriodSeconds": 1,
            "probeTimeoutSeconds": 1,
            "failureThreshold": 2,
            "cooldownSeconds": 0,
            "promoteTimeoutSeconds": 10,
            "fenceTimeoutSeconds": 10,
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def apply(plane: ControlPlane, obj: dict[str, Any]) -> str:
    return plane.kubectl("apply", "-f", "-", stdin=json.dumps(obj))


def get_ts(kube: Kube, namespace: str, name: str = "ts") -> dict[str, Any]:
    obj = kube.get(api.API_VERSION, api.KIND, namespace, name)
    assert obj is not None
    return obj


def condition(obj: dict[str, Any], type_: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return str(c["status"])
    return None


def is_ready(kube: Kube, namespace: str, name: str = "ts") -> bool:
    obj = get_ts(kube, namespace, name)
    return (obj.get("status") or {}).get("phase") == "Ready" and condition(obj, "Ready") == "True"


def pair_status(kube: Kube, namespace: str, pair: str, name: str = "ts") -> dict[str, Any]:
    return dict(((get_ts(kube, namespace, name).get("status") or {}).get("pairs") or {}).get(pair) or {})


def load_sample() -> dict[str, Any]:
    loaded = yaml.safe_load(SAMPLE.read_text())
    assert isinstance(loaded, dict)
    return loaded

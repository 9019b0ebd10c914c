"""The CRD's schema: structural, defaulted, validated, and the spec parser agrees with it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from trading_operator import api
from trading_operator.crd import apply_defaults, crd, defaulted_spec, spec_schema
from trading_operator.spec import TradingSystemSpec

pytestmark = pytest.mark.unit

MINIMAL = {
    "symbols": [{"name": "BTC-USD", "tickSize": "0.01", "lotSize": "0.001"}],
    "database": {"dev": True},
}


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{key}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")


def version() -> dict[str, Any]:
    versions = crd()["spec"]["versions"]
    assert len(versions) == 1
    return dict(versions[0])


def test_names_scope_and_subresources() -> None:
    spec = crd()["spec"]
    assert crd()["metadata"]["name"] == "tradingsystems.tradingsystem.io"
    assert spec["group"] == api.GROUP and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "TradingSystem" and spec["names"]["shortNames"] == ["ts"]
    assert version()["name"] == "v1alpha1" and version()["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = {c["name"]: c["jsonPath"] for c in version()["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Matching"] == ".status.pairs.matching.active"
    assert columns["Epoch"] == ".status.pairs.matching.epoch"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_schema_is_structural_and_closed() -> None:
    root = version()["schema"]["openAPIV3Schema"]
    for path, node in walk(root):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if path.startswith(".spec"):
            assert not node.get("x-kubernetes-preserve-unknown-fields"), path
        if node.get("type") == "object" and path.startswith(".spec"):
            assert "properties" in node, f"{path} is an open object"


def test_every_spec_field_is_described_and_bounded() -> None:
    for path, node in walk(spec_schema(), ".spec"):
        assert node.get("description"), f"{path} lacks a description"
        if node.get("type") == "integer" and "enum" not in node:
            assert "minimum" in node and "maximum" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path


def test_cross_field_and_immutable_rules_exist() -> None:
    rules = [
        (path, rule["rule"], rule["message"])
        for path, node in walk(spec_schema(), ".spec")
        for rule in node.get("x-kubernetes-validations", [])
    ]
    by_path = {path: rule for path, rule, _ in rules}
    assert by_path[".spec.rabbitmq.storage"] == "self == oldSelf"
    assert "self.probeTimeoutSeconds <= self.probePeriodSeconds" in by_path[".spec.failover"]
    assert any("oldSelf.dev" in rule for path, rule, _ in rules if path == ".spec.database")
    assert all(message for _, _, message in rules)


def test_defaults_satisfy_their_own_schema() -> None:
    spec = defaulted_spec(MINIMAL)
    for path, node in walk(spec_schema(), ""):
        value: Any = spec
        for part in [p for p in path.split(".") if p]:
            if part.endswith("[]"):
                break
            value = value.get(part) if isinstance(value, dict) else None
        else:
            if value is None:
                continue
            if "enum" in node:
                assert value in node["enum"], path
            if "minimum" in node:
                assert node["minimum"] <= value <= node["maximum"], path


def test_object_defaults_are_complete_so_cel_rules_can_read_them() -> None:
    failover_default = spec_schema()["properties"]["failover"]["default"]
    assert failover_default["probeTimeoutSeconds"] <= failover_default["probePeriodSeconds"]
    assert spec_schema()["properties"]["rabbitmq"]["default"]["storage"]["size"] == "10Gi"


def test_apply_defaults_never_overrides_present_values() -> None:
    spec = defaulted_spec({**MINIMAL, "rabbitmq": {"replicas": 5, "storage": {"emptyDir": True}}})
    assert spec["rabbitmq"]["replicas"] == 5
    assert spec["rabbitmq"]["storage"] == {"emptyDir": True, "size": "10Gi"}
    assert spec["symbols"][0]["priceBandPercent"] == 10
    assert apply_defaults({"type": "string", "default": "x"}, "y") == "y"


def test_parsed_spec_matches_the_schema_defaults() -> None:
    parsed = TradingSystemSpec.parse(MINIMAL)
    assert parsed.rabbitmq.replicas == 3 and parsed.rabbitmq.image == "rabbitmq:4.1-management"
    assert parsed.coordinator_replicas == 2
    assert parsed.failover.mode == "automatic" and parsed.failover.failure_threshold == 3
    assert parsed.database.dev and parsed.database.secret_name is None
    assert parsed.image.reference == "ghcr.io/trading-system/trading-system:0.1.0"
    assert parsed.metrics and not parsed.service_monitor and parsed.network_policy and not parsed.paused

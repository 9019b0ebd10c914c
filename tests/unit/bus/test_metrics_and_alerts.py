"""The metrics the issue asks for exist, and the alert rules only use metrics that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from trading_system.bus import BusMetrics

pytestmark = pytest.mark.unit

RULES = Path(__file__).parents[3] / "charts/trading-system/files/alerts/messaging-rules.yaml"


def exposed_names() -> set[str]:
    registry = CollectorRegistry()
    BusMetrics.for_registry(registry)
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    # Counters are exposed as <name>_total; rules refer to that form.
    names.update(f"{family.name}_total" for family in registry.collect() if family.type == "counter")
    return names


def test_the_metrics_of_the_issue_are_exposed() -> None:
    names = exposed_names()
    for metric in (
        "ts_bus_published_total",
        "ts_bus_confirmed_total",
        "ts_bus_nacked_total",
        "ts_bus_returned_total",
        "ts_bus_consumed_total",
        "ts_bus_acked_total",
        "ts_bus_redelivered_total",
        "ts_bus_retried_total",
        "ts_bus_dead_lettered_total",
        "ts_bus_parked_total",
        "ts_bus_breaker_state",
        "ts_bus_reconnects_total",
        "ts_bus_publish_latency_seconds",
        "ts_bus_queue_depth",
    ):
        assert metric in names, metric


def test_one_metrics_object_per_registry() -> None:
    registry = CollectorRegistry()
    assert BusMetrics.for_registry(registry) is BusMetrics.for_registry(registry)
    assert BusMetrics.for_registry(registry) is not BusMetrics.for_registry(CollectorRegistry())


def test_alert_rules_are_well_formed_and_use_existing_metrics() -> None:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    names = exposed_names()
    alerts = {rule["alert"] for rule in rules}
    assert {
        "TradingSystemDeadLetterQueueGrowing",
        "TradingSystemParkingQueueNotEmpty",
        "TradingSystemPublishBreakerOpen",
    } <= alerts
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        for metric in re.findall(r"\bts_bus_\w+", rule["expr"]):
            assert metric in names, (rule["alert"], metric)

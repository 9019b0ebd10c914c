"""Operator metrics, served on ``/metrics`` by prometheus-client."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "trading_operator_reconciles_total",
    "Reconcile rounds, by outcome.",
    ["namespace", "name", "outcome"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "trading_operator_reconcile_duration_seconds",
    "Time spent in one reconcile round.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
APPLIES = Counter(
    "trading_operator_child_applies_total",
    "Server-side applies of children (0 per round when nothing drifted).",
    ["namespace", "name", "kind"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "trading_operator_errors_total",
    "Errors while reconciling or failing over.",
    ["namespace", "name", "where"],
    registry=REGISTRY,
)
FAILOVERS = Counter(
    "trading_operator_failovers_total",
    "Finished failovers, by pair, kind and outcome.",
    ["namespace", "name", "pair", "kind", "outcome"],
    registry=REGISTRY,
)
FAILOVER_SECONDS = Histogram(
    "trading_operator_failover_duration_seconds",
    "From the epoch raise to the replacement standby existing.",
    ["pair", "kind"],
    buckets=(0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60, 120, 300),
    registry=REGISTRY,
)
EPOCH = Gauge(
    "trading_operator_pair_epoch",
    "Current epoch of each pair.",
    ["namespace", "name", "pair"],
    registry=REGISTRY,
)
PAIR_HEALTHY = Gauge(
    "trading_operator_pair_healthy",
    "1 when the pair has a healthy active and a promotable standby.",
    ["namespace", "name", "pair"],
    registry=REGISTRY,
)
PROBE_FAILURES = Gauge(
    "trading_operator_pair_active_probe_failures",
    "Consecutive failed probe rounds of the active member.",
    ["namespace", "name", "pair"],
    registry=REGISTRY,
)
RESOURCES = Gauge(
    "trading_operator_managed_resources",
    "TradingSystem resources this operator is reconciling.",
    registry=REGISTRY,
)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr, registry=REGISTRY)


def forget(namespace: str, name: str) -> None:
    """Drop the series of a deleted TradingSystem so they do not linger at their last value."""
    for gauge in (EPOCH, PAIR_HEALTHY, PROBE_FAILURES):
        for pair in ("matching", "execution"):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name, pair)

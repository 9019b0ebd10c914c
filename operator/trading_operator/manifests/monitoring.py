"""Prometheus Operator monitors, when ``monitoring.serviceMonitor`` asks for them.

Pair members are scraped through a PodMonitor: their Service routes to the active only,
and the standby's lag is exactly what an operator of the system wants to see.
"""

from __future__ import annotations

from trading_operator import api
from trading_operator.manifests.common import Manifest, Names, manifest, metadata, selector
from trading_operator.spec import Owner, TradingSystemSpec

MONITORING_API = "monitoring.coreos.com/v1"


def children(owner: Owner, spec: TradingSystemSpec) -> list[Manifest]:
    if not (spec.metrics and spec.service_monitor):
        return []
    names = Names(owner.name)
    monitors = [
        manifest(
            MONITORING_API,
            "ServiceMonitor",
            metadata(owner, name, "monitoring"),
            spec={
                "selector": {"matchLabels": selector(owner, component)},
                "endpoints": [{"port": port, "path": "/metrics", "interval": "30s"}],
            },
        )
        for name, component, port in (
            (names.rabbitmq, "rabbitmq", "prometheus"),
            (names.coordinator, "coordinator", "http"),
        )
    ]
    monitors.append(
        manifest(
            MONITORING_API,
            "PodMonitor",
            metadata(owner, f"{owner.name}-pairs", "monitoring"),
            spec={
                "selector": {
                    "matchLabels": {api.LABEL_INSTANCE: owner.name},
                    "matchExpressions": [{"key": api.LABEL_PAIR, "operator": "Exists"}],
                },
                "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
            },
        )
    )
    return monitors

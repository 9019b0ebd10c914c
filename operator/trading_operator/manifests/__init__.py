"""Pure manifest builders: TradingSystem spec in, Kubernetes objects (plain dicts) out."""

from __future__ import annotations

from trading_operator.manifests import config, coordinator, monitoring, network, pairs, postgres, rabbitmq
from trading_operator.manifests.common import Manifest, Names
from trading_operator.spec import Owner, TradingSystemSpec


def desired_children(owner: Owner, spec: TradingSystemSpec, *, rabbitmq_replicas: int) -> list[Manifest]:
    """Every child the reconciler applies, in dependency order (config before workloads).

    Not included: pair member Pods (the failover controller owns them) and the generated
    Secrets (created once by ``config.generated_secrets``, never applied again).
    """
    return [
        config.config_map(owner, spec),
        *rabbitmq.children(owner, spec, rabbitmq_replicas),
        *postgres.children(owner, spec),
        *pairs.children(owner, spec),
        *coordinator.children(owner, spec),
        *network.children(owner, spec),
        *monitoring.children(owner, spec),
    ]


__all__ = ["Manifest", "Names", "desired_children"]

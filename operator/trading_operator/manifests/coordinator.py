"""The coordinator: N interchangeable replicas, so a plain Deployment fits."""

from __future__ import annotations

from typing import Any

from trading_operator import api
from trading_operator.manifests.common import (
    SERVICE_UID,
    Manifest,
    Names,
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
    service_container,
    service_volumes,
    spread,
)
from trading_operator.manifests.config import pipeline_config
from trading_operator.spec import Owner, TradingSystemSpec, stable_hash

COMPONENT = "coordinator"


def deployment(owner: Owner, spec: TradingSystemSpec) -> Manifest:
    names = Names(owner.name)
    pod_spec: dict[str, Any] = {
        "serviceAccountName": names.coordinator,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(SERVICE_UID),
        "terminationGracePeriodSeconds": 30,
        "containers": [service_container(owner, spec, COMPONENT, spec.coordinator_resources)],
        "volumes": service_volumes(owner),
        "topologySpreadConstraints": spread(owner, COMPONENT),
    }
    if spec.image.pull_secrets:
        pod_spec["imagePullSecrets"] = image_pull_secrets(spec)
    return manifest(
        "apps/v1",
        "Deployment",
        metadata(owner, names.coordinator, COMPONENT),
        spec={
            "replicas": spec.coordinator_replicas,
            "selector": {"matchLabels": selector(owner, COMPONENT)},
            # Surge first: an in-doubt transaction needs a live replica to resume it.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": labels(owner, COMPONENT),
                    "annotations": {
                        f"{api.GROUP}/config-hash": stable_hash(pipeline_config(owner, spec)),
                        **scrape_annotations(spec, api.SERVICE_HTTP_PORT),
                    },
                },
                "spec": pod_spec,
            },
        },
    )


def coordinator_service(owner: Owner) -> Manifest:
    return service(owner, Names(owner.name).coordinator, COMPONENT, [("http", api.SERVICE_HTTP_PORT)])


def children(owner: Owner, spec: TradingSystemSpec) -> list[Manifest]:
    names = Names(owner.name)
    result = [
        service_account(owner, names.coordinator, COMPONENT),
        coordinator_service(owner),
        deployment(owner, spec),
    ]
    if spec.coordinator_replicas > 1:
        # With one replica a PDB could only block drains forever; that is left to the user.
        result.append(pdb(owner, names.coordinator, COMPONENT, selector(owner, COMPONENT), maxUnavailable=1))
    return result

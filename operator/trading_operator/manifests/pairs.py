"""The matching and execution pairs: member Pods, the Service that follows the active, PDBs.

Members are bare Pods, not a StatefulSet or Deployment: a workload controller cannot tell
an active from a standby, would recreate a fenced member under its old name, and would
roll the active before the standby. The operator owns their life cycle instead.
"""

from __future__ import annotations

from typing import Any

from trading_operator import api
from trading_operator.manifests.common import (
    SERVICE_UID,
    Manifest,
    Names,
    image_pull_secrets,
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
)
from trading_operator.spec import Owner, TradingSystemSpec, stable_hash

# A fenced member must stop quickly; its writes are already refused by the epoch fence.
MEMBER_TERMINATION_GRACE_SECONDS = 10


def pair_selector(owner: Owner, pair: str) -> dict[str, str]:
    return {**selector(owner, pair), api.LABEL_PAIR: pair}


def member_pod_spec(owner: Owner, spec: TradingSystemSpec, pair: str) -> dict[str, Any]:
    names = Names(owner.name)
    pod_spec: dict[str, Any] = {
        "serviceAccountName": names.pair(pair),
        "automountServiceAccountToken": False,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": MEMBER_TERMINATION_GRACE_SECONDS,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(SERVICE_UID),
        "containers": [service_container(owner, spec, pair, spec.pair_resources(pair))],
        "volumes": service_volumes(owner),
        # Spread the two members so one node failure cannot take both.
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": pair_selector(owner, pair)},
                        },
                    }
                ]
            }
        },
    }
    if spec.image.pull_secrets:
        pod_spec["imagePullSecrets"] = image_pull_secrets(spec)
    return pod_spec


def member_spec_hash(owner: Owner, spec: TradingSystemSpec, pair: str) -> str:
    return stable_hash(member_pod_spec(owner, spec, pair))


def member_pod(owner: Owner, spec: TradingSystemSpec, pair: str, name: str, role: str) -> Manifest:
    """A pair member. Every member starts as a standby; only a promotion makes it active."""
    pod_spec = member_pod_spec(owner, spec, pair)
    annotations = {
        api.ANNOTATION_SPEC_HASH: stable_hash(pod_spec),
        **scrape_annotations(spec, api.SERVICE_HTTP_PORT),
    }
    meta = metadata(
        owner,
        name,
        pair,
        extra_labels={api.LABEL_PAIR: pair, api.LABEL_ROLE: role},
        annotations=annotations,
    )
    return manifest("v1", "Pod", meta, spec=pod_spec)


def pair_service(owner: Owner, pair: str) -> Manifest:
    return service(
        owner,
        Names(owner.name).pair(pair),
        pair,
        [("http", api.SERVICE_HTTP_PORT)],
        # The role label is the switch: relabelling the members moves the endpoints.
        select={**pair_selector(owner, pair), api.LABEL_ROLE: api.ROLE_ACTIVE},
        extra_labels={api.LABEL_PAIR: pair},
    )


def children(owner: Owner, spec: TradingSystemSpec) -> list[Manifest]:
    result: list[Manifest] = []
    names = Names(owner.name)
    for pair in api.PAIRS:
        result.append(service_account(owner, names.pair(pair), pair))
        result.append(pair_service(owner, pair))
        # A drain may take one member at a time, never both.
        result.append(pdb(owner, names.pair(pair), pair, pair_selector(owner, pair), maxUnavailable=1))
    return result

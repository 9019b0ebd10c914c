"""The TradingSystem spec as typed, immutable values.

``TradingSystemSpec.parse`` first applies the CRD's own defaults (``crd.apply_defaults``),
so a spec that skipped the API server (unit tests, a dry run) means the same as one that
went through it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trading_operator import api
from trading_operator.crd import defaulted_spec

ResourceList = dict[str, str]


@dataclass(frozen=True, slots=True)
class Resources:
    requests: ResourceList
    limits: ResourceList

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Resources:
        return cls(
            requests={k: str(v) for k, v in data.get("requests", {}).items()},
            limits={k: str(v) for k, v in data.get("limits", {}).items()},
        )

    def to_k8s(self) -> dict[str, ResourceList]:
        result: dict[str, ResourceList] = {}
        if self.requests:
            result["requests"] = dict(self.requests)
        if self.limits:
            result["limits"] = dict(self.limits)
        return result


@dataclass(frozen=True, slots=True)
class Image:
    repository: str
    tag: str
    pull_policy: str
    pull_secrets: tuple[str, ...]

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    tick_size: str
    lot_size: str
    price_band_percent: int


@dataclass(frozen=True, slots=True)
class RabbitMQSpec:
    replicas: int
    image: str
    storage_size: str
    storage_class: str | None
    empty_dir: bool
    resources: Resources
    management_checks: bool


@dataclass(frozen=True, slots=True)
class DatabaseSpec:
    dev: bool
    secret_name: str | None
    secret_key: str
    dev_image: str


@dataclass(frozen=True, slots=True)
class FailoverSpec:
    mode: str
    probe_period_seconds: int
    probe_timeout_seconds: int
    failure_threshold: int
    promote_timeout_seconds: int
    fence_timeout_seconds: int
    cooldown_seconds: int
    max_promotion_lag: int
    history_limit: int


@dataclass(frozen=True, slots=True)
class TradingSystemSpec:
    image: Image
    symbols: tuple[Symbol, ...]
    rabbitmq: RabbitMQSpec
    database: DatabaseSpec
    matching_resources: Resources
    execution_resources: Resources
    coordinator_replicas: int
    coordinator_resources: Resources
    failover: FailoverSpec
    metrics: bool
    service_monitor: bool
    network_policy: bool
    paused: bool

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> TradingSystemSpec:
        spec = defaulted_spec(raw)
        image, rabbit, db = spec["image"], spec["rabbitmq"], spec["database"]
        failover = spec["failover"]
        secret = db.get("secretRef")
        return cls(
            image=Image(
                repository=image["repository"],
                tag=image["tag"],
                pull_policy=image["pullPolicy"],
                pull_secrets=tuple(image.get("pullSecrets", ())),
            ),
            symbols=tuple(
                Symbol(s["name"], s["tickSize"], s["lotSize"], int(s["priceBandPercent"]))
                for s in spec["symbols"]
            ),
            rabbitmq=RabbitMQSpec(
                replicas=int(rabbit["replicas"]),
                image=rabbit["image"],
                storage_size=rabbit["storage"]["size"],
                storage_class=rabbit["storage"].get("storageClassName"),
                empty_dir=bool(rabbit["storage"]["emptyDir"]),
                resources=Resources.parse(rabbit["resources"]),
                management_checks=bool(rabbit["managementChecks"]),
            ),
            database=DatabaseSpec(
                dev=bool(db["dev"]),
                secret_name=None if secret is None else secret["name"],
                secret_key="dsn" if secret is None else secret["key"],
                dev_image=db["devImage"],
            ),
            matching_resources=Resources.parse(spec["matching"]["resources"]),
            execution_resources=Resources.parse(spec["execution"]["resources"]),
            coordinator_replicas=int(spec["coordinator"]["replicas"]),
            coordinator_resources=Resources.parse(spec["coordinator"]["resources"]),
            failover=FailoverSpec(
                mode=failover["mode"],
                probe_period_seconds=int(failover["probePeriodSeconds"]),
                probe_timeout_seconds=int(failover["probeTimeoutSeconds"]),
                failure_threshold=int(failover["failureThreshold"]),
                promote_timeout_seconds=int(failover["promoteTimeoutSeconds"]),
                fence_timeout_seconds=int(failover["fenceTimeoutSeconds"]),
                cooldown_seconds=int(failover["cooldownSeconds"]),
                max_promotion_lag=int(failover["maxPromotionLag"]),
                history_limit=int(failover["historyLimit"]),
            ),
            metrics=bool(spec["monitoring"]["metrics"]),
            service_monitor=bool(spec["monitoring"]["serviceMonitor"]),
            network_policy=bool(spec["networkPolicy"]["enabled"]),
            paused=bool(spec["paused"]),
        )

    def pair_resources(self, pair: str) -> Resources:
        return self.matching_resources if pair == "matching" else self.execution_resources


@dataclass(frozen=True, slots=True)
class Owner:
    """The TradingSystem a child belongs to: what owner references and labels need."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def stable_hash(value: Any) -> str:
    """A short digest of JSON-able data; used to roll pods when their config changes."""
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]

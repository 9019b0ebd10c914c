"""The TradingSystem CustomResourceDefinition: the one source of its schema.

``charts/trading-system/crds/tradingsystems.yaml`` is generated from ``crd()`` (``python -m
trading_operator crd``) and a test fails if it drifts. The operator reads its defaults from
the same schema (``apply_defaults``), so the API server and the unit tests agree on what an
omitted field means.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from trading_operator import api

Schema = dict[str, Any]

# The regular expression Kubernetes itself publishes for resource.Quantity.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# A positive decimal (a zero tick or lot size would divide by zero downstream).
POSITIVE_DECIMAL_PATTERN = r"^([1-9][0-9]{0,11}(\.[0-9]{1,12})?|0\.[0-9]{0,11}[1-9][0-9]{0,11})$"
SYMBOL_PATTERN = r"^[A-Z0-9]{1,12}([-/][A-Z0-9]{1,12})?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
IMAGE_PATTERN = r"^[^\s]+$"
# A pair member is "<ts>-<pair>-<n>" and must stay a DNS label; "-execution-" plus a
# three-digit index leaves 48 characters for the resource name.
MAX_NAME_LENGTH = 48


def _obj(
    properties: Mapping[str, Schema],
    description: str,
    *,
    required: tuple[str, ...] = (),
    default: Any = None,
    rules: tuple[tuple[str, str], ...] = (),
) -> Schema:
    schema: Schema = {"type": "object", "description": description, "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    if default is not None:
        # The API server validates a default as written (nested defaults are not applied
        # first), so a CEL rule on this object would see missing fields: fill them in here.
        schema["default"] = apply_defaults(schema, default)
    if rules:
        schema["x-kubernetes-validations"] = [{"rule": rule, "message": message} for rule, message in rules]
    return schema


def _int(description: str, *, default: int | None, minimum: int, maximum: int) -> Schema:
    schema: Schema = {"type": "integer", "description": description, "minimum": minimum, "maximum": maximum}
    if default is not None:
        schema["default"] = default
    return schema


def _str(
    description: str,
    *,
    default: str | None = None,
    pattern: str | None = None,
    enum: tuple[str, ...] = (),
    max_length: int | None = None,
) -> Schema:
    schema: Schema = {"type": "string", "description": description}
    if default is not None:
        schema["default"] = default
    if pattern is not None:
        schema["pattern"] = pattern
    if enum:
        schema["enum"] = list(enum)
    if max_length is not None:
        schema["maxLength"] = max_length
    return schema


def _bool(description: str, *, default: bool) -> Schema:
    return {"type": "boolean", "description": description, "default": default}


def _immutable(message: str) -> tuple[str, str]:
    return ("self == oldSelf", message)


def _quantity(description: str) -> Schema:
    return {
        "description": description,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN,
        "maxLength": 32,
        "x-kubernetes-int-or-string": True,
    }


def _resource_list(description: str) -> Schema:
    return _obj(
        {
            "cpu": _quantity("CPU, e.g. 500m or 2."),
            "memory": _quantity("Memory, e.g. 512Mi or 2Gi."),
            "ephemeral-storage": _quantity("Node-local scratch space."),
        },
        description,
    )


def _resources(component: str, requests: dict[str, str], limits: dict[str, str]) -> Schema:
    # int-or-string quantities are dyn in CEL, so string() first; quantity() then compares
    # "1Gi" and "1024Mi" as the same amount.
    rule = (
        "!has(self.requests) || !has(self.limits) || !has(self.requests.memory) || "
        "!has(self.limits.memory) || "
        "quantity(string(self.limits.memory)).compareTo(quantity(string(self.requests.memory))) >= 0"
    )
    return _obj(
        {
            "requests": _resource_list("Guaranteed resources (the scheduler reserves these)."),
            "limits": _resource_list("Upper bounds; memory over the limit is OOM-killed."),
        },
        f"Container resources of {component}.",
        default={"requests": requests, "limits": limits},
        rules=((rule, "resources.limits.memory must not be below resources.requests.memory"),),
    )


def _image_schema() -> Schema:
    return _obj(
        {
            "repository": _str(
                "Image of the operator and all services (one image, several commands).",
                default="ghcr.io/trading-system/trading-system",
                pattern=IMAGE_PATTERN,
                max_length=255,
            ),
            "tag": _str("Image tag.", default="0.1.0", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"),
            "pullPolicy": _str(
                "When the kubelet pulls the image.",
                default="IfNotPresent",
                enum=("Always", "IfNotPresent", "Never"),
            ),
            "pullSecrets": {
                "type": "array",
                "description": "Names of image pull Secrets in the resource's namespace.",
                "maxItems": 8,
                "items": _str("Secret name.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253),
            },
        },
        "The one image that holds the services.",
        default={},
    )


def _symbols_schema() -> Schema:
    return {
        "type": "array",
        "description": "Instruments traded: one order book per symbol.",
        "minItems": 1,
        "maxItems": 500,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["name"],
        "items": _obj(
            {
                "name": _str("Symbol, e.g. BTC-USD.", pattern=SYMBOL_PATTERN, max_length=25),
                "tickSize": _str(
                    'Price increment as a positive decimal string, e.g. "0.01".',
                    pattern=POSITIVE_DECIMAL_PATTERN,
                    max_length=25,
                ),
                "lotSize": _str(
                    "Quantity increment as a positive decimal string.",
                    pattern=POSITIVE_DECIMAL_PATTERN,
                    max_length=25,
                ),
                "priceBandPercent": _int(
                    "Orders priced further than this from the reference price are rejected.",
                    default=10,
                    minimum=1,
                    maximum=100,
                ),
            },
            "One tradable instrument.",
            required=("name", "tickSize", "lotSize"),
        ),
    }


def _rabbitmq_schema() -> Schema:
    storage = _obj(
        {
            "size": _str("Size of each node's volume.", default="10Gi", pattern=QUANTITY_PATTERN),
            "storageClassName": _str(
                "StorageClass of the volumes; the cluster default when omitted.",
                pattern=DNS_SUBDOMAIN_PATTERN,
                max_length=253,
            ),
            "emptyDir": _bool(
                "Keep messages in an emptyDir instead of a volume: for trying things out only, "
                "a node restart loses its data.",
                default=False,
            ),
        },
        "Message store of each RabbitMQ node. Immutable: StatefulSet volume claims cannot change.",
        default={},
        rules=(_immutable("rabbitmq.storage is immutable once created"),),
    )
    return _obj(
        {
            "replicas": {
                "type": "integer",
                "description": "RabbitMQ nodes; quorum queues need an odd count of at least 3.",
                "enum": [3, 5],
                "default": 3,
            },
            "image": _str(
                "RabbitMQ image with the management and prometheus plugins.",
                default="rabbitmq:4.1-management",
                pattern=IMAGE_PATTERN,
                max_length=255,
            ),
            "storage": storage,
            "resources": _resources(
                "each RabbitMQ node", {"cpu": "500m", "memory": "1Gi"}, {"memory": "2Gi"}
            ),
            "managementChecks": _bool(
                "Ask each node's management API for alarms, cluster membership and quorum queue "
                "health, not only pod readiness.",
                default=True,
            ),
        },
        "The RabbitMQ cluster (quorum queues by default).",
        default={},
    )


def _database_schema() -> Schema:
    secret_ref = _obj(
        {
            "name": _str(
                "Secret in the resource's namespace.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253
            ),
            "key": _str("Key holding the SQLAlchemy DSN.", default="dsn", max_length=253),
        },
        "Secret holding the PostgreSQL connection string.",
        required=("name",),
    )
    return _obj(
        {
            "secretRef": secret_ref,
            "dev": _bool(
                "Run a single, unreplicated PostgreSQL inside the TradingSystem for trying it out.",
                default=False,
            ),
            "devImage": _str(
                "PostgreSQL image used when dev is true.", default="postgres:17", pattern=IMAGE_PATTERN
            ),
        },
        "Where durable state lives: an existing PostgreSQL (secretRef) or a dev instance.",
        rules=(
            (
                "has(self.secretRef) != self.dev",
                "set exactly one of database.secretRef (production) or database.dev: true",
            ),
            # A transition rule: it is only evaluated on updates, when oldSelf exists.
            ("self.dev == oldSelf.dev", "database.dev is immutable: the data would not move"),
        ),
    )


def _pair_schema(pair: str) -> Schema:
    return _obj(
        {
            "resources": _resources(
                f"each {pair} member", {"cpu": "500m", "memory": "512Mi"}, {"memory": "1Gi"}
            )
        },
        f"The {pair} pair: one active member and one warm standby.",
        default={},
    )


def _coordinator_schema() -> Schema:
    return _obj(
        {
            "replicas": _int("Coordinator replicas, all active.", default=2, minimum=1, maximum=9),
            "resources": _resources(
                "each coordinator", {"cpu": "250m", "memory": "256Mi"}, {"memory": "512Mi"}
            ),
        },
        "Three-phase-commit coordinators.",
        default={},
    )


def _failover_schema() -> Schema:
    return _obj(
        {
            "mode": _str(
                "automatic promotes the standby after failureThreshold failed rounds; manual only reports.",
                default="automatic",
                enum=("automatic", "manual"),
            ),
            "probePeriodSeconds": _int("Seconds between probe rounds.", default=5, minimum=1, maximum=300),
            "probeTimeoutSeconds": _int("Timeout of each HTTP probe.", default=2, minimum=1, maximum=60),
            "failureThreshold": _int(
                "Consecutive failed rounds before failing over.", default=3, minimum=1, maximum=20
            ),
            "promoteTimeoutSeconds": _int(
                "How long a standby may take to confirm its promotion before another member is tried.",
                default=60,
                minimum=1,
                maximum=3600,
            ),
            "fenceTimeoutSeconds": _int(
                "How long to wait for the old active to disappear; the epoch fence holds regardless.",
                default=30,
                minimum=1,
                maximum=3600,
            ),
            "cooldownSeconds": _int(
                "Minimum time between two automatic failovers (stops ping-pong).",
                default=60,
                minimum=0,
                maximum=86400,
            ),
            "maxPromotionLag": _int(
                "A standby further behind the journal than this many entries is not promoted.",
                default=1000,
                minimum=0,
                maximum=1_000_000_000,
            ),
            "historyLimit": _int("Failovers kept in status per pair.", default=10, minimum=1, maximum=50),
        },
        "Health checking and failover of the matching and execution pairs.",
        default={},
        rules=(
            (
                "self.probeTimeoutSeconds <= self.probePeriodSeconds",
                "failover.probeTimeoutSeconds must not exceed failover.probePeriodSeconds",
            ),
        ),
    )


def spec_schema() -> Schema:
    return _obj(
        {
            "image": _image_schema(),
            "symbols": _symbols_schema(),
            "rabbitmq": _rabbitmq_schema(),
            "database": _database_schema(),
            "matching": _pair_schema("matching"),
            "execution": _pair_schema("execution"),
            "coordinator": _coordinator_schema(),
            "failover": _failover_schema(),
            "monitoring": _obj(
                {
                    "metrics": _bool("Expose /metrics and annotate pods for scraping.", default=True),
                    "serviceMonitor": _bool(
                        "Create Prometheus Operator ServiceMonitors (needs its CRDs).", default=False
                    ),
                },
                "Metrics.",
                default={},
            ),
            "networkPolicy": _obj(
                {"enabled": _bool("Restrict traffic between components to what they need.", default=True)},
                "NetworkPolicies.",
                default={},
            ),
            "paused": _bool(
                "Stop changing anything (children, failovers); status keeps being reported.", default=False
            ),
        },
        "Desired state of a trading pipeline.",
        # No default for database: silently running a dev PostgreSQL in production would be worse
        # than a clear "required" error.
        required=("symbols", "database"),
    )


def _condition_schema() -> Schema:
    return _obj(
        {
            "type": _str("Condition type, e.g. Ready.", max_length=316),
            "status": _str("True, False or Unknown.", enum=("True", "False", "Unknown")),
            "reason": _str("CamelCase machine-readable reason.", max_length=1024),
            "message": _str("Human-readable detail.", max_length=32768),
            "lastTransitionTime": {
                "type": "string",
                "format": "date-time",
                "description": "When status changed.",
            },
            "observedGeneration": {
                "type": "integer",
                "description": "Generation the condition was computed for.",
            },
        },
        "A condition following the Kubernetes API conventions.",
        required=("type", "status", "lastTransitionTime", "reason", "message"),
    )


def _failover_record_schema() -> Schema:
    return _obj(
        {
            "kind": _str("election, failover or switchover.", enum=("election", "failover", "switchover")),
            "from": _str("The deposed active, if any."),
            "to": _str("The promoted member."),
            "epoch": {"type": "integer"},
            "reason": {"type": "string"},
            "startedAt": {"type": "string", "format": "date-time"},
            "endedAt": {"type": "string", "format": "date-time"},
            "durationSeconds": {"type": "number"},
            "outcome": _str("completed or abandoned.", enum=("completed", "abandoned")),
        },
        "One finished failover.",
    )


def _pair_status_schema() -> Schema:
    return _obj(
        {
            "active": _str("The member the pair's Service routes to."),
            "standby": _str("The warm standby."),
            "epoch": {"type": "integer", "description": "Only grows; every fenced write carries it."},
            "health": _str(
                "healthy, degraded or failing_over.", enum=("healthy", "degraded", "failing_over")
            ),
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "failingOver": {"type": "boolean"},
            "failoverStep": {"type": "string"},
            "lastFailoverTime": {"type": "string", "format": "date-time"},
            "lastFailoverReason": {"type": "string"},
            "failoverCount": {"type": "integer"},
            "history": {"type": "array", "maxItems": 50, "items": _failover_record_schema()},
            "decisionState": _str(
                "The failover decision's full state as JSON; the operator resumes a failover from it.",
            ),
        },
        "One active/standby pair.",
    )


def status_schema() -> Schema:
    return _obj(
        {
            "phase": _str(
                "Summary for humans; conditions are the API.",
                enum=(
                    "Pending",
                    "Creating",
                    "Ready",
                    "Degraded",
                    "FailingOver",
                    "Paused",
                    "Deleting",
                    "Error",
                ),
            ),
            "message": {"type": "string"},
            "observedGeneration": {"type": "integer"},
            "conditions": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": _condition_schema(),
            },
            "rabbitmq": _obj(
                {
                    "replicas": {"type": "integer"},
                    "readyReplicas": {"type": "integer"},
                    "targetReplicas": {"type": "integer"},
                    "quorumStatus": {"type": "string"},
                    "alarms": {"type": "array", "items": {"type": "string"}},
                    "runningNodes": {"type": "integer"},
                },
                "RabbitMQ cluster health.",
            ),
            "coordinator": _obj(
                {"replicas": {"type": "integer"}, "readyReplicas": {"type": "integer"}},
                "Coordinator replicas.",
            ),
            "pairs": _obj(
                {pair: _pair_status_schema() for pair in api.PAIRS},
                "Active/standby pairs.",
            ),
        },
        "Observed state, written by the operator.",
    )


def _printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Matching", "type": "string", "jsonPath": ".status.pairs.matching.active"},
        {"name": "Epoch", "type": "integer", "jsonPath": ".status.pairs.matching.epoch"},
        {"name": "Execution", "type": "string", "jsonPath": ".status.pairs.execution.active", "priority": 1},
        {"name": "Exec-Epoch", "type": "integer", "jsonPath": ".status.pairs.execution.epoch", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def crd() -> dict[str, Any]:
    root = _obj(
        {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
        "A high-availability trading pipeline: RabbitMQ, matching and execution pairs, coordinators.",
        required=("spec",),
        rules=(
            (
                f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
                f"metadata.name must be at most {MAX_NAME_LENGTH} characters (pod names derive from it)",
            ),
        ),
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": api.CRD_NAME,
            "labels": {api.LABEL_PART_OF: api.PART_OF},
        },
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["all", "trading"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """Fill in defaults the way the API server does for a structural schema.

    Defaults apply to absent object properties (and are themselves defaulted), never to
    values that are present; array items are defaulted item by item.
    """
    if isinstance(value, Mapping) and schema.get("type") == "object":
        result = dict(copy.deepcopy(value))
        for key, sub in schema.get("properties", {}).items():
            if key not in result and "default" in sub:
                result[key] = copy.deepcopy(sub["default"])
            if key in result:
                result[key] = apply_defaults(sub, result[key])
        return result
    if isinstance(value, list) and schema.get("type") == "array":
        return [apply_defaults(schema.get("items", {}), item) for item in value]
    return value


def defaulted_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    result = apply_defaults(spec_schema(), spec)
    assert isinstance(result, dict)
    return result

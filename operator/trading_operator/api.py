"""Names of the TradingSystem API and of the labels and annotations the operator owns.

Everything that must agree between the CRD, the manifest builders, the handlers and the
chart is spelled once, here.
"""

from __future__ import annotations

from typing import Final

GROUP: Final = "tradingsystem.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "TradingSystem"
PLURAL: Final = "tradingsystems"
SINGULAR: Final = "tradingsystem"
SHORT_NAMES: Final = ("ts",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

FIELD_MANAGER: Final = "trading-operator"
FINALIZER: Final = f"{GROUP}/finalizer"

# Labels on every child. ``instance`` is the owning TradingSystem's name, which is how the
# operator's indexes map a child back to its owner without reading owner references.
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_PAIR: Final = f"{GROUP}/pair"
LABEL_ROLE: Final = f"{GROUP}/role"
MANAGED_BY: Final = "trading-operator"
PART_OF: Final = "trading-system"

ANNOTATION_PAUSED: Final = f"{GROUP}/paused"
ANNOTATION_SPEC_HASH: Final = f"{GROUP}/spec-hash"
# Manual switchover: set ``switchover.tradingsystem.io/<pair>`` to a fresh request id (any
# string); ``switchover.tradingsystem.io/<pair>-target`` optionally names the member to promote.
ANNOTATION_SWITCHOVER_PREFIX: Final = f"switchover.{GROUP}/"

ROLE_ACTIVE: Final = "active"
ROLE_STANDBY: Final = "standby"
ROLE_FENCED: Final = "fenced"

PAIRS: Final = ("matching", "execution")

# The HTTP port every service container serves /healthz, /readyz, /metrics and the admin
# endpoints on. The operator dials pod IPs on it, never Services.
SERVICE_HTTP_PORT: Final = 8080
RABBITMQ_AMQP_PORT: Final = 5672
RABBITMQ_MANAGEMENT_PORT: Final = 15672
RABBITMQ_PROMETHEUS_PORT: Final = 15692
RABBITMQ_EPMD_PORT: Final = 4369
RABBITMQ_DIST_PORT: Final = 25672
POSTGRES_PORT: Final = 5432

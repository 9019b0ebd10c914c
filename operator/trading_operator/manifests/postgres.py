"""A single PostgreSQL for trying the system out (``database.dev: true``); never for production."""

from __future__ import annotations

from trading_operator import api
from trading_operator.manifests.common import (
    POSTGRES_UID,
    Manifest,
    Names,
    container_security_context,
    labels,
    manifest,
    metadata,
    pod_security_context,
    secret_env,
    selector,
    service,
)
from trading_operator.spec import Owner, TradingSystemSpec

COMPONENT = "postgres"
DEV_MAX_CONNECTIONS = 400


def deployment(owner: Owner, spec: TradingSystemSpec) -> Manifest:
    names = Names(owner.name)
    return manifest(
        "apps/v1",
        "Deployment",
        metadata(owner, names.postgres, COMPONENT),
        spec={
            "replicas": 1,
            "selector": {"matchLabels": selector(owner, COMPONENT)},
            # Two postmasters on one data directory would corrupt it.
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": labels(owner, COMPONENT)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(POSTGRES_UID),
                    "containers": [
                        {
                            "name": "postgres",
                            "image": spec.database.dev_image,
                            "imagePullPolicy": spec.image.pull_policy,
                            # PostgreSQL's default of 100 connections is less than the
                            # pipeline's pools may open under load (each coordinator
                            # replica alone up to 64, old and new members overlapping
                            # during a failover); "postgres" first, for both entrypoints.
                            "args": ["postgres", "-c", f"max_connections={DEV_MAX_CONNECTIONS}"],
                            "env": [
                                {"name": "POSTGRES_USER", "value": "trading"},
                                {"name": "POSTGRES_DB", "value": "trading"},
                                secret_env("POSTGRES_PASSWORD", names.postgres, "password"),
                                {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                            ],
                            "ports": [
                                {"name": "postgres", "containerPort": api.POSTGRES_PORT, "protocol": "TCP"}
                            ],
                            "readinessProbe": {
                                "exec": {"command": ["pg_isready", "-U", "trading", "-d", "trading"]},
                                "periodSeconds": 5,
                                "timeoutSeconds": 3,
                                "failureThreshold": 3,
                            },
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "256Mi"},
                                "limits": {"memory": "1Gi"},
                            },
                            "securityContext": container_security_context(),
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                {"name": "run", "mountPath": "/var/run/postgresql"},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    # Dev only: the data goes with the pod.
                    "volumes": [
                        {"name": "data", "emptyDir": {}},
                        {"name": "run", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    )


def postgres_service(owner: Owner) -> Manifest:
    return service(owner, Names(owner.name).postgres, COMPONENT, [("postgres", api.POSTGRES_PORT)])


def children(owner: Owner, spec: TradingSystemSpec) -> list[Manifest]:
    return [deployment(owner, spec), postgres_service(owner)] if spec.database.dev else []

"""The pipeline's ConfigMap and the generated credential Secrets.

Secrets are created once and never rewritten (a rotated Erlang cookie would split the
RabbitMQ cluster; a rotated token would lock out running members), so their builders take
the random source as an argument and the reconciler only ever creates them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from trading_operator import api
from trading_operator.manifests.common import Manifest, Names, manifest, metadata
from trading_operator.spec import Owner, TradingSystemSpec

TokenSource = Callable[[int], str]


def pipeline_config(owner: Owner, spec: TradingSystemSpec) -> dict[str, Any]:
    names = Names(owner.name)
    svc = f"{owner.namespace}.svc"
    return {
        "instance": owner.name,
        "namespace": owner.namespace,
        "symbols": [
            {
                "name": s.name,
                "tickSize": s.tick_size,
                "lotSize": s.lot_size,
                "priceBandPercent": s.price_band_percent,
            }
            for s in spec.symbols
        ],
        "rabbitmq": {
            "host": f"{names.rabbitmq}.{svc}",
            "port": api.RABBITMQ_AMQP_PORT,
            "nodes": [
                f"{names.rabbitmq_pod(i)}.{names.rabbitmq_nodes}.{svc}" for i in range(spec.rabbitmq.replicas)
            ],
            "defaultQueueType": "quorum",
        },
        "services": {
            "matching": f"http://{names.pair('matching')}.{svc}:{api.SERVICE_HTTP_PORT}",
            "execution": f"http://{names.pair('execution')}.{svc}:{api.SERVICE_HTTP_PORT}",
            "coordinator": f"http://{names.coordinator}.{svc}:{api.SERVICE_HTTP_PORT}",
        },
        "failover": {
            "mode": spec.failover.mode,
            "probePeriodSeconds": spec.failover.probe_period_seconds,
            "failureThreshold": spec.failover.failure_threshold,
        },
    }


def config_map(owner: Owner, spec: TradingSystemSpec) -> Manifest:
    body = json.dumps(pipeline_config(owner, spec), indent=2, sort_keys=True)
    return manifest(
        "v1", "ConfigMap", metadata(owner, Names(owner.name).config, "config"), data={"config.json": body}
    )


def _secret(owner: Owner, name: str, component: str, data: dict[str, str]) -> Manifest:
    return manifest("v1", "Secret", metadata(owner, name, component), type="Opaque", stringData=data)


def generated_secrets(
    owner: Owner, spec: TradingSystemSpec, token: TokenSource = secrets.token_urlsafe
) -> list[Manifest]:
    """Credentials the operator generates; only created, never updated."""
    names = Names(owner.name)
    user, password = "ts-admin", token(24)
    rabbit_host = f"{names.rabbitmq}.{owner.namespace}.svc"
    result = [
        # 24 random bytes, like the RabbitMQ Cluster Operator; the cookie only has to be shared.
        _secret(owner, names.erlang_cookie, "rabbitmq", {".erlang.cookie": token(24)}),
        _secret(
            owner,
            names.rabbitmq_admin,
            "rabbitmq",
            {
                "username": user,
                "password": password,
                "url": f"amqp://{user}:{password}@{rabbit_host}:{api.RABBITMQ_AMQP_PORT}/",
                "default_user.conf": f"default_user = {user}\ndefault_pass = {password}\n",
            },
        ),
        _secret(owner, names.admin_token, "admin", {"token": token(32)}),
        _secret(owner, names.api_token, "api", {"token": token(32)}),
    ]
    if spec.database.dev:
        pg_password = token(24)
        host = f"{names.postgres}.{owner.namespace}.svc"
        result.append(
            _secret(
                owner,
                names.postgres,
                "postgres",
                {
                    "password": pg_password,
                    "dsn": f"postgresql+asyncpg://trading:{pg_password}@{host}:{api.POSTGRES_PORT}/trading",
                },
            )
        )
    return result

"""HTTP calls from the operator to the pods it manages, always by pod IP.

Service DNS may point at the wrong member during a failover (and does not resolve from
outside the cluster at all), so health checks and admin calls go to the address in the
pod's status.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from trading_operator import api
from trading_system.ha import MemberObservation, Role

_ROLES = {role.value: role for role in Role}


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    ip: str | None
    ready: bool  # the pod's Ready condition


def _url(ip: str, port: int, path: str) -> str:
    return f"http://{ip}:{port}{path}"


async def _get(session: aiohttp.ClientSession, url: str, seconds: float) -> tuple[int, Any]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=seconds)) as response:
        text = await response.text()
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        return response.status, body


async def probe_member(
    session: aiohttp.ClientSession, endpoint: Endpoint, seconds: float
) -> MemberObservation:
    """One probe round for one member: /healthz, /readyz (which reports role, epoch and lag)."""
    if endpoint.ip is None:
        return MemberObservation(name=endpoint.name, exists=True, ready=endpoint.ready)
    healthz_ok = readyz_ok = False
    role: Role | None = None
    epoch: int | None = None
    lag: int | None = None
    # Both at once: a hanging member then costs one timeout per round, not two.
    answers = await asyncio.gather(
        _get(session, _url(endpoint.ip, api.SERVICE_HTTP_PORT, "/healthz"), seconds),
        _get(session, _url(endpoint.ip, api.SERVICE_HTTP_PORT, "/readyz"), seconds),
        return_exceptions=True,
    )
    healthz, readyz = answers
    if isinstance(healthz, tuple):
        healthz_ok = healthz[0] == 200
    if isinstance(readyz, tuple):
        status, body = readyz
        readyz_ok = status == 200
        if isinstance(body, dict):
            role = _ROLES.get(str(body.get("role")))
            epoch = _int_or_none(body.get("epoch"))
            lag = _int_or_none(body.get("lag"))
    return MemberObservation(
        name=endpoint.name,
        exists=True,
        ready=endpoint.ready,
        healthz_ok=healthz_ok,
        readyz_ok=readyz_ok,
        role=role,
        epoch=epoch,
        lag=lag,
    )


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


async def admin_call(
    session: aiohttp.ClientSession, ip: str, action: str, token: str, body: dict[str, Any], seconds: float
) -> tuple[bool, str]:
    """POST /promote or /demote with the admin bearer token; (accepted, detail)."""
    url = _url(ip, api.SERVICE_HTTP_PORT, f"/{action}")
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with session.post(
            url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=seconds)
        ) as r:
            text = await r.text()
            return 200 <= r.status < 300, f"HTTP {r.status}: {text[:200]}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return False, f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True, slots=True)
class RabbitMQHealth:
    running_nodes: int | None = None
    alarms: tuple[str, ...] = ()
    quorum_status: str = "unknown"
    error: str | None = None


def quorum_status(queues: list[dict[str, Any]]) -> str:
    """ "ok" when every quorum queue has a leader and can lose a node without losing quorum."""
    critical = []
    for queue in queues:
        if queue.get("type") != "quorum":
            continue
        members = queue.get("members") or []
        online = queue.get("online") or []
        quorum = len(members) // 2 + 1
        name = queue.get("name", "?")
        if not queue.get("leader"):
            critical.append(f"{name}: no leader")
        elif len(online) < quorum + 1:
            critical.append(f"{name}: {len(online)}/{len(members)} members online")
    if critical:
        return "quorum-critical: " + "; ".join(sorted(critical)[:5])
    return "ok"


async def rabbitmq_health(
    session: aiohttp.ClientSession, ips: list[str], user: str, password: str, seconds: float
) -> RabbitMQHealth:
    """Ask the first node that answers for cluster membership, alarms and quorum queue health."""
    auth = aiohttp.BasicAuth(user, password)
    errors = []
    for ip in ips:
        base = f"http://{ip}:{api.RABBITMQ_MANAGEMENT_PORT}/api"
        try:
            async with asyncio.timeout(seconds * 3):
                nodes = await _authed_get(session, f"{base}/nodes", auth, seconds)
                queues = await _authed_get(
                    session, f"{base}/queues?columns=name,type,leader,members,online", auth, seconds
                )
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            errors.append(f"{ip}: {type(exc).__name__}")
            continue
        running = [n for n in nodes if n.get("running")]
        alarms = []
        for node in running:
            if node.get("mem_alarm"):
                alarms.append(f"memory on {node.get('name')}")
            if node.get("disk_free_alarm"):
                alarms.append(f"disk on {node.get('name')}")
        return RabbitMQHealth(len(running), tuple(alarms), quorum_status(queues))
    return RabbitMQHealth(
        error="management API unreachable: " + ", ".join(errors) if errors else "no node has an IP"
    )


async def _authed_get(
    session: aiohttp.ClientSession, url: str, auth: aiohttp.BasicAuth, seconds: float
) -> Any:
    async with session.get(url, auth=auth, timeout=aiohttp.ClientTimeout(total=seconds)) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        return await response.json(content_type=None)

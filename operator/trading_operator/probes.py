"""HTTP calls from the operator to the pods it manages, always by pod IP.

Service DNS may point at the wrong member during a failover (and does not resolve from
outside the cluster at all), so health checks and admin calls go to the address in the
pod's status.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from trading_operator import api
from trading_system.ha.probe import Endpoint, admin_call, probe_member

__all__ = ["Endpoint", "RabbitMQHealth", "admin_call", "probe_member", "quorum_status", "rabbitmq_health"]


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

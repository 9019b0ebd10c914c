"""HTTP probes and admin calls to a pair member, shared by the operator and the local supervisor.

I/O only: what the answers mean is decided by ``trading_system.ha.decide``. Calls go to
a member's own address (a pod IP, or a loopback address locally), never through a
Service, which may point at the wrong member in the middle of a failover.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from trading_system.ha.model import MemberObservation, Role

SERVICE_HTTP_PORT = 8080
_ROLES = {role.value: role for role in Role}


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str
    ip: str | None
    ready: bool  # the pod's Ready condition (locally: the process is running)
    port: int = SERVICE_HTTP_PORT


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
        _get(session, _url(endpoint.ip, endpoint.port, "/healthz"), seconds),
        _get(session, _url(endpoint.ip, endpoint.port, "/readyz"), seconds),
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
    session: aiohttp.ClientSession,
    ip: str,
    action: str,
    token: str,
    body: dict[str, Any],
    seconds: float,
    port: int = SERVICE_HTTP_PORT,
) -> tuple[bool, str]:
    """POST /promote or /demote with the admin bearer token; (accepted, detail)."""
    url = _url(ip, port, f"/{action}")
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with session.post(
            url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=seconds)
        ) as r:
            text = await r.text()
            return 200 <= r.status < 300, f"HTTP {r.status}: {text[:200]}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return False, f"{type(exc).__name__}: {exc}"

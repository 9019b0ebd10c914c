"""The HTTP surface every service shares: /healthz, /readyz, /metrics and auth middleware.

/healthz answers only "is the process alive and its event loop responsive" (a kubelet
liveness probe must not fail because a dependency is down, or restarts would cascade);
/readyz reports the service's own dependencies and role, for readiness and for the
operator's deeper health check.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from trading_system.common.auth import Scope, TokenSet

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReadinessCheck = Callable[[], Awaitable["Readiness"]]


@dataclass
class Readiness:
    ready: bool
    details: dict[str, object] = field(default_factory=dict)


def json_error(status: int, reason: str, **extra: object) -> web.Response:
    """A 4xx/5xx answer with a machine-readable reason, the shape every endpoint uses."""
    return web.json_response({"error": reason, **extra}, status=status)


def require(scope: Scope) -> Callable[[Handler], Handler]:
    """Mark a handler as needing a bearer token of ``scope``."""

    def mark(handler: Handler) -> Handler:
        handler.required_scope = scope  # type: ignore[attr-defined]
        return handler

    return mark


def auth_middleware(tokens: TokenSet) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        scope: Scope | None = getattr(handler, "required_scope", None)
        if scope is not None and not tokens.allows(request.headers.get("Authorization"), scope):
            status = 401 if "Authorization" not in request.headers else 403
            return json_error(status, f"a bearer token with scope '{scope}' is required")
        return await handler(request)

    return middleware


def json_errors_middleware() -> Middleware:
    """Turn aiohttp's plain-text HTTP errors (404, 405, bad JSON) into JSON answers."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return json_error(exc.status, exc.reason)
        except json.JSONDecodeError as exc:
            return json_error(400, f"request body is not valid JSON: {exc}")

    return middleware


class ServiceHttp:
    """Builds and runs one service's aiohttp application."""

    def __init__(
        self,
        readiness: ReadinessCheck,
        tokens: TokenSet,
        registry: CollectorRegistry = REGISTRY,
        loop_lag_limit: float = 1.0,
    ) -> None:
        self.readiness = readiness
        self.registry = registry
        self.loop_lag_limit = loop_lag_limit
        self.app = web.Application(middlewares=[json_errors_middleware(), auth_middleware(tokens)])
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_get("/metrics", self._metrics)
        self._runner: web.AppRunner | None = None

    async def _healthz(self, request: web.Request) -> web.Response:
        # A blocked loop delays this sleep; a lag past the limit means the process is wedged.
        start = time.monotonic()
        await asyncio.sleep(0)
        lag = time.monotonic() - start
        ok = lag < self.loop_lag_limit
        return web.json_response({"alive": ok, "loop_lag_seconds": lag}, status=200 if ok else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        result = await self.readiness()
        return web.json_response(
            {"ready": result.ready, **result.details}, status=200 if result.ready else 503
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def start(self, host: str, port: int) -> int:
        """Serve on host:port (port 0 picks a free one); returns the bound port."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

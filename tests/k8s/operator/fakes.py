"""Real HTTP processes playing the pods KWOK cannot run.

KWOK gives each pod an address inside 127.64.0.0/16, so a test can listen on exactly the
IP the operator reads from the pod's status. ``Fleet`` watches a namespace and, for every
pair member, serves ``/healthz``, ``/readyz`` (role, epoch, lag), and bearer-authenticated
``/promote`` and ``/demote`` on port 8080 — the contract in docs/operator.md — and for every
RabbitMQ pod the parts of the management API the operator reads.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from trading_operator import api
from trading_operator.k8s_io import Kube


@dataclass
class Member:
    """One fake matching or execution process and what it was asked to do."""

    name: str
    ip: str
    instance: str
    role: str = "standby"
    epoch: int = 0
    lag: int = 0
    healthy: bool = True
    refuse_promotion: bool = False  # answer /promote with 503, like a member still catching up
    promotions: list[tuple[float, int]] = field(default_factory=list)
    demotions: list[float] = field(default_factory=list)
    rejected_auth: int = 0


class Fleet:
    """Fake pods of one namespace, kept in step with the pods the API server reports."""

    def __init__(self, kube: Kube, namespace: str, *, rabbitmq_nodes_running: int | None = None) -> None:
        self.kube = kube
        self.namespace = namespace
        self.members: dict[str, Member] = {}
        self.rabbitmq_ips: dict[str, str] = {}
        self.rabbitmq_nodes_running = rabbitmq_nodes_running
        self.quorum_online: int | None = None  # online members of the one quorum queue reported
        self._runners: dict[str, web.AppRunner] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fleet-{namespace}", daemon=True)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name=f"fleet-poll-{namespace}", daemon=True)
        self._lock = threading.Lock()
        self.errors: list[str] = []

    # -- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> Fleet:
        self._thread.start()
        self._poller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._poller.join(timeout=10)
        for name in list(self._runners):
            self._call(self._stop_server(name))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=15)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # the API server may be busy; the next poll retries
                self.errors.append(repr(exc))
            self._stop.wait(0.1)

    def _sync(self) -> None:
        pods = self.kube.list("v1", "Pod", self.namespace, f"{api.LABEL_MANAGED_BY}={api.MANAGED_BY}")
        seen: set[str] = set()
        for pod in pods:
            name = pod["metadata"]["name"]
            ip = (pod.get("status") or {}).get("podIP")
            component = (pod["metadata"].get("labels") or {}).get(api.LABEL_COMPONENT)
            if not ip or pod["metadata"].get("deletionTimestamp"):
                continue
            if component in api.PAIRS:
                seen.add(name)
                if name not in self._runners:
                    member = Member(name, ip, pod["metadata"]["labels"][api.LABEL_INSTANCE])
                    with self._lock:
                        self.members[name] = member
                    self._call(self._start(name, ip, api.SERVICE_HTTP_PORT, self._member_app(member)))
            elif component == "rabbitmq":
                seen.add(name)
                if name not in self._runners:
                    self.rabbitmq_ips[name] = ip
                    self._call(self._start(name, ip, api.RABBITMQ_MANAGEMENT_PORT, self._rabbitmq_app()))
        for name in set(self._runners) - seen:
            # The pod is gone: so is its process, as a kubelet would make it.
            self._call(self._stop_server(name))
            with self._lock:
                gone = self.members.get(name)
                if gone is not None:
                    gone.healthy = False
            self.rabbitmq_ips.pop(name, None)

    async def _start(self, name: str, ip: str, port: int, app: web.Application) -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, ip, port, reuse_address=True).start()
        self._runners[name] = runner

    async def _stop_server(self, name: str) -> None:
        runner = self._runners.pop(name, None)
        if runner is not None:
            await runner.cleanup()

    # -- what tests use ------------------------------------------------------------------

    def member(self, name: str) -> Member:
        with self._lock:
            return self.members[name]

    def kill(self, name: str) -> None:
        """The process dies: nothing listens on its pod IP any more (the pod stays)."""
        self._call(self._stop_server(name))
        with self._lock:
            self.members[name].healthy = False

    def actives(self) -> Iterator[Member]:
        with self._lock:
            return iter([m for m in self.members.values() if m.role == "active" and m.name in self._runners])

    # -- the fake processes --------------------------------------------------------------

    def _token(self, instance: str) -> str | None:
        return self.kube.read_secret_value(self.namespace, f"{instance}-admin-token", "token")

    def _member_app(self, member: Member) -> web.Application:
        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"ok": member.healthy}, status=200 if member.healthy else 503)

        async def readyz(_: web.Request) -> web.Response:
            body = {"role": member.role, "epoch": member.epoch, "lag": member.lag}
            return web.json_response(body, status=200 if member.healthy else 503)

        async def admin(request: web.Request, action: str) -> web.Response:
            token = await asyncio.to_thread(self._token, member.instance)
            if request.headers.get("Authorization") != f"Bearer {token}":
                member.rejected_auth += 1
                return web.json_response({"error": "unauthorized"}, status=401)
            payload = await request.json()
            epoch = int(payload.get("epoch", 0))
            if action == "demote":
                member.role = "fenced"
                member.demotions.append(time.time())
                return web.json_response({"role": member.role})
            if member.refuse_promotion:
                return web.json_response({"error": "catching up"}, status=503)
            if epoch < member.epoch:
                return web.json_response({"error": f"stale epoch {epoch} < {member.epoch}"}, status=409)
            if not (member.role == "active" and member.epoch == epoch):
                member.promotions.append((time.time(), epoch))
            member.role, member.epoch = "active", epoch
            return web.json_response({"role": member.role, "epoch": member.epoch})

        async def promote(request: web.Request) -> web.Response:
            return await admin(request, "promote")

        async def demote(request: web.Request) -> web.Response:
            return await admin(request, "demote")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_post("/promote", promote)
        app.router.add_post("/demote", demote)
        return app

    def _rabbitmq_app(self) -> web.Application:
        async def nodes(_: web.Request) -> web.Response:
            count = self.rabbitmq_nodes_running
            names = sorted(self.rabbitmq_ips)
            running = len(names) if count is None else count
            body = [
                {"name": f"rabbit@{n}", "running": i < running, "mem_alarm": False, "disk_free_alarm": False}
                for i, n in enumerate(names)
            ]
            return web.json_response(body)

        async def queues(_: web.Request) -> web.Response:
            members = [f"rabbit@{n}" for n in sorted(self.rabbitmq_ips)]
            online = members if self.quorum_online is None else members[: self.quorum_online]
            queue: dict[str, Any] = {
                "name": "orders",
                "type": "quorum",
                "leader": members[0] if members else None,
            }
            queue.update({"members": members, "online": online})
            return web.json_response([queue])

        app = web.Application()
        app.router.add_get("/api/nodes", nodes)
        app.router.add_get("/api/queues", queues)
        return app

"""Members in network namespaces of their own, so a chaos test can cut their link.

``IsolatedMembers`` is a ``trading_system.local.members.Placement``: each member whose
name starts with one of the isolated prefixes gets a network namespace and a veth pair
(``10.213.<n>.2`` inside, ``10.213.<n>.1`` on the host end). The member listens on its
inside address, where the supervisor probes it across the link. Its dependencies
(RabbitMQ, PostgreSQL) listen on loopback only, so the member dials the host end of its
link instead, where a forwarder relays to loopback: every byte it exchanges with the rest
of the pipeline crosses the link, and ``cut`` (the host end set down) partitions it the
way a failed network does: its TCP connections stay open and stall, and the host side
finds its address unreachable.

Needs root (``ip netns``); everything it creates is removed by ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from tests.environment.relay import relay

URL_FLAGS = ("--db-url", "--bus-url")
SUBNET = "10.213"


@dataclass(frozen=True)
class Link:
    namespace: str
    host_end: str  # interface name on the host
    host_ip: str
    member_ip: str

    @property
    def network(self) -> str:
        return self.host_ip.rsplit(".", 1)[0] + ".0/30"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def namespaces_supported() -> str | None:
    """None if this process may create network namespaces, else why not."""
    probe = f"tsprobe{uuid.uuid4().hex[:6]}"
    try:
        ip("netns", "add", probe)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot create a network namespace: {getattr(exc, 'stderr', exc)}"
    ip("netns", "delete", probe)
    return None


class Forwarder:
    """TCP relays from host-end addresses to loopback, on a loop of their own (a stalled
    test loop must not look like a network fault)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="netns-forwarder", daemon=True)
        self.thread.start()
        self.servers: list[asyncio.Server] = []
        self.writers: set[asyncio.StreamWriter] = set()

    def listen(self, host: str, port: int) -> None:
        async def start() -> asyncio.Server:
            return await asyncio.start_server(
                lambda r, w: relay(r, w, "127.0.0.1", port, self.writers), host, port
            )

        self.servers.append(asyncio.run_coroutine_threadsafe(start(), self.loop).result(10))

    def close(self) -> None:
        async def stop() -> None:
            for server in self.servers:
                server.close()
            # Aborted connections end their relays; cancelling the relays would be logged
            # as errors by asyncio's stream callbacks.
            for writer in list(self.writers):
                writer.transport.abort()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if others:
                await asyncio.wait(others, timeout=5)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _free_third_octet() -> int:
    """A ``10.213.<n>.0/30`` no interface uses yet (other test runs may hold some)."""
    shown = subprocess.run(["ip", "-4", "-o", "addr"], check=True, capture_output=True, text=True).stdout
    used = {int(part.split(".")[2]) for part in shown.split() if part.startswith(f"{SUBNET}.")}
    return min(set(range(1, 255)) - used)


class IsolatedMembers:
    """A ``Placement`` putting the members named ``<prefix>-<n>`` in namespaces of their own."""

    def __init__(self, prefixes: Sequence[str]) -> None:
        self.prefixes = tuple(prefixes)
        self.tag = uuid.uuid4().hex[:5]
        self.links: dict[str, Link] = {}
        self.forwarder = Forwarder()
        self._forwarded: set[tuple[str, int]] = set()

    def _isolated(self, name: str) -> bool:
        return any(name.startswith(f"{p}-") for p in self.prefixes)

    def address(self, name: str, default: str) -> str:
        if not self._isolated(name):
            return default
        return self._link(name).member_ip

    def launch(self, name: str, argv: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if not self._isolated(name):
            return tuple(argv), tuple(argv)
        link = self._link(name)
        inner = tuple(self._dial_through(link, argv))
        return ("ip", "netns", "exec", link.namespace, *inner), inner

    def _link(self, name: str) -> Link:
        if name not in self.links:
            n = _free_third_octet()
            link = Link(f"ts{self.tag}{n}", f"ts{self.tag}h{n}", f"{SUBNET}.{n}.1", f"{SUBNET}.{n}.2")
            inside = f"ts{self.tag}n{n}"
            ip("netns", "add", link.namespace)
            ip("link", "add", link.host_end, "type", "veth", "peer", "name", inside)
            ip("link", "set", inside, "netns", link.namespace)
            ip("addr", "add", f"{link.host_ip}/30", "dev", link.host_end)
            ip("link", "set", link.host_end, "up")
            # With the link down its route goes, and the member's address would be sent
            # out of the default route instead: refuse it here, as a dead link does.
            ip("route", "add", "unreachable", link.network, "metric", "4000")
            ip("-n", link.namespace, "addr", "add", f"{link.member_ip}/30", "dev", inside)
            ip("-n", link.namespace, "link", "set", inside, "up")
            ip("-n", link.namespace, "link", "set", "lo", "up")
            self.links[name] = link
        return self.links[name]

    def _dial_through(self, link: Link, argv: Sequence[str]) -> list[str]:
        """The member's dependency URLs pointed at the host end of its link."""
        out = list(argv)
        for i, arg in enumerate(out[:-1]):
            if arg in URL_FLAGS:
                out[i + 1] = ",".join(self._rewrite(link, url) for url in out[i + 1].split(","))
        return out

    def _rewrite(self, link: Link, url: str) -> str:
        parts = urlsplit(url)
        port = parts.port
        if port is None or parts.hostname not in ("127.0.0.1", "localhost"):
            return url
        if (link.host_ip, port) not in self._forwarded:
            self.forwarder.listen(link.host_ip, port)
            self._forwarded.add((link.host_ip, port))
        credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{credentials}{link.host_ip}:{port}"))

    def cut(self, name: str) -> None:
        ip("link", "set", self.links[name].host_end, "down")

    def restore(self, name: str) -> None:
        ip("link", "set", self.links[name].host_end, "up")

    def close(self) -> None:
        self.forwarder.close()
        for link in self.links.values():
            # Deleting the host end deletes its peer; the namespace goes with its last process.
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("link", "delete", link.host_end)
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("route", "delete", "unreachable", link.network, "metric", "4000")
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "delete", link.namespace)

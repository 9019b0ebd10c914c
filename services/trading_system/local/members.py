"""Pair members as local processes: the launcher's stand-in for pods.

Each member owns a loopback address of its own (``127.<1+pair>.<x>.<y>``, port 8080),
the way a pod owns its IP, so the supervisor dials members exactly as the operator dials
pods, and a member can later be moved into a network namespace of its own. A member's
pid, address and command line are recorded in ``<dir>/members/<name>.json`` so that a
supervisor restarted after a crash adopts the processes its predecessor started instead
of starting a second copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from trading_system.local.files import write_atomically

SERVICE_PORT = 8080

# (member name, host, port) -> the command line of that member, started as a standby.
MemberCommand = Callable[[str, str, int], Sequence[str]]


class Placement(Protocol):
    """Where a member runs. The default is this host's network; a chaos test moves members
    into network namespaces of their own so it can cut their link."""

    def address(self, name: str, default: str) -> str:
        """The address member ``name`` listens on (``default`` is its loopback address)."""
        ...

    def launch(self, name: str, argv: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(what to execute, the member's own command line as ``/proc`` will show it)."""
        ...


class HostNetwork:
    def address(self, name: str, default: str) -> str:
        return default

    def launch(self, name: str, argv: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return tuple(argv), tuple(argv)


def member_address(pair_slot: int, index: int, site: int = 0) -> str:
    """A loopback address per member: pairs apart by their second octet, pipelines (sites)
    by their third, so two pipelines on one machine never answer for each other."""
    return f"127.{1 + pair_slot}.{(site + index // 250) % 250}.{index % 250 + 1}"


def site_of(directory: Path) -> int:
    """A pipeline's site number, stable for its directory (so adoption finds its members)."""
    return int(hashlib.sha256(str(directory.resolve()).encode()).hexdigest(), 16) % 250


def member_index(name: str) -> int:
    """Members are named ``<prefix>-<index>`` by the failover decision."""
    return int(name.rsplit("-", 1)[1])


@dataclass
class MemberProcess:
    name: str
    host: str
    port: int
    argv: tuple[str, ...]
    pid: int
    log: Path
    _popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self._popen is not None:
            return self._popen.poll() is None
        return _pid_alive(self.pid, self.argv)

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL and reap (a child) or wait for the pid to go (an adopted member)."""
        self.signal(signal.SIGKILL)
        if self._popen is not None:
            self._popen.wait(timeout)


def _pid_alive(pid: int, argv: Sequence[str]) -> bool:
    """True if ``pid`` runs ``argv`` (a recycled pid running something else is not ours)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":  # a zombie has already exited
        return False
    return raw.split(b"\0")[: len(argv)] == [a.encode() for a in argv]


class MemberRegistry:
    """Starts, adopts and forgets the members of the local pipeline."""

    def __init__(self, directory: Path, env: Mapping[str, str], placement: Placement | None = None) -> None:
        self.directory = directory
        self.env = dict(env)
        self.placement = placement or HostNetwork()
        self.site = site_of(directory)
        (directory / "members").mkdir(parents=True, exist_ok=True)
        (directory / "logs").mkdir(parents=True, exist_ok=True)

    def address(self, pair_slot: int, name: str) -> str:
        """The loopback address member ``name`` of the pair in ``pair_slot`` gets."""
        return member_address(pair_slot, member_index(name), self.site)

    def _record(self, name: str) -> Path:
        return self.directory / "members" / f"{name}.json"

    def start(self, name: str, host: str, command: MemberCommand, port: int = SERVICE_PORT) -> MemberProcess:
        host = self.placement.address(name, host)
        executed, argv = self.placement.launch(name, command(name, host, port))
        log = self.directory / "logs" / f"{name}.log"
        popen = subprocess.Popen(
            executed,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env=self.env,
            # Its own session: a supervisor killed with its process group leaves the
            # members running, like pods outliving a crashed operator.
            start_new_session=True,
        )
        member = MemberProcess(name, host, port, argv, popen.pid, log, popen)
        write_atomically(
            self._record(name), json.dumps({"pid": popen.pid, "host": host, "port": port, "argv": argv})
        )
        return member

    def adopt(self, name: str) -> MemberProcess | None:
        """The member a previous supervisor started, if its process still runs."""
        try:
            data = json.loads(self._record(name).read_text())
        except (OSError, ValueError):
            return None
        member = MemberProcess(
            name,
            data["host"],
            int(data["port"]),
            tuple(data["argv"]),
            int(data["pid"]),
            self.directory / "logs" / f"{name}.log",
        )
        return member if member.alive() else None

    def recorded(self, prefix: str | None = None) -> list[str]:
        """Recorded member names, all or those named ``<prefix>-<n>``."""
        names = sorted(p.stem for p in (self.directory / "members").glob("*.json"))
        return names if prefix is None else [n for n in names if n.startswith(f"{prefix}-")]

    def adopt_all(self, prefix: str) -> dict[str, MemberProcess]:
        """The running members named ``<prefix>-<n>`` that a previous supervisor started."""
        adopted = {name: self.adopt(name) for name in self.recorded(prefix)}
        return {name: member for name, member in adopted.items() if member is not None}

    def reap(self, members: dict[str, MemberProcess]) -> list[str]:
        """Drop the members whose process exited, from ``members`` and the records."""
        exited = [name for name, member in members.items() if not member.alive()]
        for name in exited:
            del members[name]
            self.forget(name)
        return exited

    def forget(self, name: str) -> None:
        self._record(name).unlink(missing_ok=True)

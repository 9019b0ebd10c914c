"""A private RabbitMQ cluster of real nodes on loopback, for tests and local debugging.

Each node is a real Erlang VM from Debian's ``rabbitmq-server`` package with its own node
name, ports, data, log and config, all under ``base_dir``, sharing one Erlang cookie.
The helpers kill -9, pause and restart single nodes so tests can exercise failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.environment.processes import (
    EnvironmentFailure,
    kill_process_group,
    pid_alive,
    port_accepts,
    run,
    spawn,
    tail,
    wait_until,
)

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
COOKIE = "TRADINGSYSTEMTESTCOOKIE"

# net_ticktime is lowered from 60 s so a paused (SIGSTOP) node is noticed within ~10 s;
# pause_minority keeps a node that is cut off from serving stale state.
NODE_CONFIG = """\
loopback_users = none
cluster_partition_handling = pause_minority
disk_free_limit.absolute = 50MB
vm_memory_high_watermark.relative = 0.6
log.file.level = info
log.console = false
cluster_formation.peer_discovery_backend = classic_config
{peers}
"""
ADVANCED_CONFIG = "[{kernel, [{net_ticktime, 10}]}].\n"


@dataclass
class RabbitNode:
    index: int
    name: str
    amqp_port: int
    dist_port: int
    base: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def pid_file(self) -> Path:
        return self.base / "rabbit.pid"

    @property
    def log_file(self) -> Path:
        return self.base / "console.log"


@dataclass
class RabbitMQCluster:
    """Three (or five) RabbitMQ nodes clustered on 127.0.0.1."""

    base_dir: Path
    size: int = 3
    amqp_base_port: int = 35672
    epmd_port: int = 34369
    nodes: list[RabbitNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)
        if not self.nodes:
            self.nodes = [
                RabbitNode(
                    index=i,
                    name=f"tsrabbit{i}@localhost",
                    amqp_port=self.amqp_base_port + i,
                    dist_port=self.amqp_base_port + 100 + i,
                    base=self.base_dir / f"node{i}",
                )
                for i in range(self.size)
            ]

    # -- environment -------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def home(self) -> Path:
        return self.base_dir / "home"

    def _common_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(HOME=str(self.home), ERL_EPMD_PORT=str(self.epmd_port), LANG="C.UTF-8")
        return env

    def _node_env(self, node: RabbitNode) -> dict[str, str]:
        env = self._common_env()
        env.update(
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(node.amqp_port),
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_MNESIA_BASE=str(node.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(node.base / "log"),
            RABBITMQ_PID_FILE=str(node.pid_file),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(node.base / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(node.base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(node.base / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(node.base / "rabbitmq-env.conf"),
        )
        return env

    def _write_node_files(self, node: RabbitNode) -> None:
        node.base.mkdir(parents=True, exist_ok=True)
        peers = "\n".join(
            f"cluster_formation.classic_config.nodes.{n.index + 1} = {n.name}" for n in self.nodes
        )
        (node.base / "rabbitmq.conf").write_text(NODE_CONFIG.format(peers=peers))
        (node.base / "advanced.config").write_text(ADVANCED_CONFIG)
        (node.base / "enabled_plugins").write_text("[].\n")
        (node.base / "rabbitmq-env.conf").write_text("")

    def _write_cookie(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if cookie.exists():
            cookie.chmod(0o600)
        cookie.write_text(COOKIE)
        cookie.chmod(0o400)

    def ctl(self, node: RabbitNode | int, *args: str, tool: str = "rabbitmqctl", timeout: float = 60) -> str:
        node = self._node(node)
        return run(
            [str(RABBITMQ_BIN / tool), "-n", node.name, *args], env=self._common_env(), timeout=timeout
        )

    def _node(self, node: RabbitNode | int) -> RabbitNode:
        return self.nodes[node] if isinstance(node, int) else node

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            raise EnvironmentFailure("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        self._write_cookie()
        for node in self.nodes:
            self._write_node_files(node)
        # The seed node boots alone so the others find a running cluster to join through
        # classic-config peer discovery, instead of racing to form separate clusters.
        seed, *others = self.nodes
        self._launch(seed)
        self._await_started(seed)
        for node in others:
            self._launch(node)
        for node in others:
            self._await_started(node)
        self.ctl(0, "enable_feature_flag", "all")
        wait_until(lambda: len(self.running_nodes(0)) == self.size, 60, "all nodes clustered")

    def stop(self) -> None:
        for node in self.nodes:
            self._resume_quietly(node)
            if node.process is not None and node.process.poll() is None:
                kill_process_group(node.process, timeout=20)
            beam = self._beam_pid(node)
            if beam and pid_alive(beam):
                os.kill(beam, signal.SIGKILL)
            node.process = None
        # The private epmd outlives the nodes; it holds only our port, so stop it too.
        subprocess.run(["epmd", "-port", str(self.epmd_port), "-kill"], capture_output=True, check=False)

    def _launch(self, node: RabbitNode) -> None:
        node.pid_file.unlink(missing_ok=True)
        node.process = spawn([str(RABBITMQ_BIN / "rabbitmq-server")], node.log_file, env=self._node_env(node))

    def _await_started(self, node: RabbitNode, timeout: float = 120) -> None:
        def started() -> bool:
            if node.process is not None and node.process.poll() is not None:
                raise EnvironmentFailure(f"RabbitMQ node {node.name} exited:\n{tail(node.log_file)}")
            return port_accepts(node.amqp_port)

        try:
            wait_until(started, timeout, f"RabbitMQ node {node.name} to accept AMQP")
        except EnvironmentFailure as exc:
            raise EnvironmentFailure(f"{exc}\n{tail(node.log_file)}") from exc
        self.ctl(node, "await_startup", timeout=timeout)

    # -- fault injection ---------------------------------------------------------------

    def _beam_pid(self, node: RabbitNode) -> int | None:
        try:
            return int(node.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def beam_pid(self, node: RabbitNode | int) -> int:
        node = self._node(node)
        wait_until(lambda: self._beam_pid(node) is not None, 30, f"pid file of {node.name}")
        pid = self._beam_pid(node)
        assert pid is not None
        return pid

    def kill(self, node: RabbitNode | int) -> None:
        """kill -9 the node's Erlang VM: no clean shutdown, sockets reset."""
        node = self._node(node)
        pid = self.beam_pid(node)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 30, f"{node.name} to die")
        if node.process is not None:
            node.process.wait(timeout=30)

    def pause(self, node: RabbitNode | int) -> None:
        """SIGSTOP the node: it keeps its sockets but answers nothing."""
        os.kill(self.beam_pid(node), signal.SIGSTOP)

    def resume(self, node: RabbitNode | int) -> None:
        os.kill(self.beam_pid(node), signal.SIGCONT)

    def _resume_quietly(self, node: RabbitNode) -> None:
        pid = self._beam_pid(node)
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGCONT)

    def restart(self, node: RabbitNode | int, timeout: float = 120) -> None:
        """Start a node that was killed (or is running: it is killed first) and wait for it."""
        node = self._node(node)
        pid = self._beam_pid(node)
        if pid and pid_alive(pid):
            self.kill(node)
        self._launch(node)
        self._await_started(node, timeout)
        self.wait_rejoined(node, timeout)

    def wait_rejoined(self, node: RabbitNode | int, timeout: float = 120) -> None:
        node = self._node(node)
        wait_until(
            lambda: node.name in self.running_nodes(node) and len(self.running_nodes(node)) == self.size,
            timeout,
            f"{node.name} to rejoin the cluster",
        )

    def heal(self, timeout: float = 180) -> None:
        """Undo fault injection: resume paused nodes, restart dead ones, wait for the cluster."""
        for node in self.nodes:
            self._resume_quietly(node)
        for node in self.nodes:
            pid = self._beam_pid(node)
            if not (pid and pid_alive(pid)):
                self._launch(node)
        for node in self.nodes:
            self._await_started(node, timeout)
        self.wait_rejoined(0, timeout)

    # -- inspection --------------------------------------------------------------------

    def running_nodes(self, via: RabbitNode | int = 0) -> list[str]:
        status = json.loads(self.ctl(via, "cluster_status", "--formatter", "json"))
        return list(status.get("running_nodes", []))

    def live_node(self) -> RabbitNode:
        """Some node whose VM is running and not paused by us (for CLI queries)."""
        for node in self.nodes:
            pid = self._beam_pid(node)
            if pid and pid_alive(pid) and _running_not_stopped(pid) and port_accepts(node.amqp_port):
                return node
        raise EnvironmentFailure("no RabbitMQ node is running")

    def queue_info(self, queue: str, vhost: str = "/") -> dict[str, object]:
        rows = json.loads(
            self.ctl(
                self.live_node(),
                "list_queues",
                "-p",
                vhost,
                "name",
                "type",
                "leader",
                "members",
                "messages",
                "--formatter",
                "json",
            )
        )
        for row in rows:
            if row["name"] == queue:
                return dict(row)
        raise EnvironmentFailure(f"queue {queue!r} not found")

    def leader_index(self, queue: str, vhost: str = "/") -> int:
        """Index of the node that leads the quorum queue ``queue``.

        Asks for this one queue's Raft status rather than listing every queue: a broker
        that has run many tests holds thousands of queues, and listing them with their
        leaders under load can take longer than a fault injection should.
        """
        rows = json.loads(
            self.ctl(
                self.live_node(),
                "quorum_status",
                "-p",
                vhost,
                queue,
                "--formatter",
                "json",
                tool="rabbitmq-queues",
            )
        )
        leaders = [row["Node Name"] for row in rows if row.get("Raft State") == "leader"]
        for node in self.nodes:
            if node.name in leaders:
                return node.index
        raise EnvironmentFailure(f"queue {queue!r} has leaders {leaders!r}, not one of ours")

    def describe(self) -> dict[str, object]:
        return {"urls": self.urls, "nodes": [n.name for n in self.nodes], "base_dir": str(self.base_dir)}


def _running_not_stopped(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("T", "t", "Z")

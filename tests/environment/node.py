"""A real Kubernetes worker node on this machine: containerd (CRI, runc, CNI bridge) and a kubelet.

``KubeletNode(plane, base_dir).start()`` joins a running ``ControlPlane`` (best started with
``kwok=False``) as a real node that runs real containers:

* **containerd** (Debian's 1.6) with its root, state, socket and runc root under private
  directories, the CRI plugin on runc with ``SystemdCgroup=false`` (there is no systemd),
  ``restrict_oom_score_adj`` (root here lacks CAP_SYS_RESOURCE, so a negative
  oom_score_adj fails in runc), the local pause image as sandbox image, and a CNI
  ``bridge`` + ``host-local`` + ``portmap`` chain from ``/usr/lib/cni``.
* **a bridge** ``ts-cni<i>`` with ``10.244.<77+i>.1/24`` that this module creates (the first
  free index, so two nodes on one machine do not collide); the kubelet's node IP is the
  bridge address, pods get the rest of the /24, and the host reaches pod IPs directly.
* **the kubelet** (built by ``scripts/build-k8s-tools.sh``) with ``cgroupDriver: cgroupfs``,
  ``failCgroupV1: false`` (these machines are cgroup v1 hybrid), its own ``cgroupRoot``,
  root dir, pod log dir and ports, a client certificate ``system:node:<name>`` in
  ``system:nodes`` (bound to the ``system:node`` ClusterRole, since the apiserver runs RBAC
  without the Node authorizer), ``clusterDNS`` at the bridge address, a resolv.conf of
  ``nameserver 127.0.0.1`` for ``dnsPolicy: Default`` pods (the host resolver is unreachable
  from pods; a refused query fails fast instead of stalling), ``maxOpenFiles`` at the
  machine's hard nofile limit and ``oomScoreAdj: 0``.
* **Service networking** (``services=True``, the default), all host processes:
  **kube-proxy** (iptables mode, ``clusterCIDR`` = the node's /24, client cert
  ``system:kube-proxy``, told to leave route_localnet and the conntrack sysctls alone),
  **CoreDNS** on ``<bridge address>:53`` with the ``kubernetes`` plugin for ``cluster.local``
  (no ``forward``: other names get REFUSED at once), and a **TCP relay** on
  ``<bridge address>:<apiserver port>`` to the loopback-only API server, which the node
  makes the ``kubernetes`` Service's EndpointSlice (the apiserver runs with
  ``--endpoint-reconciler-type=none``). So pods resolve Service and headless per-pod names
  and reach ClusterIPs and ``https://kubernetes.default.svc``; the host reaches ClusterIPs
  too. kube-proxy's chains are machine-wide: run one such node per machine at a time.

The kubelet rewrites a few kernel settings (``vm.overcommit_memory``, ``kernel.panic``, ...);
they are saved before it starts and restored by ``stop()``, which also cordons the node and
removes the pods, the containers, mounts, network namespaces, cgroups, the bridge, the CNI
cache entries, any iptables chain that appeared while the node ran (kube-proxy's included),
the node's conntrack entries, then the directories.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.environment.kubernetes import REPO_ROOT, SERVICE_CIDR, ControlPlane
from tests.environment.processes import (
    EnvironmentFailure,
    free_port_block,
    kill_process_group,
    require_binary,
    run,
    spawn,
    tail,
    wait_until,
)

CNI_BIN_DIR = Path("/usr/lib/cni")
# What the kubelet sets when protectKernelDefaults is false (kubelet/cm/container_manager_linux.go).
KERNEL_SETTINGS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    # What Service networking needs (set by the node) or kube-proxy may touch (its config
    # asks it not to: no localhost NodePorts, no conntrack tuning); restored all the same.
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "net/ipv4/conf/all/route_localnet",
    "net/netfilter/nf_conntrack_max",
)
CLUSTER_DOMAIN = "cluster.local"
RELAY = Path(__file__).resolve().parent / "relay.py"
# Hard-coded in the kubelet (symlinks to the pod logs); created if missing, emptied as pods go.
CONTAINER_LOG_DIR = Path("/var/log/containers")
NOFILE_LIMIT = 20000  # the hard limit on these machines; root cannot raise it (no CAP_SYS_RESOURCE)
INSTALL_HINT = "run scripts/install-deps.sh (apt: containerd runc containernetworking-plugins iptables)"
BUILD_IMAGES = REPO_ROOT / "scripts" / "build_images.py"
PROJECT_IMAGE = "trading-system:dev"  # what scripts/build_images.py tags the Dockerfile's image


def build_images() -> dict[str, Path]:
    """Image reference -> docker archive, built (or taken from the cache) by scripts/build_images.py."""
    result = subprocess.run(
        [sys.executable, str(BUILD_IMAGES)], capture_output=True, text=True, timeout=3600, check=False
    )
    if result.returncode != 0:
        raise EnvironmentFailure(f"building the images failed:\n{result.stderr[-5000:]}")
    refs: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    return {ref: Path(path) for ref, path in refs.items()}


def sandbox_image(images: dict[str, Path]) -> str:
    return next(ref for ref in images if "/pause:" in ref)


@dataclass
class KubeletNode:
    plane: ControlPlane
    base_dir: Path
    name: str = "ts-node-0"
    # The pod sandbox image; scripts/build_images.py builds it and import_images() loads it.
    sandbox_image: str = "localhost/trading-system/pause:3.10"
    # kube-proxy, CoreDNS and the API server relay: Service ClusterIPs and cluster DNS work.
    services: bool = True
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)
        self.logs = self.base_dir / "logs"
        self.index = -1
        self.bridge = ""
        self.subnet = ""
        self.node_ip = ""
        self.run_dir = Path()
        self.kubelet_port = 0
        self.aux_port = 0  # kube-proxy healthz, metrics; CoreDNS health, ready
        self._saved_settings: dict[str, str] = {}
        self._chains_before: dict[tuple[str, str], set[str]] = {}
        self._shim_sockets_before: set[str] = set()
        self.timings: dict[str, float] = {}
        self._had_container_log_dir = True

    # -- public ------------------------------------------------------------------------

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def cgroup_root(self) -> str:
        """Named after the bridge index, which is unique on this machine while the node runs."""
        return f"ts-node{self.index}"

    @property
    def cni_network(self) -> str:
        return f"ts-node{self.index}"

    def start(self, images: Iterable[Path] = ()) -> None:
        """Start containerd, import ``images`` (docker/OCI archives), start the kubelet and
        wait for the Node to be Ready. ``timings`` records how long each part took."""
        started = time.monotonic()
        for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip"):
            require_binary(tool, INSTALL_HINT)
        if self.services:
            require_binary("conntrack", INSTALL_HINT)
            for binary in ("kube-proxy", "coredns"):
                if not (self.plane.bin_dir / binary).exists():
                    raise EnvironmentFailure(
                        f"no {binary} in {self.plane.bin_dir}: run scripts/build-k8s-tools.sh"
                    )
        if not (CNI_BIN_DIR / "bridge").exists():
            raise EnvironmentFailure(f"no CNI plugins in {CNI_BIN_DIR}; {INSTALL_HINT}")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        # Unix socket paths must stay short (108 bytes): sockets and state live in /run.
        self.run_dir = Path(tempfile.mkdtemp(prefix="ts-node-", dir="/run"))
        self._saved_settings = {k: self._read_setting(k) for k in KERNEL_SETTINGS}
        self._chains_before = self._iptables_chains()
        self._shim_sockets_before = self._shim_sockets()
        self._had_container_log_dir = CONTAINER_LOG_DIR.exists()
        self._create_bridge()
        self._create_cgroup_root()
        self._start_containerd()
        self.timings["containerd"] = time.monotonic() - started
        mark = time.monotonic()
        self.import_images(images)
        self.timings["import images"] = time.monotonic() - mark
        if self.services:
            mark = time.monotonic()
            self._start_dns_and_relay()
            self.timings["CoreDNS and API relay"] = time.monotonic() - mark
        mark = time.monotonic()
        self._start_kubelet()
        wait_until(self._ready, 180, f"node {self.name} Ready")
        self.timings["kubelet to Ready"] = time.monotonic() - mark
        if self.services:
            mark = time.monotonic()
            self._start_kube_proxy()
            self.timings["kube-proxy synced"] = time.monotonic() - mark
        self.timings["total"] = time.monotonic() - started

    def import_images(self, archives: Iterable[Path]) -> None:
        for archive in archives:
            self.ctr("images", "import", str(archive), timeout=600)

    def ctr(self, *args: str, timeout: float = 120) -> str:
        return run(["ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", *args], timeout=timeout)

    def task_count(self) -> int:
        """Running containers (tasks) in containerd's k8s.io namespace, pause included."""
        lines = self.ctr("tasks", "ls", "-q").split()
        return len(lines)

    def container_ids(self) -> list[str]:
        return self.ctr("containers", "ls", "-q").split()

    def describe(self) -> dict[str, object]:
        return {
            "node": self.name,
            "node_ip": self.node_ip,
            "pod_subnet": self.subnet,
            "bridge": self.bridge,
            "containerd": str(self.containerd_socket),
            "node_logs": str(self.logs),
            "cluster_dns": f"{self.node_ip}:53" if self.services else "none",
        }

    def stop(self) -> None:
        """Tear everything down, best effort per step; raise at the end if a step failed."""
        errors: list[str] = []

        def step(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception as exc:
                errors.append(f"{what}: {exc}")

        if self.index < 0:  # start() failed before claiming a bridge: nothing else is ours
            step("kernel settings", self._restore_settings)
            if self.run_dir != Path():
                step("run dir", lambda: shutil.rmtree(self.run_dir))
            if errors:
                raise EnvironmentFailure("node teardown incomplete:\n" + "\n".join(errors))
            return
        step("delete pods", self._delete_pods)
        if "kubelet" in self.processes:
            step("stop kubelet", lambda: kill_process_group(self.processes.pop("kubelet"), timeout=20))
        if "relay" in self.processes:
            step("kubernetes endpoints", self._delete_api_endpoints)
        for aux in ("kube-proxy", "coredns", "relay"):
            if aux in self.processes:
                step(f"stop {aux}", functools.partial(kill_process_group, self.processes.pop(aux), 10))
        netns = self._container_netns() if "containerd" in self.processes else set()
        step("kill containers", self._kill_cgroup_processes)
        if "containerd" in self.processes:
            step("stop containerd", lambda: kill_process_group(self.processes.pop("containerd"), timeout=20))
        step("kill shims", self._kill_shims)
        step("unmount", self._unmount_all)
        step("remove netns", lambda: self._remove_netns(netns))
        step("remove cgroups", self._remove_cgroup_root)
        step("remove bridge", self._remove_bridge)
        step("remove CNI cache", self._remove_cni_cache)
        step("iptables", self._remove_new_chains)
        if self.services:
            step("conntrack", self._flush_conntrack)
        step("kernel settings", self._restore_settings)
        step("shim sockets", self._remove_shim_sockets)
        step("container log links", self._remove_container_log_links)
        if self.run_dir != Path():
            step("run dir", lambda: shutil.rmtree(self.run_dir))
        if errors:
            raise EnvironmentFailure("node teardown incomplete:\n" + "\n".join(errors))

    # -- network -----------------------------------------------------------------------

    def _create_bridge(self) -> None:
        for i in range(16):
            bridge, third = f"ts-cni{i}", 77 + i
            if Path(f"/sys/class/net/{bridge}").exists():
                continue
            try:  # `ip link add` is the lock: it fails if another node took the name meanwhile
                run(["ip", "link", "add", bridge, "type", "bridge"])
            except EnvironmentFailure:
                continue
            self.index, self.bridge = i, bridge
            self.subnet, self.node_ip = f"10.244.{third}.0/24", f"10.244.{third}.1"
            run(["ip", "addr", "add", f"{self.node_ip}/24", "dev", bridge])
            run(["ip", "link", "set", bridge, "up"])
            return
        raise EnvironmentFailure("no free ts-cni<i> bridge name")

    def _remove_bridge(self) -> None:
        if self.bridge and Path(f"/sys/class/net/{self.bridge}").exists():
            run(["ip", "link", "delete", self.bridge])

    def _cni_config(self) -> dict[str, object]:
        return {
            "cniVersion": "0.4.0",
            "name": self.cni_network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.base_dir / "cni-ipam"),
                        "ranges": [[{"subnet": self.subnet, "gateway": self.node_ip}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def _remove_cni_cache(self) -> None:
        for path in Path("/var/lib/cni/results").glob(f"{self.cni_network}-*"):
            path.unlink()

    def _container_netns(self) -> set[str]:
        """Network namespaces of the containers still known to containerd."""
        found: set[str] = set()
        with contextlib.suppress(Exception):
            for cid in self.container_ids():
                info = json.loads(self.ctr("containers", "info", cid, timeout=20))
                for ns in info.get("Spec", {}).get("linux", {}).get("namespaces", []):
                    if ns.get("type") == "network" and ns.get("path", "").startswith("/var/run/netns/"):
                        found.add(ns["path"])
        return found

    def _remove_netns(self, paths: set[str]) -> None:
        for path in paths:
            if Path(path).exists():
                subprocess.run(["umount", path], capture_output=True, check=False)
                Path(path).unlink()

    def _iptables_chains(self) -> dict[tuple[str, str], set[str]]:
        chains: dict[tuple[str, str], set[str]] = {}
        for tool in ("iptables", "ip6tables"):
            if not shutil.which(tool):
                continue
            for table in ("filter", "nat", "mangle"):
                out = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True)
                chains[(tool, table)] = {
                    line.split()[1] for line in out.stdout.splitlines() if line.startswith("-N ")
                }
        return chains

    def _remove_new_chains(self) -> None:
        """Delete the chains that appeared while the node ran (CNI portmap, kubelet canaries)."""
        for (tool, table), after in self._iptables_chains().items():
            new = {
                c
                for c in after - self._chains_before.get((tool, table), set())
                if re.match(r"(CNI|KUBE)-", c)
            }
            if not new:
                continue
            rules = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True).stdout
            for line in rules.splitlines():
                words = shlex.split(line)  # kube-proxy's rules carry quoted comments
                if words[:1] == ["-A"] and "-j" in words and words[words.index("-j") + 1] in new:
                    subprocess.run(
                        [tool, "-w", "-t", table, "-D", *words[1:]], capture_output=True, check=False
                    )
            for chain in new:
                subprocess.run([tool, "-w", "-t", table, "-F", chain], capture_output=True, check=False)
            for chain in new:
                subprocess.run([tool, "-w", "-t", table, "-X", chain], capture_output=True, check=False)

    # -- kernel settings and cgroups ---------------------------------------------------

    @staticmethod
    def _read_setting(key: str) -> str:
        return (Path("/proc/sys") / key).read_text().strip()

    def _restore_settings(self) -> None:
        for key, value in self._saved_settings.items():
            if self._read_setting(key) != value:
                (Path("/proc/sys") / key).write_text(value)

    @staticmethod
    def _hierarchies() -> list[Path]:
        """Every cgroup hierarchy: the v1 ones (cpu, memory, ..., name=systemd) and, on a
        hybrid host, the v2 'unified' one, where the kubelet's cgroup code creates the same
        tree (it holds only hugetlb here)."""
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        return sorted(Path(m.split()[1]) for m in mounts if m.split()[2] in ("cgroup", "cgroup2"))

    def _create_cgroup_root(self) -> None:
        for hierarchy in self._hierarchies():
            path = hierarchy / self.cgroup_root
            path.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):  # a new cpuset starts empty in v1
                if (path / knob).exists() and not (path / knob).read_text().strip():
                    (path / knob).write_text((hierarchy / knob).read_text())

    def _cgroup_dirs(self) -> list[Path]:
        dirs: list[Path] = []
        for hierarchy in self._hierarchies():
            root = hierarchy / self.cgroup_root
            if root.exists():
                dirs += [Path(d) for d, _, _ in os.walk(root, topdown=False)]
        return dirs

    def _kill_cgroup_processes(self) -> None:
        """SIGKILL whatever still runs in this node's cgroups (containers the kubelet left)."""
        for _ in range(50):
            pids = {
                int(p)
                for d in self._cgroup_dirs()
                if (d / "cgroup.procs").exists()
                for p in (d / "cgroup.procs").read_text().split()
            }
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        raise EnvironmentFailure("processes survive in the node's cgroups")

    def _remove_cgroup_root(self) -> None:
        for _ in range(50):
            left = []
            for d in self._cgroup_dirs():
                try:
                    d.rmdir()
                except OSError:
                    left.append(d)
            if not left:
                return
            time.sleep(0.1)
        raise EnvironmentFailure(f"cgroups left: {left[:5]}")

    # -- containerd --------------------------------------------------------------------

    def _containerd_config(self) -> str:
        r = self.run_dir
        cni_conf_dir = self.base_dir / "cni" / "net.d"
        cni_conf_dir.mkdir(parents=True, exist_ok=True)
        (cni_conf_dir / "10-ts.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        return f"""
version = 2
root = "{self.base_dir / "containerd-root"}"
state = "{r / "state"}"
oom_score = 0
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[debug]
  level = "info"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.base_dir / "containerd-opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.sandbox_image}"
  restrict_oom_score_adj = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf_dir}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{r / "runc"}"
"""

    def _start_containerd(self) -> None:
        config = self.base_dir / "containerd.toml"
        config.write_text(self._containerd_config())
        self._spawn("containerd", ["containerd", "--config", str(config)])

        def up() -> bool:
            self._check_alive("containerd")
            run(["ctr", "--address", str(self.containerd_socket), "version"], timeout=10)
            return True

        wait_until(up, 30, "containerd")

    def _shim_sockets(self) -> set[str]:
        return (
            {p.name for p in Path("/run/containerd/s").glob("*")}
            if Path("/run/containerd/s").exists()
            else set()
        )

    def _remove_shim_sockets(self) -> None:
        """Shim sockets live in /run/containerd/s whatever the state dir. Remove the ones that
        appeared while the node ran and that nothing listens on any more (our shims are dead
        by now; a live shim of another containerd still accepts)."""
        for name in self._shim_sockets() - self._shim_sockets_before:
            path = Path("/run/containerd/s") / name
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(path))
                    continue
                except OSError:
                    pass
            with contextlib.suppress(OSError):
                path.unlink()
        for d in (Path("/run/containerd/s"), Path("/run/containerd")):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty: another containerd may use it

    def _kill_shims(self) -> None:
        """containerd-shim-runc-v2 processes of this containerd (they outlive it by design)."""
        needle = str(self.containerd_socket).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if b"containerd-shim" in cmdline and needle in cmdline:
                    os.kill(int(proc.name), signal.SIGKILL)

    def _unmount_all(self) -> None:
        """Unmount whatever is still mounted under this node's directories (deepest first)."""
        roots = [str(self.base_dir.resolve()), str(self.run_dir)]
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        ours = [m for m in mounts if any(m == r or m.startswith(r + "/") for r in roots if r != ".")]
        for mount in sorted(ours, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)

    # -- kubelet -----------------------------------------------------------------------

    def _remove_container_log_links(self) -> None:
        """The kubelet's links into this node's pod logs (it removes them only in its GC)."""
        ours = str(self.base_dir / "pod-logs") + "/"
        for link in CONTAINER_LOG_DIR.glob("*.log") if CONTAINER_LOG_DIR.is_dir() else []:
            if link.is_symlink() and os.readlink(link).startswith(ours):
                link.unlink()
        if not self._had_container_log_dir:
            with contextlib.suppress(OSError):  # only when empty: another kubelet may use it
                CONTAINER_LOG_DIR.rmdir()

    def _kubelet_config(self, ports: tuple[int, int]) -> dict[str, object]:
        resolv = self.base_dir / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\n")
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.node_ip,
            "port": ports[0],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": ports[1],
            # Test-only: the kubelet listens on the private bridge address alone, and this
            # lets `kubectl logs/exec` through the apiserver without a kubelet client cert.
            "authentication": {
                "anonymous": {"enabled": True},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.plane.pki / "ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "cgroupRoot": f"/{self.cgroup_root}",
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"],
            "resolvConf": str(resolv),
            **({"clusterDNS": [self.node_ip], "clusterDomain": CLUSTER_DOMAIN} if self.services else {}),
            "podLogsDir": str(self.base_dir / "pod-logs"),
            "maxOpenFiles": NOFILE_LIMIT,
            "oomScoreAdj": 0,
            "protectKernelDefaults": False,
            "registerNode": True,
            # Images are imported, never pulled: keep image GC away from them, and do not
            # evict on a disk that other work on this machine fills.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "20s",
            "shutdownGracePeriod": "0s",
        }

    def _start_kubelet(self) -> None:
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "ts-system-nodes"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:node",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}],
        }
        self.plane.kubectl("apply", "-f", "-", stdin=json.dumps(binding))
        cert, key = self.plane.issue_client_cert(
            f"kubelet-{self.name}", f"/O=system:nodes/CN=system:node:{self.name}"
        )
        kubeconfig = self.base_dir / "kubelet.kubeconfig"
        self.plane.write_kubeconfig(kubeconfig, f"system:node:{self.name}", cert, key)
        self.kubelet_port = free_port_block(2, 20250)
        config = self.base_dir / "kubelet.json"
        config.write_text(
            json.dumps(self._kubelet_config((self.kubelet_port, self.kubelet_port + 1)), indent=2)
        )
        root = self.base_dir / "kubelet"
        self._spawn(
            "kubelet",
            [
                str(self.plane.bin_dir / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={root}",
                f"--cert-dir={root / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.node_ip}",
                "--v=2",
            ],
        )

    def _ready(self) -> bool:
        self._check_alive("containerd")
        self._check_alive("kubelet")
        node = json.loads(self.plane.kubectl("get", "node", self.name, "-o", "json", timeout=10))
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", [])
        )

    def _delete_pods(self) -> None:
        if "kubelet" not in self.processes or self.processes["kubelet"].poll() is not None:
            return
        # Unschedulable first, or the controllers' replacement pods (Deployments,
        # StatefulSets) land on this node again as fast as the old ones go.
        self.plane.kubectl("cordon", self.name, timeout=30)
        self.plane.kubectl(
            "delete",
            "pods",
            "--all-namespaces",
            f"--field-selector=spec.nodeName={self.name}",
            "--grace-period=1",
            "--wait=false",
            timeout=30,
        )
        wait_until(lambda: self.task_count() == 0, 60, "the kubelet to stop every container")

    # -- Service networking: API relay, CoreDNS, kube-proxy ------------------------------

    def _start_dns_and_relay(self) -> None:
        """The API server for pods (a relay on the bridge address, the ``kubernetes``
        Service's endpoint) and CoreDNS on the bridge address, the kubelet's clusterDNS."""
        for setting in ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"):
            if self._read_setting(setting) != "1":
                (Path("/proc/sys") / setting).write_text("1")
        self.aux_port = free_port_block(4, 20350)
        port = self.plane.apiserver_port
        self._spawn("relay", [sys.executable, str(RELAY), self.node_ip, str(port), "127.0.0.1", str(port)])
        self._write_api_endpoints(port)
        corefile = self.base_dir / "Corefile"
        corefile.write_text(self._corefile())
        self._spawn("coredns", [str(self.plane.bin_dir / "coredns"), "-conf", str(corefile)])
        ready = f"http://127.0.0.1:{self.aux_port + 3}/ready"
        wait_until(lambda: self._http_ok("coredns", ready), 60, "CoreDNS ready")

    def _corefile(self) -> str:
        # No `forward`: pods cannot reach the host's resolver anyway; a name outside the
        # cluster zones gets REFUSED at once.
        return f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {self.node_ip}
    errors
    health 127.0.0.1:{self.aux_port + 2}
    ready 127.0.0.1:{self.aux_port + 3}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.plane.kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
"""

    def _write_api_endpoints(self, port: int) -> None:
        """The apiserver runs with ``--endpoint-reconciler-type=none``, so nothing else
        writes the ``kubernetes`` Service's endpoints; point them at the relay."""
        service = json.loads(
            self.plane.kubectl("get", "service", "kubernetes", "-n", "default", "-o", "json")
        )
        target = service["spec"]["ports"][0].get("targetPort", port)
        if target != port:
            raise EnvironmentFailure(f"kubernetes Service targets port {target}, the apiserver is on {port}")
        slice_ = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "ts-node.trading-system.io",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [self.node_ip], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }
        self.plane.kubectl("apply", "-f", "-", stdin=json.dumps(slice_))

    def _delete_api_endpoints(self) -> None:
        self.plane.kubectl(
            "delete", "endpointslice", "kubernetes", "-n", "default", "--ignore-not-found", timeout=20
        )

    def _flush_conntrack(self) -> None:
        """Connection-tracking entries of this node's pods and Service IPs (they would only
        time out, but a later node reuses the same addresses)."""
        if not self.subnet or not shutil.which("conntrack"):
            return
        for flag, net in (("-s", self.subnet), ("-d", self.subnet), ("-d", SERVICE_CIDR)):
            # Exit status 1 when nothing matched.
            subprocess.run(["conntrack", "-D", flag, net], capture_output=True, check=False)

    def _kube_proxy_config(self, kubeconfig: Path) -> dict[str, object]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": self.name,
            "bindAddress": self.node_ip,
            "healthzBindAddress": f"127.0.0.1:{self.aux_port}",
            "metricsBindAddress": f"127.0.0.1:{self.aux_port + 1}",
            "mode": "iptables",
            "clusterCIDR": self.subnet,
            "detectLocalMode": "ClusterCIDR",
            "nodePortAddresses": [f"{self.node_ip}/32"],
            "oomScoreAdj": 0,
            # Leave the machine-wide settings alone: no route_localnet for localhost
            # NodePorts, no conntrack table size or timeouts.
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False, "minSyncPeriod": "0s"},
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
                "udpTimeout": "0s",
                "udpStreamTimeout": "0s",
            },
        }

    def _start_kube_proxy(self) -> None:
        # system:kube-proxy is bound to the system:node-proxier ClusterRole by default.
        cert, key = self.plane.issue_client_cert(f"kube-proxy-{self.name}", "/CN=system:kube-proxy")
        kubeconfig = self.base_dir / "kube-proxy.kubeconfig"
        self.plane.write_kubeconfig(kubeconfig, "system:kube-proxy", cert, key)
        config = self.base_dir / "kube-proxy.json"
        config.write_text(json.dumps(self._kube_proxy_config(kubeconfig), indent=2))
        self._spawn("kube-proxy", [str(self.plane.bin_dir / "kube-proxy"), f"--config={config}", "--v=2"])
        healthz = f"http://127.0.0.1:{self.aux_port}/healthz"
        wait_until(lambda: self._http_ok("kube-proxy", healthz), 60, "kube-proxy healthz")
        wait_until(self._api_vip_programmed, 60, "kube-proxy to program the kubernetes Service")

    def _api_vip_programmed(self) -> bool:
        self._check_alive("kube-proxy")
        rules = run(["iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES"], timeout=20)
        return "default/kubernetes:https cluster IP" in rules

    def _http_ok(self, name: str, url: str) -> bool:
        import urllib.request

        self._check_alive(name)
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)

    # -- processes ---------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        env = dict(os.environ)
        env["PATH"] = f"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{env.get('PATH', '')}"
        self.processes[name] = spawn(args, self.logs / f"{name}.log", env=env, cwd=self.base_dir)

    def _check_alive(self, name: str) -> None:
        proc = self.processes[name]
        if proc.poll() is not None:
            raise EnvironmentFailure(f"{name} exited ({proc.returncode}):\n{tail(self.logs / f'{name}.log')}")

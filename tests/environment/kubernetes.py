"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and KWOK, built from the Go module proxy by ``scripts/build-k8s-tools.sh``.

KWOK plays the kubelet: it registers fake nodes and moves scheduled pods to Running/Ready,
giving them addresses from a CIDR inside 127.0.0.0/8, so a test can run a real process that
listens on a pod's IP. KWOK manages only the nodes annotated ``kwok.x-k8s.io/node: fake``
(the ones ``add_node`` makes), so a real kubelet (``tests/environment/node.py``) can join the
same control plane; ``ControlPlane(kwok=False)`` starts no KWOK and no fake node at all.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.environment.processes import (
    EnvironmentFailure,
    free_port_block,
    kill_process_group,
    run,
    spawn,
    tail,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-k8s-tools.sh"
POD_CIDR = "127.64.0.0/16"
NODE_IP = "127.63.0.1"
SERVICE_CIDR = "10.96.0.0/16"  # routed only on a real node with kube-proxy (tests/environment/node.py)

KWOK_STAGE_FILES = [
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "node/chaos/node-not-ready.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
    "pod/chaos/pod-container-running-failed.yaml",
]


def tools_bin_dir() -> Path:
    """Build (or find in the version-keyed cache) the control-plane binaries."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise EnvironmentFailure(f"building the Kubernetes tools failed:\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class ControlPlane:
    base_dir: Path
    bin_dir: Path
    nodes: int = 1
    kwok: bool = True  # False: no KWOK and no fake nodes (a real kubelet joins instead)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)
        self.pki = self.base_dir / "pki"
        self.logs = self.base_dir / "logs"
        self.etcd_port = 0
        self.apiserver_port = 0

    # -- public ------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.base_dir / "kubeconfig"

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def helm_path(self) -> Path:
        return self.bin_dir / "helm"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '')}"
        # helm keeps caches and its repository config in the user's home unless told.
        for var, sub in (
            ("HELM_CACHE_HOME", "helm/cache"),
            ("HELM_CONFIG_HOME", "helm/config"),
            ("HELM_DATA_HOME", "helm/data"),
        ):
            env[var] = str(self.base_dir / sub)
        return env

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        result = subprocess.run(
            [str(self.kubectl_path), *args],
            input=stdin,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise EnvironmentFailure(f"kubectl {' '.join(args)} failed:\n{result.stderr}{result.stdout}")
        return result.stdout

    def wait_crd_established(self, name: str, timeout: float = 60) -> None:
        """Wait for a CRD's Established condition.

        Not ``kubectl wait``: right after the CRD is created its status has no conditions
        list yet, and kubectl then fails at once ("accessor error: <nil>") instead of waiting.
        """

        def established() -> bool:
            path = '{.status.conditions[?(@.type=="Established")].status}'
            return self.kubectl("get", "crd", name, "-o", f"jsonpath={path}", timeout=10).strip() == "True"

        wait_until(established, timeout, f"CRD {name} Established")

    def helm(self, *args: str, timeout: float = 300) -> str:
        return run([str(self.helm_path), *args], env=self.env(), timeout=timeout)

    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.etcd_port = free_port_block(2, 32379)
        self.apiserver_port = free_port_block(1, 36443)
        self._make_pki()
        self._write_kubeconfig()
        self._start_etcd()
        self._start_apiserver()
        self._start_controllers()
        if self.kwok:
            self._start_kwok()
            for i in range(self.nodes):
                self.add_node(f"kwok-node-{i}")
        wait_until(self._default_service_account_exists, 120, "kube-controller-manager to create SAs")

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            kill_process_group(self.processes[name], timeout=15)
        self.processes.clear()

    def add_node(self, name: str) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/arch": "amd64",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/hostname": name,
                    "type": "kwok",
                },
            },
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "250"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "250"},
            },
        }
        self.kubectl("apply", "-f", "-", stdin=json.dumps(node))
        wait_until(lambda: self._node_ready(name), 60, f"node {name} Ready")

    def set_pod_ready(self, namespace: str, pod: str, ready: bool) -> None:
        """Flip a pod's Ready condition the way a kubelet would after a probe result."""
        status = "True" if ready else "False"
        patch = {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": status},
                    {"type": "ContainersReady", "status": status},
                ]
            }
        }
        self.kubectl(
            "patch",
            "pod",
            pod,
            "-n",
            namespace,
            "--subresource=status",
            "--type=strategic",
            "-p",
            json.dumps(patch),
        )

    def fail_pod(self, namespace: str, pod: str) -> None:
        """Make KWOK fail the pod's container (phase Failed, exit code 1)."""
        self.kubectl(
            "label",
            "pod",
            pod,
            "-n",
            namespace,
            "pod-container-running-failed.stage.kwok.x-k8s.io=true",
            "--overwrite",
        )

    def describe(self) -> dict[str, object]:
        return {
            "kubeconfig": str(self.kubeconfig),
            "bin_dir": str(self.bin_dir),
            "apiserver": f"https://127.0.0.1:{self.apiserver_port}",
            "logs": str(self.logs),
        }

    # -- processes ---------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        self.processes[name] = spawn(args, self.logs / f"{name}.log", cwd=self.base_dir)

    def _check_alive(self, name: str) -> None:
        proc = self.processes[name]
        if proc.poll() is not None:
            raise EnvironmentFailure(f"{name} exited ({proc.returncode}):\n{tail(self.logs / f'{name}.log')}")

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_port + 1}"
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=default",
                f"--data-dir={self.base_dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        wait_until(lambda: self._http_ok(f"{client}/readyz", "etcd"), 60, "etcd /readyz")

    def _http_ok(self, url: str, name: str) -> bool:
        import urllib.request

        self._check_alive(name)
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)

    def _start_apiserver(self) -> None:
        p = self.pki
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.base_dir / 'apiserver-certs'}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                # A real kubelet registers a Hostname nothing resolves; logs/exec dial its IP.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--profiling=false",
                "--v=1",
            ],
        )
        wait_until(self._apiserver_ready, 120, "kube-apiserver /readyz")

    def _apiserver_ready(self) -> bool:
        self._check_alive("kube-apiserver")
        return self.kubectl("get", "--raw", "/readyz", timeout=10).strip() == "ok"

    def _start_controllers(self) -> None:
        kubeconfig = str(self.kubeconfig)
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                f"--cert-dir={self.base_dir / 'kcm-certs'}",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--v=1",
            ],
        )

    def _start_kwok(self) -> None:
        stages_root = self.bin_dir.parent / "kwok-stages"
        stages = self.base_dir / "kwok-stages.yaml"
        stages.write_text("\n---\n".join((stages_root / f).read_text() for f in KWOK_STAGE_FILES))
        self._spawn(
            "kwok",
            [
                str(self.bin_dir / "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--cidr={POD_CIDR}",
                f"--node-ip={NODE_IP}",
                f"--config={stages}",
                "--node-lease-duration-seconds=40",
            ],
        )

    def issue_client_cert(self, name: str, subject: str) -> tuple[Path, Path]:
        """A client certificate signed by the cluster CA (for a kubelet, say): (cert, key)."""
        self._signed_cert(name, subject, None)
        return self.pki / f"{name}.crt", self.pki / f"{name}.key"

    def write_kubeconfig(self, path: Path, user: str, cert: Path, key: Path) -> None:
        """A kubeconfig for this cluster that authenticates with ``cert``/``key``."""
        config = self._kubeconfig_for(user, cert, key)
        path.write_text(json.dumps(config, indent=2))

    def _node_ready(self, name: str) -> bool:
        for proc in ("kwok", "kube-controller-manager", "kube-scheduler"):
            if proc in self.processes:
                self._check_alive(proc)
        node = json.loads(self.kubectl("get", "node", name, "-o", "json"))
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", [])
        )

    def _default_service_account_exists(self) -> bool:
        self._check_alive("kube-controller-manager")
        try:
            self.kubectl("get", "serviceaccount", "default", "-n", "default", timeout=10)
        except EnvironmentFailure:
            return False
        return True

    # -- PKI ---------------------------------------------------------------------------

    def _openssl(self, *args: str) -> None:
        run(["openssl", *args])

    def _make_pki(self) -> None:
        p = self.pki
        p.mkdir(parents=True, exist_ok=True)
        self._openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-keyout",
            str(p / "ca.key"),
            "-out",
            str(p / "ca.crt"),
            "-subj",
            "/CN=ts-test-ca",
        )
        sans = (
            "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
        )
        self._signed_cert("apiserver", "/CN=kube-apiserver", sans)
        self._signed_cert("admin", "/O=system:masters/CN=ts-admin", None)
        self._openssl("genrsa", "-out", str(p / "sa.key"), "2048")
        self._openssl("rsa", "-in", str(p / "sa.key"), "-pubout", "-out", str(p / "sa.pub"))

    def _signed_cert(self, name: str, subject: str, sans: str | None) -> None:
        p = self.pki
        self._openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(p / f"{name}.key"),
            "-out",
            str(p / f"{name}.csr"),
            "-subj",
            subject,
        )
        ext = p / f"{name}.ext"
        ext.write_text(f"{sans}\n" if sans else "basicConstraints=CA:FALSE\n")
        self._openssl(
            "x509",
            "-req",
            "-in",
            str(p / f"{name}.csr"),
            "-CA",
            str(p / "ca.crt"),
            "-CAkey",
            str(p / "ca.key"),
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            str(p / f"{name}.crt"),
            "-extfile",
            str(ext),
        )

    def _write_kubeconfig(self) -> None:
        p = self.pki
        config = self._kubeconfig_for("ts-admin", p / "admin.crt", p / "admin.key")
        self.kubeconfig.write_text(json.dumps(config, indent=2))

    def _kubeconfig_for(self, user: str, cert: Path, key: Path) -> dict[str, object]:
        p = self.pki
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "ts-test",
            "clusters": [
                {
                    "name": "ts-test",
                    "cluster": {
                        "server": f"https://127.0.0.1:{self.apiserver_port}",
                        "certificate-authority": str(p / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
            "contexts": [{"name": "ts-test", "context": {"cluster": "ts-test", "user": user}}],
        }

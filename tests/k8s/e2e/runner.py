"""The container runtime KWOK does not have: real processes for the pipeline's pods.

KWOK moves scheduled pods to Running and gives each an address in 127.64.0.0/16, but runs
nothing. ``PodRunner`` watches one namespace and, for every Running pod of a pipeline
component (``matching``, ``execution``, ``coordinator``), starts the pod's container as a
local process, the way a kubelet would:

* **command**: the container's ``command`` + ``args``. Like the image
  (``Dockerfile``: no ENTRYPOINT), an empty ``command`` means ``args`` is the command. The
  executable is looked up on the image's PATH, here this virtualenv's ``bin``;
* **environment**: the image's ``ENV`` plus the container's ``env``, resolved against the
  API: ``value``, ``fieldRef`` (``metadata.name``, ``status.podIP``, ...), ``secretKeyRef``
  and ``configMapKeyRef``. A referenced Secret or ConfigMap that does not exist (yet) keeps
  the container from starting, and the next poll tries again, as a kubelet would;
* **volumes**: each ConfigMap volume is written to ``<directory>/<pod>/<volume>/``, each
  emptyDir is an empty directory there; any environment value under a mount path (e.g.
  ``TRADING_SYSTEM_CONFIG=/etc/trading-system/config.json``, ``TMPDIR=/tmp``) is pointed
  at the pod's copy;
* **address**: nothing to do: the services listen on ``TRADING_SYSTEM_POD_IP``
  (``trading_system/common/service_env.py``), which the ``fieldRef`` resolved to the pod IP.

When the pod is being deleted or is gone, or its IP changed, the process gets SIGTERM, and
SIGKILL after the pod's grace period. A process that exits on its own is restarted with a
back-off (``restartPolicy: Always``) and counted.

``env_overrides`` replaces variables after resolution. The end-to-end test uses it for the
one substitution it makes: the RabbitMQ pods are KWOK fakes nobody serves, so
``TRADING_SYSTEM_RABBITMQ_URL`` points at the test's real RabbitMQ cluster instead.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trading_operator import api
from trading_operator.k8s_io import Kube

COMPONENTS = ("matching", "execution", "coordinator")
# The image's ENV (Dockerfile, runtime stage); PATH is this virtualenv instead of /opt/venv.
IMAGE_ENV = {
    "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "TMPDIR": "/tmp",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
}
POLL_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 10.0


class NotYet(Exception):
    """Something the container needs is not in the API yet; the next poll retries."""


@dataclass
class Container:
    """One pod's process."""

    pod: str
    uid: str
    ip: str
    component: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    grace_seconds: float
    http_port: int | None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    exits: list[int] = field(default_factory=list)
    kill_at: float | None = None  # SIGTERM sent; SIGKILL at this time

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def url(self) -> str | None:
        return None if self.http_port is None else f"http://{self.ip}:{self.http_port}"


@dataclass(frozen=True)
class RunnerEvent:
    at: float  # time.time()
    pod: str
    what: str  # started | exited <code> | terminated | killed


class PodRunner:
    """Real processes for the pipeline pods of one namespace, kept in step with the API."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        directory: Path,
        *,
        env_overrides: Mapping[str, str] | None = None,
        components: tuple[str, ...] = COMPONENTS,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.directory = directory
        self.env_overrides = dict(env_overrides or {})
        self.components = components
        self.containers: dict[str, Container] = {}  # by pod uid
        self.stopping: list[Container] = []  # terminated, waiting for exit or SIGKILL
        self.events: list[RunnerEvent] = []
        self.errors: list[str] = []
        self._pods: dict[str, dict[str, Any]] = {}  # last listing, by name
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"pod-runner-{namespace}", daemon=True)

    # -- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> PodRunner:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            for container in [*self.containers.values(), *self.stopping]:
                self._terminate(container, grace=5.0)
            pending = [*self.containers.values(), *self.stopping]
            self.containers.clear()
            self.stopping.clear()
        for container in pending:
            if container.proc is None:
                continue
            try:
                container.proc.wait(timeout=min(30.0, max(0.0, (container.kill_at or 0) - time.time())))
            except subprocess.TimeoutExpired:
                self._killpg(container.proc, signal.SIGKILL)
                container.proc.wait(timeout=10)

    # -- what tests use ------------------------------------------------------------------

    def container(self, pod: str) -> Container | None:
        with self._lock:
            return next((c for c in self.containers.values() if c.pod == pod), None)

    def active_url(self, pair: str) -> str | None:
        """The address of the pair's pod labelled active, if its process runs: what the
        pair's Service would route to (there is no kube-proxy here)."""
        with self._lock:
            for c in self.containers.values():
                labels = (self._pods.get(c.pod, {}).get("metadata") or {}).get("labels") or {}
                if (
                    labels.get(api.LABEL_PAIR) == pair
                    and labels.get(api.LABEL_ROLE) == api.ROLE_ACTIVE
                    and c.running
                ):
                    return c.url
        return None

    def running(self) -> dict[str, Container]:
        with self._lock:
            return {c.pod: c for c in self.containers.values() if c.running}

    def unexpected_exits(self) -> list[RunnerEvent]:
        """Processes that ended without being told to (crashes; restarted)."""
        with self._lock:
            return [e for e in self.events if e.what.startswith("exited")]

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # a busy API server: the next poll retries
                self.errors.append(f"{time.strftime('%H:%M:%S')} {exc!r}")
            self._stop.wait(POLL_SECONDS)

    def _sync(self) -> None:
        pods = self.kube.list("v1", "Pod", self.namespace, f"{api.LABEL_MANAGED_BY}={api.MANAGED_BY}")
        wanted: dict[str, dict[str, Any]] = {}
        for pod in pods:
            meta, status = pod["metadata"], pod.get("status") or {}
            component = (meta.get("labels") or {}).get(api.LABEL_COMPONENT)
            if (
                component in self.components
                and status.get("phase") == "Running"
                and status.get("podIP")
                and not meta.get("deletionTimestamp")
            ):
                wanted[meta["uid"]] = pod
        by_uid = {p["metadata"]["uid"]: p for p in pods}
        with self._lock:
            self._pods = {p["metadata"]["name"]: p for p in pods}
            for uid, container in list(self.containers.items()):
                current = wanted.get(uid)
                if current is None or current["status"]["podIP"] != container.ip:
                    # Deleted, being deleted, or moved: the kubelet stops the container, within
                    # the deletion's grace period if it says one (--grace-period=0: SIGKILL).
                    deleting = (by_uid.get(uid) or {}).get("metadata", {})
                    grace = deleting.get("deletionGracePeriodSeconds", container.grace_seconds)
                    del self.containers[uid]
                    self._terminate(container, grace=float(grace))
                    self.stopping.append(container)
            self._reap()
        for uid, pod in wanted.items():
            with self._lock:
                known = uid in self.containers
            if not known:
                try:
                    container = self._prepare(pod)
                except NotYet as exc:
                    self._note(pod["metadata"]["name"], f"waiting: {exc}")
                    continue
                with self._lock:
                    self.containers[uid] = container
        with self._lock:
            for container in self.containers.values():
                self._keep_running(container)

    def _keep_running(self, container: Container) -> None:
        proc = container.proc
        if proc is not None and proc.poll() is None:
            return
        now = time.time()
        if proc is not None and container.next_start == 0.0:
            # It ended by itself: record it and restart after a back-off, as restartPolicy says.
            container.exits.append(int(proc.returncode))
            container.restarts += 1
            self.events.append(RunnerEvent(now, container.pod, f"exited {proc.returncode}"))
            container.next_start = now + min(MAX_BACKOFF_SECONDS, 0.5 * 2**container.restarts)
        if now < container.next_start:
            return
        container.next_start = 0.0
        with container.log_path.open("ab") as log:
            container.proc = subprocess.Popen(
                container.argv,
                env=container.env,
                cwd=container.log_path.parent,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        container.started_at = now
        self.events.append(RunnerEvent(now, container.pod, "started"))

    def _terminate(self, container: Container, grace: float) -> None:
        if container.proc is None or container.proc.poll() is not None or container.kill_at is not None:
            return
        if grace <= 0:
            self._killpg(container.proc, signal.SIGKILL)
            container.kill_at = float("inf")
            self.events.append(RunnerEvent(time.time(), container.pod, "killed"))
            return
        self._killpg(container.proc, signal.SIGTERM)
        container.kill_at = time.time() + grace
        self.events.append(RunnerEvent(time.time(), container.pod, "terminated"))

    def _reap(self) -> None:
        for container in list(self.stopping):
            proc = container.proc
            if proc is None or proc.poll() is not None:
                self.stopping.remove(container)
            elif container.kill_at is not None and time.time() >= container.kill_at:
                self._killpg(proc, signal.SIGKILL)
                self.events.append(RunnerEvent(time.time(), container.pod, "killed"))
                container.kill_at = float("inf")

    @staticmethod
    def _killpg(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def _note(self, pod: str, message: str) -> None:
        with self._lock:
            last = next((e for e in reversed(self.events) if e.pod == pod), None)
            if last is None or last.what != message:
                self.events.append(RunnerEvent(time.time(), pod, message))

    # -- from a pod to a process -----------------------------------------------------------

    def _prepare(self, pod: dict[str, Any]) -> Container:
        meta, spec = pod["metadata"], pod["spec"]
        container = spec["containers"][0]
        pod_dir = self.directory / f"{meta['name']}-{meta['uid'][:8]}"
        mounts = self._volumes(pod, container, pod_dir)
        env = dict(IMAGE_ENV)
        for entry in container.get("env") or []:
            env[entry["name"]] = self._env_value(pod, entry)
        env.update(self.env_overrides)
        env = env_in_volumes(env, mounts)
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        if not argv:
            raise NotYet("the container has neither command nor args")
        executable = shutil.which(argv[0], path=env["PATH"])
        if executable is None:
            # What a container runtime reports as "executable file not found in $PATH".
            raise NotYet(f"executable {argv[0]!r} not found in $PATH")
        http = next((p for p in container.get("ports") or [] if p.get("name") == "http"), None)
        grace = spec.get("terminationGracePeriodSeconds", 30)
        return Container(
            pod=meta["name"],
            uid=meta["uid"],
            ip=pod["status"]["podIP"],
            component=meta["labels"][api.LABEL_COMPONENT],
            argv=[executable, *argv[1:]],
            env=env,
            log_path=pod_dir / "container.log",
            grace_seconds=float(grace),
            http_port=None if http is None else int(http["containerPort"]),
        )

    def _volumes(self, pod: dict[str, Any], container: dict[str, Any], pod_dir: Path) -> dict[str, Path]:
        """Materialise the mounted volumes; mount path -> local directory."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            local = pod_dir / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                source = volume["configMap"]
                config_map = self.kube.get("v1", "ConfigMap", self.namespace, source["name"])
                if config_map is None:
                    raise NotYet(f"ConfigMap {source['name']} not found")
                data = config_map.get("data") or {}
                items = source.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    target = local / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[item["key"]])
            elif "emptyDir" not in volume:
                raise NotYet(f"volume {mount['name']}: only configMap and emptyDir are supported")
            mounts[mount["mountPath"].rstrip("/")] = local
        return mounts

    def _env_value(self, pod: dict[str, Any], entry: dict[str, Any]) -> str:
        if "valueFrom" not in entry:
            return str(entry.get("value", ""))
        source = entry["valueFrom"]
        if "fieldRef" in source:
            return _field(pod, source["fieldRef"]["fieldPath"])
        for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            if key in source:
                ref = source[key]
                obj = self.kube.get("v1", kind, self.namespace, ref["name"])
                if kind == "Secret":
                    raw = (obj or {}).get("data", {}).get(ref["key"])
                    value = None if raw is None else base64.b64decode(raw).decode()
                else:
                    value = (obj or {}).get("data", {}).get(ref["key"])
                if value is None:
                    if ref.get("optional"):
                        return ""
                    raise NotYet(f"{entry['name']}: {kind} {ref['name']} has no key {ref['key']}")
                return str(value)
        raise NotYet(f"{entry['name']}: unsupported valueFrom {sorted(source)}")


def _field(pod: dict[str, Any], path: str) -> str:
    """The downward API's ``fieldRef`` paths a kubelet resolves for env vars."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    for prefix, values in (
        ("metadata.labels", meta.get("labels")),
        ("metadata.annotations", meta.get("annotations")),
    ):
        if path.startswith(f"{prefix}['") and path.endswith("']"):
            return str((values or {}).get(path[len(prefix) + 2 : -2], ""))
    raise NotYet(f"unsupported fieldRef {path}")


def env_in_volumes(env: Mapping[str, str], mounts: Mapping[str, Path]) -> dict[str, str]:
    """The environment with every path inside a mounted volume pointed at the pod's copy.

    PATH names this machine's directories standing in for the image's, never a volume (a
    checkout under /tmp would otherwise be "inside" the pod's /tmp emptyDir)."""
    return {name: value if name == "PATH" else _under_mounts(value, mounts) for name, value in env.items()}


def _under_mounts(value: str, mounts: Mapping[str, Path]) -> str:
    """A path inside a mounted volume, pointed at the pod's local copy of that volume."""
    for mount_path, local in mounts.items():
        if value == mount_path or value.startswith(mount_path + "/"):
            return str(local) + value[len(mount_path) :]
    return value

"""Build the container images for the real-pods tests without a registry or a container engine.

    python3 scripts/build_images.py                 # build (or reuse) all four, print archives
    python3 scripts/build_images.py --import SOCK   # ... and `ctr -n k8s.io images import` them

Images:

* ``localhost/trading-system/pause:3.10``: the pod sandbox, a static ``pause`` compiled
  from a few lines of C on the host (what upstream's pause does: wait, reap, exit on TERM).
* ``trading-system:dev`` (also tagged ``ghcr.io/trading-system/trading-system:<appVersion>``,
  the chart's default): **built from the repository's Dockerfile**. This script is a small
  Dockerfile interpreter (FROM, ARG, ENV, WORKDIR, COPY incl. ``--from``, RUN incl. heredocs,
  USER, LABEL, EXPOSE, CMD, ENTRYPOINT) that runs each RUN in a chroot, so the Dockerfile
  stays the one description of the image; a Dockerfile change shows up here without a
  second list to keep in step.
* ``localhost/trading-system/rabbitmq:4.0``: Debian trixie's ``rabbitmq-server`` 4.0.5, set up
  as the operator's StatefulSet expects of the official image (RABBITMQ_DOCKERFILE below).
* ``localhost/trading-system/postgres:17``: Debian trixie's PostgreSQL 17 with an entry point
  that does what the official image's does for the operator's dev database
  (POSTGRES_DOCKERFILE below, ``scripts/postgres-entrypoint.sh``).

``python:<v>-slim-bookworm`` and ``debian:bookworm-slim`` both map to one Debian bookworm
minbase rootfs made by ``debootstrap`` against the mirror apt already uses, with Python,
its venv module and headers (what the python image has) added; ``debian:trixie(-slim)`` maps
to a trixie minbase rootfs from the same mirror. Each base is built once and shared.
Everything is cached under ``~/.cache/trading-system/images`` by a hash of its
inputs (base: suite, mirror, packages; images: the Dockerfile and every file its COPY lines
read, after .dockerignore), so an unchanged image costs a few hashes. Archives are docker
archives (``docker save`` layout, one layer) that ``ctr images import`` reads. Like Docker's
build cache, a rootfs snapshot after each slow RUN lets a source change rerun only the steps
after the first COPY that reads a changed file.

Needs root (chroot, unshare, debootstrap) and the packages ``debootstrap`` and ``gcc``.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("TRADING_SYSTEM_CACHE", Path.home() / ".cache" / "trading-system")) / "images"
# One rootfs snapshot after each RUN that took a while, keyed like Docker's build cache, so a
# source change reruns only the steps after the first COPY that reads a changed file.
LAYERS = CACHE / "layers"
SNAPSHOT_MIN_SECONDS = 5
KEEP_SNAPSHOTS = 8  # a build of both images uses 5; older ones are pruned
KEEP_IMAGES = 2  # archives per image
FORMAT_VERSION = "1"  # bump when this script changes what it produces

SUITE = "bookworm"  # the host's suite and the project image's base
DEBIAN_PYTHON = "3.11"  # bookworm's python3
BASE_PACKAGES = ["python3", "python3-venv", "python-is-python3", "libpython3.11-dev", "ca-certificates"]
# Debian suites a FROM may map onto, with what their minbase rootfs gets beyond debootstrap's
# own, and the image references each stands in for. trixie (Debian 13) carries RabbitMQ 4.0
# and PostgreSQL 17, which the operator's manifests need (bookworm has 3.10 and 15).
SUITE_PACKAGES = {SUITE: BASE_PACKAGES, "trixie": ["ca-certificates"]}
SUITE_ALIASES = {
    SUITE: [rf"python:{re.escape(DEBIAN_PYTHON)}(\.\d+)?-slim-{SUITE}", rf"debian:{SUITE}(-slim)?"],
    "trixie": [r"debian:trixie(-slim)?"],
}
BASE_ALIASES = [alias for aliases in SUITE_ALIASES.values() for alias in aliases]
DEFAULT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

PAUSE_REF = "localhost/trading-system/pause:3.10"
PROJECT_REF = "trading-system:dev"
RABBITMQ_REF = "localhost/trading-system/rabbitmq:4.0"
POSTGRES_REF = "localhost/trading-system/postgres:17"

PAUSE_C = r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    struct sigaction term = {.sa_handler = stop}, child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGINT, &term, NULL);
    sigaction(SIGTERM, &term, NULL);
    sigaction(SIGCHLD, &child, NULL);
    for (;;) pause();
}
"""

# What the operator's StatefulSet (operator/trading_operator/manifests/rabbitmq.py) expects
# of the official rabbitmq image: uid/gid 999, HOME and data under /var/lib/rabbitmq, config
# from /etc/rabbitmq/conf.d, logs to stdout, `rabbitmq-server` as the command and the CLI
# tools (rabbitmq-upgrade for the preStop hook) on PATH, the management, prometheus and
# peer-discovery-k8s plugins (Debian ships every bundled plugin). 4.x is needed for the
# quorum_queue.continuous_membership_reconciliation settings (>= 3.13).
RABBITMQ_DOCKERFILE = """
FROM debian:trixie-slim
RUN groupadd --system --gid 999 rabbitmq \\
 && useradd --system --uid 999 --gid 999 --home-dir /var/lib/rabbitmq --shell /usr/sbin/nologin rabbitmq \\
 && apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive \\
    apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* \\
 && mkdir -p /etc/rabbitmq/conf.d /var/lib/rabbitmq/mnesia \\
 && printf 'loopback_users.guest = false\\nlisteners.tcp.default = 5672\\n' \\
    > /etc/rabbitmq/conf.d/10-defaults.conf \\
 && chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /etc/rabbitmq \\
 && test -x /usr/lib/rabbitmq/bin/rabbitmq-upgrade
ENV RABBITMQ_LOGS=- HOME=/var/lib/rabbitmq RABBITMQ_DATA_DIR=/var/lib/rabbitmq \\
    PATH=/usr/lib/rabbitmq/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 999:999
EXPOSE 4369 5672 15672 15692 25672
CMD ["rabbitmq-server"]
"""

# What the operator's dev database (operator/trading_operator/manifests/postgres.py) uses of
# the official postgres image: uid/gid 999, POSTGRES_USER/POSTGRES_DB/POSTGRES_PASSWORD and
# PGDATA honoured on first start (initdb, password auth from anywhere), a read-only root file
# system (sockets in /var/run/postgresql), and pg_isready on PATH.
POSTGRES_DOCKERFILE = """
FROM debian:trixie-slim
RUN groupadd --system --gid 999 postgres \\
 && useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --shell /bin/sh postgres \\
 && apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive \\
    apt-get install -y -qq --no-install-recommends postgresql-17 >/dev/null \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* \\
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \\
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY scripts/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data \\
    PATH=/usr/lib/postgresql/17/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 999:999
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
"""


PRIVATE_MOUNTS = ["unshare", "--mount", "--propagation", "private", "--fork"]


def safe_rmtree(path: Path) -> None:
    """rmtree, but never into something still mounted below ``path``."""
    prefix = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    if any(m.startswith(prefix) for m in mounts):
        raise SystemExit(f"refusing to delete {path}: something is mounted below it")
    shutil.rmtree(path, ignore_errors=True)


def log(msg: str) -> None:
    print(f"[build-images] {msg}", file=sys.stderr, flush=True)


def sh(args: list[str], quiet: bool = False) -> None:
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL if quiet else None)


def digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:20]


# -- the Debian base -----------------------------------------------------------------


def debian_mirror() -> str:
    """The mirror apt uses for the main suite (deb822 or one-line sources)."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.is_file():
            texts.append(path.read_text())
    for text in texts:
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1)
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] == "deb" and fields[2] == SUITE:
                return next(f for f in fields[1:] if not f.startswith("["))
    return "http://deb.debian.org/debian"


def suite_of(ref: str) -> str:
    for suite, aliases in SUITE_ALIASES.items():
        if any(re.fullmatch(alias, ref) for alias in aliases):
            return suite
    raise SystemExit(f"FROM {ref}: only {BASE_ALIASES} map onto a debootstrap base")


def from_suites(text: str) -> list[str]:
    """The suites the Dockerfile's FROM lines map onto (ARGs expanded), in order."""
    args: dict[str, str] = {}
    suites: list[str] = []
    for inst in parse_dockerfile(text):
        if inst.op == "ARG":
            args.update(key_values(inst.args, args))
        elif inst.op == "FROM":
            ref = expand(inst.args, args).split()[0]
            suite = suite_of(ref)
            if suite not in suites:
                suites.append(suite)
    return suites


def base_rootfs(suite: str = SUITE) -> Path:
    mirror = debian_mirror()  # the host's archive serves every suite
    packages = SUITE_PACKAGES[suite]
    key = digest(FORMAT_VERSION, suite, mirror, *packages)
    out = CACHE / f"base-{suite}-{key}"
    rootfs = out / "rootfs"
    if (out / "done").exists():
        return rootfs
    safe_rmtree(out)
    out.mkdir(parents=True)
    log(f"debootstrap --variant=minbase {suite} from {mirror} (once; cached as {out.name}) ...")
    start = time.monotonic()
    # In a private mount namespace: the /proc and /sys debootstrap mounts die with it,
    # even if it fails half-way (a leftover bind mount under a tree rmtree walks is a hazard).
    sh(
        [
            *PRIVATE_MOUNTS,
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            suite,
            str(rootfs),
            mirror,
        ],
        quiet=True,
    )
    for junk in rootfs.glob("var/cache/apt/archives/*.deb"):
        junk.unlink()
    (out / "done").write_text(f"{time.monotonic() - start:.0f}\n")
    log(f"base rootfs ready in {time.monotonic() - start:.0f} s")
    return rootfs


# -- a small Dockerfile interpreter --------------------------------------------------


@dataclass
class Instruction:
    op: str
    args: str
    heredoc: str = ""  # the body (with its terminator line) of a RUN <<EOF


def parse_dockerfile(text: str) -> list[Instruction]:
    lines = text.splitlines()
    out: list[Instruction] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            nxt = lines[i]
            i += 1
            if nxt.lstrip().startswith("#"):
                continue
            line = line[:-1] + nxt  # as Docker does: the backslash-newline goes
        op, _, rest = line.strip().partition(" ")
        inst = Instruction(op.upper(), rest.strip())
        marker = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", inst.args) if inst.op == "RUN" else None
        if marker:
            body = []
            while i < len(lines):
                body.append(lines[i])
                i += 1
                if lines[i - 1].strip() == marker.group(1):
                    break
            inst.heredoc = "\n".join(body)
        out.append(inst)
    return out


def expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: env.get(m.group(1) or m.group(2), ""), text)


def key_values(args: str, env: dict[str, str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for token in shlex.split(args):
        name, _, value = token.partition("=")
        pairs[name] = expand(value, {**env, **pairs})
    return pairs


def dockerignore(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.exists():
        return []
    return [
        p.strip().rstrip("/") for p in path.read_text().splitlines() if p.strip() and not p.startswith("#")
    ]


def ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        if fnmatch.fnmatch(rel, pattern) or any(fnmatch.fnmatch(p, bare) for p in parts):
            return True
    return False


def context_files(context: Path, sources: list[str], patterns: list[str]) -> list[Path]:
    files: list[Path] = []
    for src in sources:
        path = context / src
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files += [p for p in candidates if not ignored(p.relative_to(context).as_posix(), patterns)]
    return files


def copy_sources(instructions: list[Instruction]) -> list[str]:
    sources: list[str] = []
    for inst in instructions:
        if inst.op in ("COPY", "ADD"):
            words = shlex.split(inst.args)
            if not any(w.startswith("--from=") for w in words):
                sources += [w for w in words if not w.startswith("--")][:-1]
    return sources


@dataclass
class Stage:
    name: str
    rootfs: Path
    env: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ENV))
    workdir: str = "/"
    user: str = ""
    config: dict[str, object] = field(default_factory=dict)
    key: str = ""  # Docker's build-cache key: the chain of everything this stage did so far


# Passed from the host into RUN steps only, never into the image (as Docker does with proxy
# variables): package-index settings, and the host's CA bundle, since TLS to the registries
# may be inspected by a proxy whose CA only the host trusts.
PASSTHROUGH_ENV = [
    *("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT"),
    *("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"),
]
BUILD_CA = "/tmp/.build-ca.crt"  # /tmp is left out of the exported layer


def host_ca_bundle() -> Path | None:
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def run_in(stage: Stage, script: str) -> None:
    """Run a shell script as root inside the stage's rootfs (chroot, private mount namespace)."""
    root = stage.rootfs
    # The host's resolver for the step only, as Docker bind-mounts one: the image keeps its own.
    resolv = root / "etc/resolv.conf"
    own_resolv = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    env = {**stage.env, "HOME": "/root"}
    env.update({k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ})
    ca = host_ca_bundle()
    if ca is not None:
        (root / "tmp").mkdir(exist_ok=True)
        shutil.copyfile(ca, root / BUILD_CA.lstrip("/"))
        env.update({"PIP_CERT": BUILD_CA, "SSL_CERT_FILE": BUILD_CA, "REQUESTS_CA_BUNDLE": BUILD_CA})
    inner = f"cd {shlex.quote(stage.workdir)} && {script}"
    # The mounts live in a private mount namespace and vanish with it.
    setup = (
        'set -e; r=$1; shift; mount -t proc p "$r/proc"; mount -t tmpfs s "$r/dev/shm"; '
        'mount -t devpts -o newinstance,ptmxmode=0666 d "$r/dev/pts"; exec chroot "$r" "$@"'
    )
    cmd = [*PRIVATE_MOUNTS, "sh", "-c", setup]
    cmd += [
        "sh",
        str(root),
        "/usr/bin/env",
        "-i",
        *[f"{k}={v}" for k, v in env.items()],
        "/bin/sh",
        "-c",
        inner,
    ]
    for d in ("dev/shm", "dev/pts"):
        (root / d).mkdir(exist_ok=True)
    try:
        sh(cmd)
    finally:
        resolv.unlink(missing_ok=True)
        if own_resolv is not None:
            resolv.write_bytes(own_resolv)
        (root / BUILD_CA.lstrip("/")).unlink(missing_ok=True)


def copy_into(src: Path, dest: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)


def build_dockerfile(dockerfile_text: str, context: Path, work: Path, bases: dict[str, Path]) -> Stage:
    instructions = parse_dockerfile(dockerfile_text)
    patterns = dockerignore(context)
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for inst in instructions:
        if inst.op == "ARG":
            args.update(key_values(inst.args, args if stage is None else {**args, **stage.env}))
            continue
        if inst.op == "FROM":
            words = expand(inst.args, args).split()
            ref, name = (
                words[0],
                (words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))),
            )
            suite = suite_of(ref)
            base = bases[suite]
            rootfs = work / f"stage-{name}"
            log(f"stage {name}: FROM {ref} -> debootstrap {suite} base")
            sh(["cp", "-a", "--reflink=auto", str(base), str(rootfs)])
            stage = stages[name] = Stage(name, rootfs, key=digest(base.parent.name, ref, json.dumps(args)))
            continue
        if stage is None:
            raise SystemExit(f"{inst.op} before FROM")
        env = {**args, **stage.env}
        stage.key = digest(
            stage.key, inst.op, inst.args, inst.heredoc, input_key(inst, context, patterns, stages)
        )
        if inst.op == "ENV":
            stage.env.update(key_values(inst.args, env))
        elif inst.op == "WORKDIR":
            stage.workdir = str(Path(stage.workdir) / expand(inst.args, env))
            (stage.rootfs / stage.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif inst.op == "RUN":
            if stage.user not in ("", "0", "root", "0:0"):
                raise SystemExit(f"RUN after USER {stage.user}: this interpreter runs RUN as root only")
            script = inst.args + ("\n" + inst.heredoc if inst.heredoc else "")
            log(f"stage {stage.name}: RUN {inst.args.splitlines()[0][:90]}")
            snapshot = LAYERS / stage.key
            if (snapshot / "done").exists():  # the same step on the same inputs ran before
                safe_rmtree(stage.rootfs)
                sh(["cp", "-a", "--reflink=auto", str(snapshot / "rootfs"), str(stage.rootfs)])
                (snapshot / "done").touch()
                log(f"  ... cached ({stage.key})")
                continue
            start = time.monotonic()
            run_in(stage, script)
            took = time.monotonic() - start
            log(f"  ... {took:.0f} s")
            if took >= SNAPSHOT_MIN_SECONDS:
                save_snapshot(stage.rootfs, snapshot)
        elif inst.op in ("COPY", "ADD"):
            words = shlex.split(expand(inst.args, env))
            origin = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            paths = [w for w in words if not w.startswith("--")]
            srcs, dest = paths[:-1], paths[-1]
            dest_abs = Path(stage.workdir) / dest
            into_dir = dest.endswith("/") or len(srcs) > 1
            for src in srcs:
                if origin is not None:
                    src_path = stages[origin].rootfs / src.lstrip("/")
                    target = stage.rootfs / str(dest_abs).lstrip("/")
                    copy_into(src_path, target / src_path.name if into_dir and src_path.is_file() else target)
                    continue
                for file in context_files(context, [src], patterns):
                    rel = file.relative_to(context / src) if (context / src).is_dir() else Path(file.name)
                    base_dest = dest_abs / rel if (context / src).is_dir() or into_dir else dest_abs
                    copy_into(file, stage.rootfs / str(base_dest).lstrip("/"))
        elif inst.op == "USER":
            stage.user = expand(inst.args, env)
        elif inst.op == "LABEL":
            labels = stage.config.setdefault("Labels", {})
            assert isinstance(labels, dict)
            labels.update(key_values(inst.args, env))
        elif inst.op == "EXPOSE":
            stage.config["ExposedPorts"] = {
                (p if "/" in p else f"{p}/tcp"): {} for p in expand(inst.args, env).split()
            }
        elif inst.op in ("CMD", "ENTRYPOINT"):
            value = json.loads(inst.args) if inst.args.startswith("[") else ["/bin/sh", "-c", inst.args]
            stage.config["Cmd" if inst.op == "CMD" else "Entrypoint"] = value
        else:
            raise SystemExit(f"unsupported Dockerfile instruction {inst.op}")
    if stage is None:
        raise SystemExit("no FROM in the Dockerfile")
    return stage


def input_key(inst: Instruction, context: Path, patterns: list[str], stages: dict[str, Stage]) -> str:
    """What a COPY reads besides its own text: file contents, or the source stage's key."""
    if inst.op not in ("COPY", "ADD"):
        return ""
    words = shlex.split(inst.args)
    origin = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
    if origin is not None:
        return stages[origin].key
    h = hashlib.sha256()
    for file in context_files(context, [w for w in words if not w.startswith("--")][:-1], patterns):
        h.update(file.relative_to(context).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return h.hexdigest()


def save_snapshot(rootfs: Path, snapshot: Path) -> None:
    safe_rmtree(snapshot)
    snapshot.mkdir(parents=True)
    sh(["cp", "-a", "--reflink=auto", str(rootfs), str(snapshot / "rootfs")])
    (snapshot / "done").touch()


def prune(pattern: str, keep: int) -> None:
    """Keep the ``keep`` most recently used entries of the cache that match ``pattern``."""
    entries = [p for p in CACHE.glob(pattern) if p.is_dir()]
    entries.sort(key=lambda p: max((f.stat().st_mtime for f in p.iterdir()), default=0), reverse=True)
    for old in entries[keep:]:
        safe_rmtree(old)


# -- image archives ------------------------------------------------------------------


def write_archive(rootfs: Path, config: dict[str, object], refs: list[str], out: Path) -> None:
    """A one-layer docker archive (the `docker save` layout) of ``rootfs``."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        t = Path(tmp)
        layer = t / "layer.tar"
        sh(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                "--exclude=./dev/*",
                "--exclude=./tmp/*",
                "--exclude=./var/cache/apt/*",
                "--exclude=./var/lib/apt/lists/*",
                "-C",
                str(rootfs),
                "-cf",
                str(layer),
                ".",
            ]
        )
        h = hashlib.sha256()
        with layer.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        diff_id = f"sha256:{h.hexdigest()}"
        image_config = {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "scripts/build_images.py"}],
        }
        config_bytes = json.dumps(image_config, sort_keys=True).encode()
        config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
        (t / config_name).write_bytes(config_bytes)
        manifest = [{"Config": config_name, "RepoTags": refs, "Layers": ["layer.tar"]}]
        (t / "manifest.json").write_text(json.dumps(manifest))
        partial = out.with_suffix(".partial")
        sh(["tar", "-C", str(t), "-cf", str(partial), "manifest.json", config_name, "layer.tar"])
        partial.rename(out)


def image_config(stage: Stage) -> dict[str, object]:
    config: dict[str, object] = {"Env": [f"{k}={v}" for k, v in stage.env.items()], **stage.config}
    if stage.user:
        config["User"] = stage.user
    if stage.workdir != "/":
        config["WorkingDir"] = stage.workdir
    return config


def build_from_dockerfile(
    label: str, text: str, context: Path, refs: list[str], extra_key: list[str]
) -> Path:
    bases = {suite: base_rootfs(suite) for suite in from_suites(text)}
    sources = copy_sources(parse_dockerfile(text))
    h = hashlib.sha256()
    for file in context_files(context, sources, dockerignore(context)):
        h.update(file.relative_to(context).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    base_names = ",".join(base.parent.name for base in bases.values())
    key = digest(FORMAT_VERSION, base_names, text, h.hexdigest(), *refs, *extra_key)
    out = CACHE / f"{label}-{key}" / "image.tar"
    if out.exists():
        log(f"{label}: cached ({out.parent.name})")
        out.touch()
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    (CACHE / "work").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=CACHE / "work"))
    try:
        final = build_dockerfile(text, context, work, bases)
        write_archive(final.rootfs, image_config(final), refs, out)
    finally:
        safe_rmtree(work)
    log(f"{label}: built in {time.monotonic() - start:.0f} s -> {out}")
    prune(f"{label}-*", KEEP_IMAGES)
    prune("layers/*", KEEP_SNAPSHOTS)
    return out


def build_pause() -> Path:
    key = digest(FORMAT_VERSION, PAUSE_C, PAUSE_REF)
    out = CACHE / f"pause-{key}" / "image.tar"
    if out.exists():
        log(f"pause: cached ({out.parent.name})")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        src = Path(tmp) / "pause.c"
        src.write_text(PAUSE_C)
        sh(["gcc", "-Os", "-static", "-o", str(rootfs / "pause"), str(src)])
        sh(["strip", str(rootfs / "pause")])
        write_archive(rootfs, {"Entrypoint": ["/pause"], "User": "65535:65535"}, [PAUSE_REF], out)
    log(f"pause: built -> {out}")
    return out


def chart_app_version() -> str:
    chart = (ROOT / "charts" / "trading-system" / "Chart.yaml").read_text()
    match = re.search(r"^appVersion:\s*\"?([^\"\s]+)", chart, re.M)
    return match.group(1) if match else "dev"


def build_all() -> dict[str, Path]:
    dockerfile = (ROOT / "Dockerfile").read_text()
    project_refs = [PROJECT_REF, f"ghcr.io/trading-system/trading-system:{chart_app_version()}"]
    return {
        PAUSE_REF: build_pause(),
        PROJECT_REF: build_from_dockerfile("trading-system", dockerfile, ROOT, project_refs, []),
        RABBITMQ_REF: build_from_dockerfile("rabbitmq", RABBITMQ_DOCKERFILE, ROOT, [RABBITMQ_REF], []),
        POSTGRES_REF: build_from_dockerfile("postgres", POSTGRES_DOCKERFILE, ROOT, [POSTGRES_REF], []),
    }


def import_images(archives: dict[str, Path], address: str) -> None:
    for ref, archive in archives.items():
        start = time.monotonic()
        sh(
            ["ctr", "--address", address, "-n", "k8s.io", "images", "import", str(archive)],
            quiet=True,
        )
        log(f"imported {ref} in {time.monotonic() - start:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--import", dest="address", metavar="SOCKET", help="containerd socket to import into")
    opts = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    archives = build_all()
    log(f"images ready in {time.monotonic() - start:.0f} s")
    if opts.address:
        import_images(archives, opts.address)
    print(json.dumps({ref: str(path) for ref, path in archives.items()}))


if __name__ == "__main__":
    main()

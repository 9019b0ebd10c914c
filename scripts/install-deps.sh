#!/usr/bin/env bash
# Install what the project and its tests need on a fresh Debian machine: system packages
# (RabbitMQ, PostgreSQL, openssl, containerd and what the real-pods node needs) when missing,
# and a virtualenv with the project installed in editable mode with its test extras. Safe to
# re-run: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[install-deps] %s\n' "$*" >&2; }

need_apt=()
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v ip >/dev/null || need_apt+=(iproute2)
# The real-pods node (tests/environment/node.py) and its images (scripts/build_images.py).
# None of these start a service; the tests run a private containerd.
command -v containerd >/dev/null || need_apt+=(containerd)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
command -v iptables >/dev/null || need_apt+=(iptables)
command -v conntrack >/dev/null || need_apt+=(conntrack)  # kube-proxy
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v gcc >/dev/null || need_apt+=(gcc libc6-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "apt-get install ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # The Debian packages may start system-wide servers; the tests run private ones.
    $SUDO service rabbitmq-server stop >/dev/null 2>&1 || true
    $SUDO service postgresql stop >/dev/null 2>&1 || true
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    log "creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
    .venv/bin/pip install -q --upgrade pip
fi
# Re-installing an unchanged editable project is a no-op apart from the resolver check.
.venv/bin/pip install -q -e '.[test]'
# The compiled matching core (mypyc, cached by source hash); pure Python if it cannot build.
.venv/bin/python scripts/build_accelerated.py

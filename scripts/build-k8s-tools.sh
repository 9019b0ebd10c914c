#!/usr/bin/env bash
# Build the Kubernetes test tools from the Go module proxy into a version-keyed cache:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, the kubelet and
# kube-proxy and CoreDNS (for the real-pods node, tests/environment/node.py), KWOK and helm.
#
# Nothing here is downloaded as a prebuilt binary: every tool is compiled from its Go
# module, so the same script works on any machine that reaches the Go module proxy.
# Only tools whose binary is missing are rebuilt, so a warm run costs a few stat calls.
#
# Usage: scripts/build-k8s-tools.sh            (prints the bin directory on the last line)
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.36.3}
ETCD_VERSION=${ETCD_VERSION:-3.6.8}
KWOK_VERSION=${KWOK_VERSION:-0.8.0}
HELM_VERSION=${HELM_VERSION:-3.21.4}
COREDNS_VERSION=${COREDNS_VERSION:-1.15.0}
CACHE_ROOT=${TRADING_SYSTEM_CACHE:-$HOME/.cache/trading-system}
TOOLS_KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
BIN="$CACHE_ROOT/tools/$TOOLS_KEY/bin"
LOG_DIR="$CACHE_ROOT/tools/$TOOLS_KEY/logs"
mkdir -p "$BIN" "$LOG_DIR"

# GOTOOLCHAIN=local: a module needing a newer Go fails at once instead of trying to
# download a toolchain (which this network cannot reach).
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { printf '[build-k8s-tools] %s\n' "$*" >&2; }

timed() {  # timed NAME LOGFILE CMD... : run, report the duration, show the log on failure
    local name=$1 logfile=$2; shift 2
    local start=$SECONDS
    log "building $name ..."
    if ! "$@" >"$logfile" 2>&1; then
        log "FAILED to build $name; last lines of $logfile:"
        tail -n 40 "$logfile" >&2
        exit 1
    fi
    log "built $name in $((SECONDS - start)) s"
}

wrapper_dir() { local d; d=$(mktemp -d); (cd "$d" && go mod init "$1" >/dev/null 2>&1); echo "$d"; }

build_kubernetes() {  # build_kubernetes BINARY... : k8s.io/kubernetes/cmd/<binary> for each
    local v=$K8S_VERSION staging="v0.${K8S_VERSION#*.}" minor
    minor=$(cut -d. -f2 <<<"$v")
    local w; w=$(wrapper_dir k8s-bins.local)
    (
        cd "$w"
        local kgomod
        kgomod=$(go mod download -json "k8s.io/kubernetes@v$v" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
        go mod edit -go="$(awk '$1=="go"{print $2; exit}' "$kgomod")"
        awk '$1=="godebug" && $2!="(" {print $2}' "$kgomod" | while read -r kv; do go mod edit -godebug="$kv"; done
        # k8s.io/kubernetes points every staging module at ./staging with a replace, which
        # a dependency cannot use; a version-less replace to the published v0.X.Y fixes it.
        awk '{if ($1=="replace") $1=""; $0=$0} $2=="=>" && $3 ~ /^\.\/staging\// {print $1}' "$kgomod" |
            while read -r m; do go mod edit -replace="$m=$m@$staging"; done
        local pkgs; pkgs=$(for b in "$@"; do printf 'k8s.io/kubernetes/cmd/%s ' "$b"; done)
        go get -tool $(for p in $pkgs; do printf '%s@v%s ' "$p" "$v"; done)
        go mod tidy
        local ldf="-s -w" now; now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
        for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
            ldf+=" -X $p.gitVersion=v$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$now"
        done
        go build -trimpath -buildvcs=false -tags selinux,notest,grpcnotrace -ldflags "$ldf" -o "$BIN/" $pkgs
    )
    rm -rf "$w"
}

build_etcd() {
    local w; w=$(wrapper_dir etcd-bin.local)
    (
        cd "$w"
        go get -tool "go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
        go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
    )
    rm -rf "$w"
}

build_kwok() {
    GOBIN="$BIN" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=v$KWOK_VERSION" \
        "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
    # v0.8.0 ships no built-in stages; keep the stock ones next to the binary.
    local mod; mod=$(go env GOMODCACHE)/sigs.k8s.io/kwok@v$KWOK_VERSION
    rm -rf "$BIN/../kwok-stages"; cp -r "$mod/kustomize/stage" "$BIN/../kwok-stages"; chmod -R u+w "$BIN/../kwok-stages"
}

build_helm() {
    local minor; minor=$(cut -d. -f2 <<<"$K8S_VERSION")
    local ldf="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
    for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
        ldf+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$minor"
    done
    GOBIN="$BIN" go install -trimpath -ldflags "$ldf" "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
}

# CoreDNS is not part of the cache key (that would rebuild everything else): its binary sits
# next to the others with a version stamp, so a version bump rebuilds CoreDNS alone.
build_coredns() {
    local w; w=$(wrapper_dir coredns-bin.local)
    (
        cd "$w"
        # The plugins compiled in are upstream's plugin.cfg (kubernetes, forward, cache, ...).
        go get -tool "github.com/coredns/coredns@v$COREDNS_VERSION"
        go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$BIN/coredns" github.com/coredns/coredns
    )
    rm -rf "$w"
    touch "$BIN/../coredns-v$COREDNS_VERSION"
}

total_start=$SECONDS
[ -x "$BIN/etcd" ] || timed "etcd v$ETCD_VERSION" "$LOG_DIR/etcd.log" build_etcd
[ -x "$BIN/kwok" ] || timed "kwok v$KWOK_VERSION" "$LOG_DIR/kwok.log" build_kwok
[ -x "$BIN/helm" ] || timed "helm v$HELM_VERSION" "$LOG_DIR/helm.log" build_helm
[ -x "$BIN/coredns" ] && [ -e "$BIN/../coredns-v$COREDNS_VERSION" ] ||
    timed "coredns v$COREDNS_VERSION" "$LOG_DIR/coredns.log" build_coredns
# Control-plane binaries, the kubelet and kube-proxy come from one wrapper module and one `go build`,
# so a cold build shares the compile work; only the missing ones are built. The kubelet is
# static like the rest (CGO_ENABLED=0): upstream builds it without cgo too, and nothing the
# real-pods node uses (cgroupfs driver, CRI over a unix socket) needs cgo.
missing=()
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
    [ -x "$BIN/$b" ] || missing+=("$b")
done
if [ ${#missing[@]} -gt 0 ]; then
    timed "${missing[*]} v$K8S_VERSION" "$LOG_DIR/kubernetes.log" build_kubernetes "${missing[@]}"
fi
log "tools ready in $BIN ($((SECONDS - total_start)) s)"
echo "$BIN"

#!/usr/bin/env bash
# The README's test command: install everything, then lint, type-check and run every test
# against the real RabbitMQ cluster, PostgreSQL and Kubernetes control plane.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -m unit         # a slice (unit | integration | k8s | chaos | pods)
#   scripts/test.sh -m "not pods"   # everything but the real-pods node (no images built)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

# Whether this run selects the real-pods tests: no -m at all, or a marker expression that
# names pods without "not pods".
wants_pods() {
    local prev="" arg
    for arg in "$@"; do
        if [ "$prev" = "-m" ]; then
            [[ "$arg" == *pods* && "$arg" != *"not pods"* ]]
            return
        fi
        prev=$arg
    done
    return 0
}

scripts/install-deps.sh
scripts/build-k8s-tools.sh >/dev/null
if wants_pods "$@"; then
    # The real-pods node's images (cached by their inputs' hash); built here rather than in a
    # fixture, so that a cold build (about 12 minutes) is not counted against a test's timeout.
    .venv/bin/python scripts/build_images.py >/dev/null
fi
echo "[test] set-up done in $((SECONDS - start)) s"

.venv/bin/ruff check .
.venv/bin/ruff format --check . >/dev/null || { echo "[test] ruff format would change files (run: .venv/bin/ruff format .)"; exit 1; }
.venv/bin/mypy
echo "[test] lint and types done in $((SECONDS - start)) s"

set +e
.venv/bin/pytest --durations=15 "$@"
status=$?
if [ $# -eq 0 ] && [ "$(.venv/bin/python scripts/build_accelerated.py --status)" = compiled ]; then
    # The suite above ran the compiled matching core; its own tests run again on the sources.
    echo "[test] matching core tests on the pure-python build"
    TS_MATCHING_CORE=pure .venv/bin/pytest -q tests/unit/matching || status=1
fi
set -e
echo "[test] finished in $((SECONDS - start)) s (pytest exit $status)"
exit $status

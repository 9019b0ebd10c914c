#!/usr/bin/env bash
# The README's first command: install what is needed, then run the whole pipeline locally
# on the embedded default (in-memory bus, SQLite) with a simulated order flow.
#   scripts/demo.sh [--duration SECONDS] [other trading-system demo options]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
    .venv/bin/pip install -q --upgrade pip
fi
.venv/bin/pip install -q -e .
exec .venv/bin/trading-system demo "$@"

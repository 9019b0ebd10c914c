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
# The compiled matching core when a C compiler and mypy are at hand; pure Python otherwise.
if .venv/bin/python -c "import mypyc" 2>/dev/null; then .venv/bin/python scripts/build_accelerated.py; fi
exec .venv/bin/trading-system demo "$@"

# syntax=docker/dockerfile:1.7
# One image for the operator and every service: `trading-operator run ...` or
# `trading-system <service> serve`. Multi-stage (no compilers or pip caches in the result),
# runs as an unprivileged user, and writes nothing outside /tmp, so it works with
# readOnlyRootFilesystem: true (the chart and the operator mount an emptyDir there).
#
# Build:  docker build -t trading-system:dev .
# It is built and loaded into kind by .github/workflows/e2e-kind.yml; there is no
# container engine on the development machine.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Metadata first, so the dependency layer is cached across source-only changes.
COPY pyproject.toml README.md ./
RUN python - <<'PY'
import subprocess, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
subprocess.run(["pip", "install", *deps], check=True)
PY
# The matching core compiled with mypyc (about 2x faster, same events; see docs/matching.md).
# The compiler stays in this stage only. Only the core's own files are copied before it, so
# a change anywhere else in the services reuses this (slowest) layer.
COPY scripts/build_accelerated.py ./scripts/
COPY services/trading_system/__init__.py services/trading_system/py.typed ./services/trading_system/
COPY services/trading_system/matching/__init__.py ./services/trading_system/matching/
COPY services/trading_system/matching/core ./services/trading_system/matching/core
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null \
 && pip install "mypy>=1.11" \
 && python scripts/build_accelerated.py --strict \
 && pip uninstall -y mypy
COPY services ./services
COPY operator ./operator
# Bytecode compiled here, because the read-only root file system cannot hold it later.
RUN pip install --no-deps . && python -m compileall -q -j 0 /opt/venv/lib

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="trading-system" \
      org.opencontainers.image.description="TradingSystem operator and services" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/trading-system/trading-system"
RUN groupadd --system --gid 10001 trading \
 && useradd --system --uid 10001 --gid trading --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin trading
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    HOME=/tmp
# Numeric, so runAsNonRoot can verify it without resolving names.
USER 10001:10001
EXPOSE 8080 9090
CMD ["trading-system", "--help"]

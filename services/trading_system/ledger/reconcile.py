"""Command line for the reconciliation job.

    python -m trading_system.ledger.reconcile --dsn postgresql+asyncpg://... [--format json]
        [--textfile PATH] [--interval SECONDS --metrics-port PORT]

One run by default (a Kubernetes CronJob): prints the report and exits 0 when the ledger
is clean, 1 when it found breaks, 2 when it could not run. ``--textfile`` writes the
gauges for a node-exporter textfile collector; ``--interval`` keeps running and serves
the gauges on ``--metrics-port`` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile

from trading_system.ledger.metrics import ReconciliationMetrics
from trading_system.ledger.reconciliation import ReconciliationReport, reconcile
from trading_system.storage.engine import create_engine

DSN_ENV = "TRADING_SYSTEM_DATABASE_URL"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trading_system.ledger.reconcile",
        description="Check the ledger's invariants and report breaks (exit 0 clean, 1 breaks, 2 error).",
    )
    parser.add_argument("--dsn", default=os.environ.get(DSN_ENV), help=f"database URL (default: ${DSN_ENV})")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--textfile", help="write the Prometheus gauges to this file after each run")
    parser.add_argument("--interval", type=float, help="run every N seconds instead of once")
    parser.add_argument("--metrics-port", type=int, help="with --interval: serve /metrics on this port")
    return parser


def report_to_dict(report: ReconciliationReport) -> dict[str, object]:
    return {
        "ok": report.ok,
        "breaks": [asdict(b) for b in report.breaks],
        "breaks_by_check": report.breaks_by_check(),
        "counts": report.counts,
        "started_at": report.started_at,
        "duration_seconds": round(report.duration_seconds, 6),
    }


def render_text(report: ReconciliationReport) -> str:
    counts = ", ".join(f"{k}={v}" for k, v in sorted(report.counts.items()))
    head = f"ledger reconciliation: {'OK' if report.ok else f'{len(report.breaks)} BREAK(S)'} ({counts})"
    lines = [head]
    lines.extend(
        f"  {b.check}: {b.subject} expected={b.expected} actual={b.actual} {b.detail}".rstrip()
        for b in report.breaks
    )
    return "\n".join(lines)


async def run_once(dsn: str, metrics: ReconciliationMetrics) -> ReconciliationReport:
    engine = create_engine(dsn, pool_size=1)
    try:
        report = await reconcile(engine)
    finally:
        await engine.dispose()
    metrics.export(report)
    return report


async def _main(args: argparse.Namespace) -> int:
    registry = CollectorRegistry()
    metrics = ReconciliationMetrics(registry)
    if args.metrics_port is not None:
        start_http_server(args.metrics_port, registry=registry)
    if args.interval is None:
        report = await _run_and_print(args, registry, metrics)
        return 0 if report.ok else 1
    while True:
        try:
            await _run_and_print(args, registry, metrics)
        except Exception as exc:  # a long-running job outlives a database blip
            metrics.ok.set(0)
            print(f"reconciliation failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        await asyncio.sleep(args.interval)


async def _run_and_print(
    args: argparse.Namespace, registry: CollectorRegistry, metrics: ReconciliationMetrics
) -> ReconciliationReport:
    report = await run_once(args.dsn, metrics)
    print(json.dumps(report_to_dict(report)) if args.format == "json" else render_text(report), flush=True)
    if args.textfile:
        write_to_textfile(args.textfile, registry)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error(f"--dsn or ${DSN_ENV} is required")
    try:
        return asyncio.run(_main(args))
    except Exception as exc:  # the job's contract: exit 2 with a reason, not a traceback
        print(f"reconciliation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

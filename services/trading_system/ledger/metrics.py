"""Prometheus gauges for the reconciliation job (alert on ``ledger_reconciliation_breaks > 0``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from trading_system.ledger.reconciliation import ReconciliationReport


class ReconciliationMetrics:
    """The job's gauges, registered on the given registry (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.breaks = Gauge(
            "ledger_reconciliation_breaks",
            "Invariant breaks found by the last ledger reconciliation, by check",
            ["check"],
            registry=registry,
        )
        self.ok = Gauge(
            "ledger_reconciliation_ok",
            "1 if the last reconciliation found no break, else 0",
            registry=registry,
        )
        self.last_run = Gauge(
            "ledger_reconciliation_last_run_timestamp_seconds",
            "Unix time the last reconciliation started",
            registry=registry,
        )
        self.duration = Gauge(
            "ledger_reconciliation_duration_seconds",
            "How long the last reconciliation took",
            registry=registry,
        )
        self.rows = Gauge(
            "ledger_reconciliation_rows",
            "Rows examined by the last reconciliation, by table",
            ["table"],
            registry=registry,
        )

    def export(self, report: ReconciliationReport) -> None:
        for check, count in report.breaks_by_check().items():
            self.breaks.labels(check=check).set(count)
        self.ok.set(1 if report.ok else 0)
        self.last_run.set(report.started_at)
        self.duration.set(report.duration_seconds)
        for table, count in report.counts.items():
            self.rows.labels(table=table).set(count)

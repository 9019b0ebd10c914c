"""Prometheus metrics of a coordinator replica (one set per registry)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from trading_system.coordinator.protocol import Phase, Transaction


@dataclass(frozen=True, slots=True)
class CoordinatorMetrics:
    outcomes: Counter
    transitions: Counter
    phase_latency: Histogram
    by_phase: Gauge
    in_doubt: Gauge
    recoveries: Counter
    requests: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> CoordinatorMetrics:
        reg = registry
        buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
        return cls(
            outcomes=Counter(
                "ts_coordinator_transactions_ended_total",
                "Transactions ended by this replica",
                ["outcome"],
                registry=reg,
            ),
            transitions=Counter(
                "ts_coordinator_phase_transitions_total", "Phases entered, by phase", ["phase"], registry=reg
            ),
            phase_latency=Histogram(
                "ts_coordinator_phase_seconds",
                "Time spent in a phase",
                ["phase"],
                buckets=buckets,
                registry=reg,
            ),
            by_phase=Gauge(
                "ts_coordinator_transactions",
                "Stored transactions by phase (all replicas)",
                ["phase"],
                registry=reg,
            ),
            in_doubt=Gauge(
                "ts_coordinator_in_doubt", "Transactions in pre_commit, do_commit or aborting", registry=reg
            ),
            recoveries=Counter(
                "ts_coordinator_recoveries_total",
                "Expired leases taken over from a dead replica",
                registry=reg,
            ),
            requests=Counter(
                "ts_coordinator_requests_total",
                "Placement and cancel requests",
                ["kind", "result"],
                registry=reg,
            ),
        )

    def saved(self, before: Transaction, after: Transaction) -> None:
        if after.phase is before.phase:
            return
        self.transitions.labels(after.phase.value).inc()
        self.phase_latency.labels(before.phase.value).observe(
            max(after.timer_started_at - before.timer_started_at, 0)
        )
        if after.phase in (Phase.COMMITTED, Phase.ABORTED):
            self.outcomes.labels(after.phase.value).inc()

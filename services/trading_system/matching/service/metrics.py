"""Prometheus metrics of the matching service (one set per registry)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

ROLE_VALUES = {"standby": 0, "active": 1, "fenced": 2}


@dataclass(frozen=True, slots=True)
class MatchingMetrics:
    commands: Counter
    duplicates: Counter
    events: Counter
    match_latency: Histogram
    journal_latency: Histogram
    publish_latency: Histogram
    role: Gauge
    epoch: Gauge
    lag: Gauge
    applied_seq: Gauge
    book_depth: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = REGISTRY) -> MatchingMetrics:
        reg = registry
        buckets = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
        return cls(
            commands=Counter("ts_matching_commands_total", "Commands journaled and applied", registry=reg),
            duplicates=Counter(
                "ts_matching_duplicate_commands_total", "Duplicate commands ignored", registry=reg
            ),
            events=Counter("ts_matching_events_total", "Events published", registry=reg),
            match_latency=Histogram(
                "ts_matching_match_seconds",
                "Time to apply one batch to the book",
                buckets=buckets,
                registry=reg,
            ),
            journal_latency=Histogram(
                "ts_matching_journal_append_seconds",
                "Journal append latency per batch",
                buckets=buckets,
                registry=reg,
            ),
            publish_latency=Histogram(
                "ts_matching_publish_seconds",
                "Event publish (confirmed) latency per batch",
                buckets=buckets,
                registry=reg,
            ),
            role=Gauge("ts_matching_role", "0 standby, 1 active, 2 fenced", registry=reg),
            epoch=Gauge("ts_matching_epoch", "Epoch this engine holds", registry=reg),
            lag=Gauge("ts_matching_standby_lag", "Journal entries not yet applied", registry=reg),
            applied_seq=Gauge("ts_matching_applied_seq", "Last journal sequence applied", registry=reg),
            book_depth=Gauge(
                "ts_matching_book_depth", "Price levels per symbol and side", ["symbol", "side"], registry=reg
            ),
        )

"""Prometheus metrics of the execution service."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

ROLE_VALUES = {"standby": 0, "active": 1, "fenced": 2}


@dataclass(frozen=True)
class ExecutionMetrics:
    submissions: Counter
    submit_latency: Histogram
    fills: Counter
    # Summaries, not histograms: slippage is signed, and a histogram with negative buckets
    # exposes no _sum, so the average cost could not be computed from it.
    fill_slippage: Summary
    parent_slippage: Summary
    children_released: Counter
    cancels: Counter
    role: Gauge
    epoch: Gauge
    live_orders: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None) -> ExecutionMetrics:
        reg = registry if registry is not None else CollectorRegistry()
        return cls(
            submissions=Counter(
                "ts_execution_submissions",
                "Order API submissions by outcome",
                ["kind", "outcome"],
                registry=reg,
            ),
            submit_latency=Histogram(
                "ts_execution_submit_seconds",
                "HTTP submit to the confirmed publish of the placement",
                registry=reg,
                buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            ),
            fills=Counter("ts_execution_fills", "Fills applied to execution's orders", registry=reg),
            fill_slippage=Summary(
                "ts_execution_fill_slippage_bps",
                "Per-fill slippage in basis points (positive = cost) against a reference price",
                ["reference"],
                registry=reg,
            ),
            parent_slippage=Summary(
                "ts_execution_parent_slippage_bps",
                "Slippage of each finished parent order's average fill price",
                ["reference"],
                registry=reg,
            ),
            children_released=Counter(
                "ts_execution_children_released", "Child orders released by parent strategies", registry=reg
            ),
            cancels=Counter("ts_execution_cancel_requests", "Cancels sent to the coordinator", registry=reg),
            role=Gauge("ts_execution_role", "0 standby, 1 active, 2 fenced", registry=reg),
            epoch=Gauge("ts_execution_epoch", "The epoch this member holds", registry=reg),
            live_orders=Gauge(
                "ts_execution_live_orders", "Orders pending, open or partially filled", registry=reg
            ),
        )

"""The live terminal summary and the final invariant report, as plain text (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trading_system.pipeline.tracker import Bbo


@dataclass(frozen=True, slots=True)
class Snapshot:
    elapsed: float
    counts: Mapping[str, int]
    statuses: Mapping[str, int]
    phases: Mapping[str, int]
    settled: int
    releases: int
    p50_ms: float | None
    p99_ms: float | None
    bbo: Mapping[str, Bbo]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _price(value: int | None) -> str:
    return "-" if value is None else str(value)


def render(s: Snapshot) -> str:
    c = s.counts
    rate = c.get("submitted", 0) / s.elapsed if s.elapsed > 0 else 0.0
    trade_rate = c.get("trades", 0) / s.elapsed if s.elapsed > 0 else 0.0
    lines = [
        f"trading-system demo  t={s.elapsed:5.1f}s  orders/s={rate:7.1f}  trades/s={trade_rate:7.1f}",
        (
            f"orders   submitted={c.get('submitted', 0)} accepted={c.get('accepted', 0)} "
            f"aborted(3PC)={c.get('aborted', 0)} rejected(venue)={c.get('rejected', 0)} "
            f"cancelled={c.get('cancelled', 0)} "
            f"cancel_rejected={c.get('cancel_rejected', 0)}"
        ),
        "         by state: " + " ".join(f"{k}={v}" for k, v in sorted(s.statuses.items())),
        f"trades   {c.get('trades', 0)}  fills={c.get('fills', 0)}  "
        f"settled={s.settled}  releases={s.releases}",
        "3PC      " + " ".join(f"{k}={v}" for k, v in sorted(s.phases.items())),
        f"latency  order->accept p50={_ms(s.p50_ms)} p99={_ms(s.p99_ms)}",
        "BBO",
    ]
    for symbol, bbo in sorted(s.bbo.items()):
        lines.append(
            f"  {symbol:<8} bid {_price(bbo.bid_price):>8} x {bbo.bid_qty:<5} "
            f"ask {_price(bbo.ask_price):>8} x {bbo.ask_qty:<5}"
        )
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


def render_checks(checks: Sequence[Check]) -> str:
    lines = ["invariants:"]
    lines += [f"  [{'PASS' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in checks]
    verdict = "all invariants hold" if all(c.ok for c in checks) else "INVARIANTS BROKEN"
    lines.append(f"result: {verdict}")
    return "\n".join(lines)

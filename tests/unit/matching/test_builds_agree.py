"""The compiled (mypyc) and interpreted matching cores emit identical events.

A journal written by one build is replayed by the other (a standby may run either), so
the two must agree event for event, including on malformed commands, which the
compiled build must reject exactly as the interpreted one does rather than raise.
This test runs the build this process imported against the pure sources in a child
process, on a realistic stream and on a stream full of malformed fields.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trading_system.matching import core
from trading_system.matching.core import (
    AddSymbol,
    AdvanceTime,
    Cancel,
    MassCancel,
    MatchingEngine,
    NewOrder,
    OrderType,
    Replace,
    Side,
    SymbolSpec,
    TimeInForce,
    event_to_dict,
)

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]
SPECS = [SymbolSpec("AAA", tick_size=5, lot_size=10, band_bps=2_000, reference_price=10_000)]
JUNK: tuple[Any, ...] = (None, 1.5, "x", -5, 0, True, [1], 10**30, {"a": 1}, b"raw")


def _valid(rng: random.Random, n: int, live: list[str]) -> Any:
    kind = rng.random()
    if live and kind < 0.2:
        return Cancel(n, n, "AAA", rng.choice(live), "acc1")
    if live and kind < 0.27:
        return Replace(
            n, n, "AAA", rng.choice(live), "acc1", 5 * rng.randrange(1900, 2100), 10 * rng.randrange(1, 9)
        )
    if kind < 0.29:
        return MassCancel(n, n, "AAA", None)
    if kind < 0.31:
        return AdvanceTime(n, n + 50)
    order_id = f"o{n}"
    live.append(order_id)
    return NewOrder(
        n,
        n,
        "AAA",
        order_id,
        rng.choice(("acc1", "acc2")),
        rng.choice((Side.BUY, Side.SELL)),
        10 * rng.randrange(1, 20),
        5 * rng.randrange(1950, 2050),
        rng.choice((OrderType.LIMIT, OrderType.LIMIT, OrderType.MARKET, OrderType.STOP_LIMIT)),
        rng.choice((TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK, TimeInForce.GTD)),
        n + rng.randrange(0, 40) if rng.random() < 0.2 else 0,
        5 * rng.randrange(1950, 2050) if rng.random() < 0.1 else 0,
        10 * rng.randrange(0, 3) if rng.random() < 0.1 else 0,
        rng.random() < 0.1,
    )


def stream(seed: int, commands: int, junk_rate: float, junk_fields: int = 1) -> list[Any]:
    """Valid commands, some with fields replaced by junk of a wrong type or range."""
    rng = random.Random(seed)
    live: list[str] = []
    out: list[Any] = [AddSymbol(0, 0, SymbolSpec("BBB", tick_size=1, lot_size=1))]
    for n in range(1, commands + 1):
        cmd = _valid(rng, n, live)
        if rng.random() < junk_rate:
            fields = list(cmd)
            for _ in range(junk_fields):
                fields[rng.randrange(len(fields))] = rng.choice(JUNK)
            cmd = cmd.__class__(*fields)
        out.append(cmd)
    out.append(object())  # not a command at all
    return out


def fingerprint() -> dict[str, Any]:
    """Hash of every event and the final book for each stream, and which build ran."""
    result: dict[str, Any] = {"build": core.BUILD}
    streams = {
        "realistic": stream(1, 20_000, 0.0),
        "malformed": stream(2, 20_000, 0.3),
        "very malformed": stream(3, 20_000, 0.6, junk_fields=3),
    }
    for name, cmds in streams.items():
        engine = MatchingEngine(SPECS)
        digest = hashlib.sha256()
        for cmd in cmds:
            for event in engine.process(cmd):
                digest.update(json.dumps(event_to_dict(event), sort_keys=True, default=repr).encode())
        result[name] = {"events": digest.hexdigest(), "book": engine.digest(), "seq": engine.seq}
    return result


def test_compiled_and_interpreted_cores_emit_the_same_events() -> None:
    if core.BUILD != "compiled":
        pytest.skip("this run imports the pure-python core (not built, or TS_MATCHING_CORE=pure)")
    here = fingerprint()
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, tests.pure_core as p; p.install(); "
            "from tests.unit.matching.test_builds_agree import fingerprint; print(json.dumps(fingerprint()))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    there = json.loads(child.stdout)
    assert (here["build"], there["build"]) == ("compiled", "pure-python")
    assert here["realistic"] == there["realistic"]
    assert here["malformed"] == there["malformed"]
    assert here["very malformed"] == there["very malformed"]
    assert here["malformed"]["seq"] > 20_000  # the junk really was answered with rejects

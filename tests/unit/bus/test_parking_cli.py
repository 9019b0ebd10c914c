"""The parking tool's command line (the behaviour is tested against brokers elsewhere)."""

from __future__ import annotations

import pytest

from trading_system.bus import parking

pytestmark = pytest.mark.unit


def test_republish_needs_ids_or_all() -> None:
    parser = parking.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["republish", "q"])
    args = parser.parse_args(["republish", "q", "--id", "a", "--id", "b", "--source", "dead"])
    assert (args.command, args.queue, args.ids, args.source) == ("republish", "q", ["a", "b"], "dead")
    assert parser.parse_args(["list", "q", "--json"]).json


async def test_without_urls_it_explains_what_is_missing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRADING_SYSTEM_RABBITMQ_URLS", raising=False)
    assert await parking.run(parking.build_parser().parse_args(["list", "q"])) == 2
    assert "--urls" in capsys.readouterr().err


def test_source_queue_names() -> None:
    assert parking.source_queue("w", "parking") == "w.parking"
    assert parking.source_queue("w", "dead") == "w.dead"

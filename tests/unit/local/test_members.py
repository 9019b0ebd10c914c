"""The member registry starts members where their placement says, and records them so a
later supervisor can adopt them."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.environment.processes import wait_until
from trading_system.local.members import MemberRegistry

pytestmark = pytest.mark.unit

SLEEPER = (sys.executable, "-c", "import time; time.sleep(60)")


def sleeper(name: str, host: str, port: int) -> list[str]:
    return [*SLEEPER, name, host, str(port)]


class Elsewhere:
    """Moves every member to 127.9.9.9 and runs it through ``env`` (a stand-in for
    ``ip netns exec``, which replaces itself with the member's command)."""

    def address(self, name: str, default: str) -> str:
        return "127.9.9.9"

    def launch(self, name: str, argv: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("env", *argv), tuple(argv)


def test_members_run_on_their_loopback_address_by_default(tmp_path: Path) -> None:
    registry = MemberRegistry(tmp_path, {})
    member = registry.start("matching-0", "127.1.0.1", sleeper)
    try:
        assert member.host == "127.1.0.1" and member.argv[-2:] == ("127.1.0.1", "8080")
        adopted = MemberRegistry(tmp_path, {}).adopt("matching-0")
        assert adopted is not None and adopted.pid == member.pid
    finally:
        member.kill()


def test_a_placement_chooses_the_address_and_wraps_the_command(tmp_path: Path) -> None:
    registry = MemberRegistry(tmp_path, {"PATH": "/usr/bin:/bin"}, Elsewhere())
    member = registry.start("matching-0", "127.1.0.1", sleeper)
    try:
        # The command line is built for the placed address, and the record holds what the
        # process runs once the wrapper has replaced itself, so adoption recognises it.
        assert member.host == "127.9.9.9" and member.argv == (*SLEEPER, "matching-0", "127.9.9.9", "8080")
        later = MemberRegistry(tmp_path, {}, Elsewhere())
        wait_until(lambda: later.adopt("matching-0") is not None, 10, "the wrapper to exec the member")
        adopted = later.adopt("matching-0")
        assert adopted is not None and adopted.host == "127.9.9.9" and adopted.pid == member.pid
    finally:
        member.kill()
    assert not member.alive()


def test_two_pipelines_on_one_machine_get_different_addresses(tmp_path: Path) -> None:
    first, second = MemberRegistry(tmp_path / "a", {}), MemberRegistry(tmp_path / "b", {})
    if first.site == second.site:  # 1 in 250: pick another directory for the second
        second = MemberRegistry(tmp_path / "c", {})
    assert first.address(0, "matching-3") != second.address(0, "matching-3")
    # The same directory (a restarted supervisor adopting its members) keeps its addresses.
    assert MemberRegistry(tmp_path / "a", {}).address(0, "matching-3") == first.address(0, "matching-3")
    assert first.address(0, "matching-3").startswith("127.1.") and first.address(1, "x-0").startswith(
        "127.2."
    )

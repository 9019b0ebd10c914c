"""The test environment's own helpers behave as the fixtures rely on."""

from __future__ import annotations

import socket

import pytest

from tests.environment.processes import EnvironmentFailure, free_port_block, port_is_free, wait_until

pytestmark = pytest.mark.unit


def test_wait_until_returns_once_the_condition_holds() -> None:
    calls = iter([False, False, True])
    wait_until(lambda: next(calls), timeout=5, what="third call", interval=0.01)


def test_wait_until_names_what_it_waited_for_and_the_last_error() -> None:
    def broken() -> bool:
        raise ValueError("still starting")

    with pytest.raises(EnvironmentFailure, match=r"waiting for the thing.*still starting"):
        wait_until(broken, timeout=0.1, what="the thing", interval=0.01)


def test_free_port_block_skips_ports_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        assert not port_is_free(taken)
        start = free_port_block(2, taken)
        assert start != taken
        assert port_is_free(start) and port_is_free(start + 1)

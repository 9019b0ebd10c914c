"""The startup wait without servers: which connection errors are worth waiting out, the
jittered backoff between attempts, and the wait loop (tenacity's retrying, with this
module's logging, /readyz state and health server) driven by in-process dependencies."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
from collections.abc import Awaitable, Callable, Iterable

import aiohttp
import pytest
import tenacity
from aiormq.exceptions import (
    AMQPConnectionError,
    ConnectionClosed,
    ConnectionNotAllowed,
    IncompatibleProtocolError,
    ProbableAuthenticationError,
)
from asyncpg import exceptions as pg  # type: ignore[import-untyped]
from sqlalchemy.exc import ArgumentError, OperationalError

from trading_system.common.service_env import ServiceEnvironment, add_connection_flags
from trading_system.common.startup import (
    RETRY_WAIT,
    Dependency,
    DependencyRefused,
    NoBrokerNode,
    StartupProgress,
    StartupTimeout,
    is_transient,
    wait_for_dependencies,
)

pytestmark = pytest.mark.unit

FAST = tenacity.wait_random_exponential(multiplier=0.001, max=0.004)


def _no_node(*node_errors: Exception) -> NoBrokerNode:
    return NoBrokerNode([(f"amqp://guest@10.0.0.{i}:5672/", exc) for i, exc in enumerate(node_errors)])


def _wrapped_by_sqlalchemy(exc: Exception) -> OperationalError:
    wrapper = OperationalError("connect", {}, exc)
    wrapper.__cause__ = exc
    return wrapper


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
        ConnectionResetError(104, "Connection reset by peer"),
        socket.gaierror(-3, "Temporary failure in name resolution"),
        TimeoutError(),
        pg.CannotConnectNowError("the database system is starting up"),
        pg.TooManyConnectionsError("sorry, too many clients already"),
        pg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        _wrapped_by_sqlalchemy(pg.CannotConnectNowError("starting up")),
        AMQPConnectionError(111, "Connect call failed"),
        IncompatibleProtocolError("EOF before the protocol header was answered"),
        ConnectionClosed(320, "CONNECTION_FORCED - broker forced connection closure"),
        _no_node(AMQPConnectionError(111, "refused"), TimeoutError()),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_not_up_yet_is_transient(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        pg.InvalidPasswordError('password authentication failed for user "ts"'),
        pg.InvalidAuthorizationSpecificationError('role "nobody" does not exist'),
        pg.InvalidCatalogNameError('database "nosuchdb" does not exist'),
        _wrapped_by_sqlalchemy(pg.InvalidPasswordError("password authentication failed")),
        ProbableAuthenticationError("ACCESS_REFUSED - Login was refused"),
        ConnectionNotAllowed(530, "NOT_ALLOWED - vhost nosuchvhost not found"),
        ArgumentError("Could not parse SQLAlchemy URL from string 'nonsense'"),
        ValueError("invalid port"),
        # A misconfigured cluster: one node still down, the next refusing the credentials.
        _no_node(AMQPConnectionError(111, "refused"), ProbableAuthenticationError("ACCESS_REFUSED")),
        _no_node(RuntimeError("unknown")),
        # Not known to be transient: fail as before rather than wait forever on a bug.
        RuntimeError("something nobody foresaw"),
        KeyError("x"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_refused_or_unknown_is_permanent(exc: Exception) -> None:
    assert not is_transient(exc)


def test_the_broker_error_names_every_node_of_a_cluster() -> None:
    assert str(_no_node(TimeoutError())) == "TimeoutError: TimeoutError()"
    error = _no_node(AMQPConnectionError(111, "refused"), ProbableAuthenticationError("ACCESS_REFUSED"))
    assert str(error).startswith("amqp://guest@10.0.0.0:5672/: AMQPConnectionError: ")
    assert "; amqp://guest@10.0.0.1:5672/: ProbableAuthenticationError: ACCESS_REFUSED" in str(error)


def _waits(strategy: tenacity.wait.wait_base, attempts: Iterable[int]) -> list[float]:
    """What ``strategy`` waits after each of the failed ``attempts`` (1-based)."""
    state = tenacity.RetryCallState(tenacity.AsyncRetrying(), fn=None, args=(), kwargs={})
    waits = []
    for attempt in attempts:
        state.attempt_number = attempt
        waits.append(strategy(state))
    return waits


def test_the_wait_window_grows_exponentially_from_half_a_second_up_to_ten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # tenacity draws each wait with random.uniform(low, high): pin it to either end.
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    assert _waits(RETRY_WAIT, range(1, 8)) == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert _waits(RETRY_WAIT, iter([100_000])) == [10.0]  # no overflow however long it waits
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    assert _waits(RETRY_WAIT, range(1, 8)) == [0.0] * 7


def test_the_waits_are_jittered_within_their_window_even_at_the_cap() -> None:
    for attempt, ceiling in ((1, 0.5), (4, 4.0), (6, 10.0), (50, 10.0)):
        waits = _waits(RETRY_WAIT, iter([attempt] * 200))
        assert all(0.0 <= wait <= ceiling for wait in waits)
        # Spread over the window, so replicas that failed together do not retry together.
        assert len(set(waits)) == 200
        assert min(waits) < ceiling / 4 and max(waits) > ceiling * 3 / 4


def _failing(times: int, error: Callable[[], Exception]) -> tuple[list[int], Callable[[], Awaitable[None]]]:
    calls: list[int] = []

    async def attempt() -> None:
        calls.append(len(calls) + 1)
        if len(calls) <= times:
            raise error()

    return calls, attempt


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop run until ``condition`` holds (a bounded poll, failing the test after 5 s)."""
    try:
        async with asyncio.timeout(5):
            # A poll: the conditions are the module's state, which signals no event.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"not within 5 s: {what}") from None


STARTUP_LOGGER = "trading_system.common.startup"


async def test_waits_out_transient_failures_and_reports_them(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, STARTUP_LOGGER)
    db_calls, db = _failing(3, lambda: ConnectionRefusedError(111, "refused"))
    mq_calls, mq = _failing(1, lambda: pg.CannotConnectNowError("starting up"))
    progress = StartupProgress()
    async with asyncio.timeout(10):
        await wait_for_dependencies(
            [Dependency("PostgreSQL", "db:5432", db), Dependency("RabbitMQ", "mq:5672", mq)],
            # 1 ms after attempt 1, 2 ms after attempt 2, ...: each logged wait is tenacity's.
            wait=tenacity.wait_incrementing(start=0.001, increment=0.001),
            progress=progress,
        )
    assert db_calls == [1, 2, 3, 4] and mq_calls == [1, 2]
    states = progress.states
    assert states["PostgreSQL"].connected and states["PostgreSQL"].attempts == 4
    assert states["RabbitMQ"].connected and states["RabbitMQ"].attempts == 2
    assert all(state.retry_at is None for state in states.values())
    assert states["PostgreSQL"].last_error == "ConnectionRefusedError: [Errno 111] refused"

    retries = [r for r in caplog.records if "not reachable yet" in r.getMessage()]
    assert all(r.levelno == logging.WARNING for r in retries)
    fields = [(r.dependency, r.target, r.attempt, r.retry_in_seconds) for r in retries]  # type: ignore[attr-defined]
    assert sorted(fields) == [
        ("PostgreSQL", "db:5432", 1, 0.001),
        ("PostgreSQL", "db:5432", 2, 0.002),
        ("PostgreSQL", "db:5432", 3, 0.003),
        ("RabbitMQ", "mq:5672", 1, 0.001),
    ]
    first_db = next(r.getMessage() for r in retries if r.dependency == "PostgreSQL")  # type: ignore[attr-defined]
    assert first_db == (
        "PostgreSQL at db:5432 not reachable yet (attempt 1: ConnectionRefusedError: [Errno 111] refused); "
        "next retry in 0.0 s"
    )
    reached = [r.getMessage() for r in caplog.records if "reachable after" in r.getMessage()]
    assert len(reached) == 2 and reached[0].startswith("RabbitMQ at mq:5672 reachable after 2 attempts")
    readiness = await progress.readiness()
    assert not readiness.ready  # the wait's own server never claims readiness


async def test_readyz_state_shows_the_attempts_the_error_and_the_next_retry() -> None:
    calls, down = _failing(1, lambda: ConnectionRefusedError(111, "refused"))
    progress = StartupProgress()
    waiting = asyncio.create_task(
        wait_for_dependencies(
            [Dependency("PostgreSQL", "db:5432", down)], wait=tenacity.wait_fixed(30), progress=progress
        )
    )
    try:

        def retry_due() -> bool:
            state = progress.states.get("PostgreSQL")
            return state is not None and state.retry_at is not None

        await until(retry_due, "the first retry is due")
        readiness = await progress.readiness()
        assert not readiness.ready and readiness.details["starting"] is True
        waiting_for = readiness.details["dependencies"]
        assert isinstance(waiting_for, dict) and list(waiting_for) == ["PostgreSQL"]
        shown = waiting_for["PostgreSQL"]
        assert shown["where"] == "db:5432" and shown["connected"] is False
        assert shown["attempts"] == 1
        assert shown["last_error"] == "ConnectionRefusedError: [Errno 111] refused"
        assert 25 < shown["next_retry_in_s"] <= 30
    finally:
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert calls == [1]  # cancelled in tenacity's sleep: no further attempt


async def test_a_refusal_ends_the_wait_at_once(caplog: pytest.LogCaptureFixture) -> None:
    _, down = _failing(10**9, lambda: ConnectionRefusedError(111, "refused"))
    calls, refused = _failing(10**9, lambda: pg.InvalidPasswordError("password failed"))
    progress = StartupProgress()
    async with asyncio.timeout(10):
        with pytest.raises(DependencyRefused, match="PostgreSQL at db:5432 refused the connection") as raised:
            await wait_for_dependencies(
                [Dependency("RabbitMQ", "mq:5672", down), Dependency("PostgreSQL", "db:5432", refused)],
                wait=FAST,
                progress=progress,
            )
    assert calls == [1]
    assert "InvalidPasswordError: password failed (a configuration error" in str(raised.value)
    assert progress.states["PostgreSQL"].retry_at is None  # never scheduled a retry
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert (
        errors[0]
        .getMessage()
        .startswith(
            "PostgreSQL at db:5432 refused the connection: InvalidPasswordError: password failed. "
            "This is a configuration error"
        )
    )
    assert (errors[0].dependency, errors[0].target) == ("PostgreSQL", "db:5432")  # type: ignore[attr-defined]


async def test_the_startup_timeout_names_what_is_missing() -> None:
    _, down = _failing(10**9, lambda: ConnectionRefusedError(111, "refused"))
    _, up = _failing(0, lambda: ConnectionRefusedError(111, "refused"))
    async with asyncio.timeout(10):
        with pytest.raises(StartupTimeout, match=r"after 0\.2 s .* for RabbitMQ at mq:5672") as raised:
            await wait_for_dependencies(
                [Dependency("RabbitMQ", "mq:5672", down), Dependency("PostgreSQL", "db:5432", up)],
                wait=FAST,
                startup_timeout=0.2,
            )
    assert "PostgreSQL" not in str(raised.value)
    assert "attempts, last: ConnectionRefusedError: [Errno 111] refused)" in str(raised.value)


async def test_the_startup_timeout_cancels_a_hanging_attempt_without_retrying_it() -> None:
    # tenacity's attempt context catches BaseException too: the cancellation must not be retried.
    calls: list[int] = []

    async def hang() -> None:
        calls.append(len(calls) + 1)
        await asyncio.Event().wait()

    async with asyncio.timeout(10):
        with pytest.raises(StartupTimeout, match=r"for PostgreSQL at db:5432 \(1 attempts, last: None\)"):
            await wait_for_dependencies(
                [Dependency("PostgreSQL", "db:5432", hang)], wait=FAST, startup_timeout=0.1
            )
    assert calls == [1]


async def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        http.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.json()


async def test_the_health_server_answers_from_the_first_failure_until_connected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, STARTUP_LOGGER)
    release = asyncio.Event()
    calls: list[int] = []

    async def second_time_lucky() -> None:
        calls.append(len(calls) + 1)
        if len(calls) == 1:
            raise ConnectionRefusedError(111, "refused")
        await release.wait()

    def served_on() -> list[int]:
        found = (re.search(r"answer on port (\d+) meanwhile$", r.getMessage()) for r in caplog.records)
        return [int(match[1]) for match in found if match]

    progress = StartupProgress()
    waiting = asyncio.create_task(
        wait_for_dependencies(
            [Dependency("PostgreSQL", "db:5432", second_time_lucky)],
            wait=FAST,
            http=("127.0.0.1", 0),
            progress=progress,
        )
    )
    try:
        await until(lambda: len(calls) == 2, "the second attempt started")
        (port,) = served_on()
        assert await _get(port, "/healthz") == (
            200,
            {"alive": True, "loop_lag_seconds": pytest.approx(0, abs=1)},
        )
        status, body = await _get(port, "/readyz")
        assert status == 503 and body["ready"] is False and body["starting"] is True
        assert body["dependencies"] == {
            "PostgreSQL": {
                "where": "db:5432",
                "connected": False,
                "attempts": 2,
                "last_error": "ConnectionRefusedError: [Errno 111] refused",
                "next_retry_in_s": 0.0,
            }
        }
        release.set()
        async with asyncio.timeout(10):
            await waiting
    finally:
        waiting.cancel()
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(port, "/healthz")  # stopped once the wait is over


async def test_no_health_server_when_nothing_failed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, STARTUP_LOGGER)
    calls, up = _failing(0, lambda: ConnectionRefusedError(111, "refused"))
    async with asyncio.timeout(10):
        await wait_for_dependencies([Dependency("PostgreSQL", "db:5432", up)], http=("127.0.0.1", 0))
    assert calls == [1]
    assert caplog.records == []  # neither a retry, nor a server, nor "reachable after"


def test_startup_timeout_flag_defaults_to_the_environment_and_refuses_nonsense() -> None:
    import argparse

    def parse(environ: dict[str, str], *argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        add_connection_flags(parser, ServiceEnvironment.read(environ))
        return parser.parse_args(list(argv))

    assert parse({}).startup_timeout == 0.0  # wait indefinitely
    assert parse({"TRADING_SYSTEM_STARTUP_TIMEOUT": "90"}).startup_timeout == 90.0
    assert parse({"TRADING_SYSTEM_STARTUP_TIMEOUT": "90"}, "--startup-timeout", "5").startup_timeout == 5.0
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(SystemExit):
            parse({}, "--startup-timeout", bad)

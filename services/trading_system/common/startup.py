"""Waiting for PostgreSQL and RabbitMQ when a service starts, instead of exiting.

A pipeline pod often starts before its dependencies accept connections (right after a
TradingSystem is applied, the RabbitMQ cluster is still forming and a dev PostgreSQL is
still initialising). Exiting then only buys the pod the kubelet's crash-loop backoff, so
``serve`` first waits: every dependency is tried at once, and each refused attempt is
logged (what, where, the error, the next retry) and retried after an exponential backoff
with jitter, so that many replicas do not retry in step. A dependency that answers but
refuses *us* (wrong credentials, unknown database or vhost, a malformed URL) is a
configuration error: waiting cannot fix it, so the process exits at once with the reason.

What the libraries already do, and why this module still exists: aio-pika's
``RobustConnection`` reconnects forever, but only after a first successful connection
(its ``fail_fast=false`` retries the first one too, at a fixed interval and for any
error, wrong credentials included, so a typo would wait forever); SQLAlchemy's
``pool_pre_ping`` replaces a pooled connection that died, and never retries opening one.
Neither backs off with jitter nor tells "not up yet" from "never going to work". So the
retrying is tenacity's (``AsyncRetrying`` with a jittered exponential wait), and this
module adds what tenacity cannot know: the probes, which errors waiting can fix, the log
line and /readyz state of each retry, and the startup timeout over all dependencies.

While waiting, the service's port answers /healthz (alive: the kubelet's liveness probe
must not restart a process that is only waiting) and /readyz with 503 and what it is
waiting for (so the pod is not ready and the operator's deeper check sees why). That
server is this module's own; it is stopped just before the service starts its own.

Probes make the connections the service will make: a ``SELECT 1`` through the service's
own SQLAlchemy engine, and a full AMQP handshake (credentials, vhost) with the bus's URLs,
where any one node will do, as for the bus. If a dependency vanishes again between the
probe and the service's own connect, the service fails as before and the restarted
process waits here again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import tenacity
from sqlalchemy import text
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine
from yarl import URL

from trading_system.common.auth import TokenSet
from trading_system.common.http import Readiness, ServiceHttp

if TYPE_CHECKING:
    from trading_system.bus.facade import MessageBus

log = logging.getLogger(__name__)

# SQLSTATE classes a PostgreSQL server answers a connection with when the request itself
# is wrong: 28 invalid authorization (bad password, unknown role, no pg_hba entry) and
# 3D invalid catalog name (unknown database). Classes that mean "not now": 08 connection
# exception, 53 insufficient resources (too many connections), 57 operator intervention
# (57P03 "the database system is starting up", shutdown) and 58 system error.
PERMANENT_SQLSTATE_CLASSES = frozenset({"28", "3D"})
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "58"})

# AMQP connection.close codes meaning the broker is up and refuses this client: 403
# ACCESS_REFUSED (aiormq raises ProbableAuthenticationError) and 530 NOT_ALLOWED (unknown
# vhost, no permission on it).
PERMANENT_AMQP_REPLY_CODES = frozenset({403, 530})


class DependencyError(Exception):
    """A dependency will not become usable by waiting (or the wait's limit passed)."""


class DependencyRefused(DependencyError):
    """The dependency answered and refused the connection: a configuration error."""


class StartupTimeout(DependencyError):
    """The dependencies were still unreachable when the startup timeout passed."""


# -- classification (pure) -------------------------------------------------------------------


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps: SQLAlchemy's ``orig``, causes, contexts, groups."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        if isinstance(orig, BaseException):
            todo.append(orig)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)


def _amqp_reply_code(exc: BaseException) -> int | None:
    # aiormq's ConnectionClosed(reply_code, reply_text); imported lazily so services
    # without a broker never load it.
    from aiormq.exceptions import ConnectionClosed, ProbableAuthenticationError

    if isinstance(exc, ProbableAuthenticationError):
        return 403
    if isinstance(exc, ConnectionClosed) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def is_transient(exc: BaseException) -> bool:
    """True if retrying may succeed (nothing listens yet, the server is starting, a
    timeout); False for a configuration error or anything not known to be transient.

    Every exception wrapped in ``exc`` is looked at; one that proves a configuration
    error wins over the connection errors around it (a cluster of which one node
    refused the credentials and another was still down is misconfigured).
    """
    from aiormq.exceptions import AuthenticationError, IncompatibleProtocolError, ProtocolSyntaxError

    causes = list(_causes(exc))
    transient = False
    for cause in causes:
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and len(sqlstate) == 5:
            if sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES:
                transient = True
                continue
            return False
        code = _amqp_reply_code(cause)
        if code in PERMANENT_AMQP_REPLY_CODES:
            return False
        if isinstance(cause, AuthenticationError | ProtocolSyntaxError | ArgumentError | ValueError):
            # No common SASL mechanism; not an AMQP server at that port; a URL that does
            # not parse (ValueError also covers an SSL certificate that fails to verify).
            return False
        if isinstance(cause, IncompatibleProtocolError):
            # Closed before the AMQP header was answered: a node accepting TCP while it
            # boots or shuts down (or a Service without a ready endpoint behind it).
            transient = True
        elif isinstance(cause, TimeoutError | OSError) or code is not None:
            # Refused, reset, unreachable, name not resolvable (yet), timed out; or a
            # broker closing connections while it starts or stops (320, 541).
            transient = True
    return transient


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line (without SQLAlchemy's "Background on this error" link)."""
    lines = (line.strip() for line in str(exc).splitlines())
    text = " ".join(line for line in lines if line and not line.startswith("(Background on this error"))
    text = text.rstrip(".") or repr(exc)
    return text if isinstance(exc, NoBrokerNode) else f"{type(exc).__name__}: {text}"


# -- backoff ---------------------------------------------------------------------------------

# After failed attempt n, wait a random time in [0, min(10, 0.5 * 2 ** (n - 1))] s
# ("full jitter"). Not wait_exponential_jitter: it adds its jitter before capping, so once
# the cap is reached every replica waits exactly the maximum and they retry in step again,
# the very thing jitter is here to prevent; this one stays spread at the cap too (and takes
# the same arguments in tenacity 8.2 and 9).
RETRY_WAIT = tenacity.wait_random_exponential(multiplier=0.5, max=10.0)


# -- dependencies and their probes -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dependency:
    """Something the service needs at start: a name, where it is (without secrets), and
    one connection attempt that returns when connected or raises why not."""

    name: str
    where: str
    attempt: Callable[[], Awaitable[None]]


def postgres_dependency(engine: AsyncEngine, *, timeout: float = 10.0) -> Dependency:
    """One ``SELECT 1`` on a connection of the service's own engine."""
    name = "SQLite" if engine.url.get_backend_name() == "sqlite" else "PostgreSQL"

    async def attempt() -> None:
        # asyncpg's own connect timeout is 60 s; a dropped SYN should cost less.
        async with asyncio.timeout(timeout), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    return Dependency(name, engine.url.render_as_string(hide_password=True), attempt)


class NoBrokerNode(Exception):
    """No node of the cluster accepted a connection; each node's error is in the cause
    (and decides whether waiting may help)."""

    def __init__(self, failures: Sequence[tuple[str, Exception]]) -> None:
        if len(failures) == 1:
            super().__init__(describe(failures[0][1]))
        else:
            super().__init__("; ".join(f"{where}: {describe(exc)}" for where, exc in failures))
        self.__cause__ = ExceptionGroup("one connection attempt per node", [exc for _, exc in failures])


def _shown(url: str) -> str:
    """The URL without password or query; never echo one that does not parse."""
    try:
        return str(URL(url).with_password(None).with_query(None))
    except ValueError:
        return "(a malformed URL)"


def rabbitmq_dependency(
    urls: Sequence[str], *, connection_name: str, connect_timeout: float = 5.0
) -> Dependency:
    """An AMQP connection (the full handshake: credentials and vhost) to any of ``urls``,
    closed at once; the bus makes its own robust ones once this succeeded."""

    async def attempt() -> None:
        import aio_pika

        failures: list[tuple[str, Exception]] = []
        for url in urls:
            try:
                named = URL(url).update_query(name=f"{connection_name}-startup")
                async with asyncio.timeout(connect_timeout + 1):
                    connection = await aio_pika.connect(named, timeout=connect_timeout)
            except Exception as exc:  # classified by the caller
                failures.append((_shown(url), exc))
                continue
            await connection.close()
            return
        raise NoBrokerNode(failures)

    return Dependency("RabbitMQ", ", ".join(_shown(u) for u in urls) or "(no URL)", attempt)


def service_dependencies(engine: AsyncEngine, bus: MessageBus | None) -> list[Dependency]:
    """The database of ``engine`` and, when the bus runs in ``rabbitmq`` mode, its broker.

    ``auto`` mode is not waited for: its point is to use RabbitMQ if it answers now and
    fall back to in-memory otherwise.
    """
    from trading_system.bus.config import BusMode

    found = [postgres_dependency(engine)]
    settings = None if bus is None else bus.settings
    if settings is not None and settings.mode is BusMode.RABBITMQ and settings.urls:
        found.append(
            rabbitmq_dependency(
                settings.urls,
                connection_name=settings.service,
                connect_timeout=settings.connect_timeout,
            )
        )
    return found


# -- waiting ---------------------------------------------------------------------------------


@dataclass
class _State:
    where: str
    connected: bool = False
    attempts: int = 0
    last_error: str | None = None
    retry_at: float | None = None


@dataclass
class StartupProgress:
    """What the wait has seen so far, as /readyz shows it."""

    states: dict[str, _State] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    async def readiness(self) -> Readiness:
        now = time.monotonic()
        waiting = {
            name: {
                "where": s.where,
                "connected": s.connected,
                "attempts": s.attempts,
                "last_error": s.last_error,
                "next_retry_in_s": None if s.retry_at is None else round(max(0.0, s.retry_at - now), 3),
            }
            for name, s in self.states.items()
        }
        return Readiness(
            False,
            {"starting": True, "waiting_seconds": round(now - self.started, 3), "dependencies": waiting},
        )


class _QuietTransportErrors(logging.Filter):
    """aiormq logs every refused TCP connect at ERROR; while waiting, this module reports
    each attempt itself, with what it means."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("error when creating transport")


@contextlib.contextmanager
def _quiet_aiormq() -> Iterator[None]:
    logger, quiet = logging.getLogger("aiormq.connection"), _QuietTransportErrors()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _refused(dependency: Dependency, error: str) -> DependencyRefused:
    """Logs the refusal at ERROR and returns the exception that ends the wait."""
    log.error(
        "%s at %s refused the connection: %s. This is a configuration error "
        "(URL, credentials, database or vhost name); not retrying.",
        dependency.name,
        dependency.where,
        error,
        extra={"dependency": dependency.name, "target": dependency.where},
    )
    return DependencyRefused(
        f"{dependency.name} at {dependency.where} refused the connection: {error} "
        "(a configuration error: check the URL, credentials, database or vhost name)"
    )


async def _wait_for(
    dependency: Dependency,
    state: _State,
    wait: tenacity.wait.wait_base,
    on_retry: Callable[[], Awaitable[None]],
) -> None:
    async def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        assert retry_state.next_action is not None  # tenacity sets it before it sleeps
        delay = retry_state.next_action.sleep
        state.retry_at = time.monotonic() + delay
        log.warning(
            "%s at %s not reachable yet (attempt %d: %s); next retry in %.1f s",
            dependency.name,
            dependency.where,
            retry_state.attempt_number,
            state.last_error,
            delay,
            extra={
                "dependency": dependency.name,
                "target": dependency.where,
                "attempt": retry_state.attempt_number,
                "retry_in_seconds": round(delay, 3),
            },
        )
        await on_retry()

    retrying = tenacity.AsyncRetrying(
        wait=wait,
        # A failed attempt is either transient or already turned into DependencyRefused
        # below. Not BaseException: the attempt context also catches the CancelledError
        # of the startup timeout or a SIGTERM, which must end the wait.
        retry=tenacity.retry_if_exception_type(Exception)
        & tenacity.retry_if_not_exception_type(DependencyRefused),
        before_sleep=before_sleep,
        # No stop: the startup timeout, over all dependencies, is wait_for_dependencies'.
    )
    started = time.monotonic()
    async for attempt in retrying:
        with attempt:
            state.attempts = attempt.retry_state.attempt_number
            try:
                await dependency.attempt()
            except Exception as exc:
                state.last_error = describe(exc)
                if not is_transient(exc):
                    raise _refused(dependency, state.last_error) from exc
                raise
    state.connected, state.retry_at = True, None
    if state.attempts > 1:
        log.info(
            "%s at %s reachable after %d attempts (%.1f s)",
            dependency.name,
            dependency.where,
            state.attempts,
            time.monotonic() - started,
            extra={"dependency": dependency.name, "target": dependency.where},
        )


async def wait_for_dependencies(
    dependencies: Sequence[Dependency],
    *,
    startup_timeout: float | None = None,
    wait: tenacity.wait.wait_base = RETRY_WAIT,
    http: tuple[str, int] | None = None,
    progress: StartupProgress | None = None,
) -> None:
    """Return once every dependency accepted a connection.

    Raises ``DependencyRefused`` as soon as one refuses us, ``StartupTimeout`` when
    ``startup_timeout`` seconds (None or <= 0: no limit) pass first. With ``http`` (host, port),
    a health server answers there from the first failed attempt until this returns.
    ``wait`` is the tenacity wait strategy between one dependency's attempts.
    """
    progress = progress or StartupProgress()
    for dependency in dependencies:
        progress.states[dependency.name] = _State(dependency.where)
    server: ServiceHttp | None = None

    async def serve_health() -> None:
        nonlocal server
        if server is None and http is not None:
            server = ServiceHttp(progress.readiness, TokenSet((), ()))
            port = await server.start(*http)
            log.info("waiting for dependencies; /healthz and /readyz answer on port %d meanwhile", port)

    limit = startup_timeout if startup_timeout is not None and startup_timeout > 0 else None
    try:
        with _quiet_aiormq():
            async with asyncio.timeout(limit), asyncio.TaskGroup() as group:
                for dependency in dependencies:
                    state = progress.states[dependency.name]
                    group.create_task(_wait_for(dependency, state, wait, serve_health))
    except BaseExceptionGroup as failed:
        # The first dependency that failed; the TaskGroup cancelled the others.
        raise failed.exceptions[0] from None
    except TimeoutError:
        missing = [
            f"{name} at {s.where} ({s.attempts} attempts, last: {s.last_error})"
            for name, s in progress.states.items()
            if not s.connected
        ]
        raise StartupTimeout(
            f"still waiting after {limit:g} s (the startup timeout) for " + "; ".join(missing)
        ) from None
    finally:
        if server is not None:
            await server.stop()


class Runnable(Protocol):
    async def run(self) -> None: ...


class PipelineService(Runnable, Protocol):
    """What the three ``serve`` commands run: a service with an engine and a bus."""

    @property
    def db(self) -> AsyncEngine: ...

    @property
    def bus(self) -> MessageBus: ...


async def serve_when_ready(
    service: Runnable,
    dependencies: Sequence[Dependency],
    *,
    startup_timeout: float | None = None,
    wait: tenacity.wait.wait_base = RETRY_WAIT,
    http: tuple[str, int] | None = None,
) -> bool:
    """Wait for ``dependencies``, then run ``service`` until it is told to stop.

    SIGTERM or SIGINT while waiting (the pod is deleted before its dependencies came
    up) ends the wait cleanly and returns False without starting the service.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    waiting = asyncio.create_task(
        wait_for_dependencies(dependencies, startup_timeout=startup_timeout, wait=wait, http=http)
    )
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        for sig in signals:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)
    if waiting.cancelled():
        log.info("stopped while waiting for dependencies; the service was not started")
        return False
    waiting.result()  # DependencyError, if the wait failed
    await service.run()
    return True


def run_service(
    command: str,
    build: Callable[[], PipelineService],
    *,
    startup_timeout: float | None = None,
    http: tuple[str, int] | None = None,
    wait: tenacity.wait.wait_base = RETRY_WAIT,
) -> int:
    """Build the service, wait for its database and broker, run it; for ``serve`` commands.

    Returns 0 after a clean stop (or a SIGTERM while still waiting). A configuration the
    service cannot even be built from, a dependency that refuses us, or the startup
    timeout exits with status 1 and the reason, in one line, on stderr.
    """
    from trading_system.bus.errors import ConfigurationError

    try:
        service = build()
        dependencies = service_dependencies(service.db, service.bus)
    except (ValueError, ArgumentError, ConfigurationError) as exc:
        log.error("%s: bad configuration: %s", command, describe(exc))
        raise SystemExit(f"{command}: bad configuration: {describe(exc)}") from None

    async def main() -> None:
        try:
            await serve_when_ready(
                service, dependencies, startup_timeout=startup_timeout, wait=wait, http=http
            )
        finally:
            # The probe's pooled connection, if the service never started (its stop()
            # disposes the engine otherwise; twice is harmless).
            await service.db.dispose()

    try:
        asyncio.run(main())
    except DependencyError as exc:
        raise SystemExit(f"{command}: {exc}") from None
    return 0

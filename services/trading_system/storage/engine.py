"""One way to open the database: an async engine from a URL, PostgreSQL or SQLite.

PostgreSQL (asyncpg) is the real store; SQLite (aiosqlite) backs the embedded demo and
fast unit tests with the same tables and statements. The SQLite engine is set up so a
transaction behaves like the PostgreSQL one the code was written for (see
``_make_sqlite_serialisable``).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

_POSTGRES_ALIASES = {"postgres", "postgresql", "postgresql+asyncpg"}
_SQLITE_ALIASES = {"sqlite", "sqlite+aiosqlite"}


class UnsupportedDatabaseURL(ValueError):
    """The URL names a database or driver this project does not run on."""


def normalise_url(url: str | URL) -> URL:
    """The URL with the async driver this project uses for its database."""
    parsed = make_url(url)
    if parsed.drivername in _POSTGRES_ALIASES:
        return parsed.set(drivername="postgresql+asyncpg")
    if parsed.drivername in _SQLITE_ALIASES:
        return parsed.set(drivername="sqlite+aiosqlite")
    raise UnsupportedDatabaseURL(
        f"unsupported database URL scheme {parsed.drivername!r}: use postgresql+asyncpg:// or sqlite+aiosqlite://"
    )


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


IDLE_IN_TRANSACTION_TIMEOUT_MS = 5000
PING_AFTER_IDLE_SECONDS = 2.0
"""A pooled connection unused for longer than this is pinged before it is handed out."""
_IDLE_SINCE = "ts_idle_since"


def create_engine(
    url: str | URL, *, pool_size: int = 10, pre_ping: bool = True, **kwargs: Any
) -> AsyncEngine:
    """An :class:`AsyncEngine` for ``url`` (``postgresql+asyncpg`` or ``sqlite+aiosqlite``).

    ``pre_ping`` (PostgreSQL) tests a pooled connection before handing it out, so the
    first transaction after a database restart gets a fresh connection instead of an
    error (see ``_ping_when_needed``: free for a busy connection, a round trip for one
    that sat idle). Hot paths that retry on their own can turn it off.
    """
    parsed = normalise_url(url)
    if is_sqlite(parsed):
        engine = create_async_engine(parsed, **kwargs)
        _make_sqlite_serialisable(engine, in_memory=parsed.database in (None, "", ":memory:"))
        return engine
    # A writer that is paused or cut off mid-transaction (SIGSTOP, a network cut) keeps its
    # row locks, including the FOR SHARE lock on its fence row, and would block the
    # promotion's epoch raise for as long as it stays frozen. PostgreSQL ends such a
    # session after this timeout, releasing its locks and rolling its writes back, so
    # failover never waits on the process it is fencing.
    connect_args = dict(kwargs.pop("connect_args", {}))
    server_settings = dict(connect_args.pop("server_settings", {}))
    server_settings.setdefault("idle_in_transaction_session_timeout", str(IDLE_IN_TRANSACTION_TIMEOUT_MS))
    connect_args["server_settings"] = server_settings
    engine = create_async_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args=connect_args,
        **kwargs,
    )
    if pre_ping:
        _ping_when_needed(engine)
    return engine


def _ping_when_needed(engine: AsyncEngine) -> None:
    """A cheaper ``pool_pre_ping``: SQLAlchemy's pings every checkout, and on asyncpg that
    ping is three round trips (BEGIN, ``;``, ROLLBACK). Profiles of the pipeline showed
    those round trips (and the socket writes they cost a CPU-bound process) on every
    ledger write and store read.

    A connection the server closed (a PostgreSQL restart terminates every session) is
    known to asyncpg without a round trip: it saw the socket close. Such a connection
    invalidates the whole pool, as a failed ping does. Only a connection that sat idle
    for ``PING_AFTER_IDLE_SECONDS`` is really pinged (a silently dropped peer); under
    load connections come back to the pool within milliseconds and are never pinged.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        driver = getattr(dbapi_connection, "_connection", None)
        is_closed = getattr(driver, "is_closed", None)
        if is_closed is not None and is_closed():
            raise exc.InvalidatePoolError("the server closed this connection")
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is not None and time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        dialect = engine.dialect
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:
            if dialect.is_disconnect(error, dbapi_connection, None):  # type: ignore[arg-type]
                raise exc.InvalidatePoolError(str(error)) from error
            raise


def _make_sqlite_serialisable(engine: AsyncEngine, *, in_memory: bool) -> None:
    """Make every SQLite transaction take the write lock at BEGIN.

    PostgreSQL code here reads a row ``FOR SHARE``/``FOR UPDATE`` and then writes in
    the same transaction. SQLite has no row locks (SQLAlchemy drops the clause), so the
    equivalent is ``BEGIN IMMEDIATE``: one writer at a time from the first statement,
    which makes read-check-write sequences atomic. The driver's own implicit BEGIN is
    switched off so ours is the only one.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA busy_timeout = 30000")
        if not in_memory:
            # WAL lets readers (the reconciliation job) run while a writer holds the lock.
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

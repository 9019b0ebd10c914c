"""Reserve, release and bind as one statement each on PostgreSQL (stored functions).

Why: as a sequence of statements, a reserve was about ten round trips (pool ping, BEGIN,
the fence check, the hold lookup, the balance UPDATE, two INSERTs, COMMIT), and the
balance row stayed locked from its UPDATE until the COMMIT, across round trips whose
speed is that of a CPU-starved client. Profiling the pipeline found three in four waiting
sessions queued on those balance rows, behind sessions idle in transaction. As a stored
function the same checks and writes run inside the server: one round trip, and the row
lock lasts for the statement and its commit only.

The functions do exactly what the Python versions in ``ledger.holds`` do, in the same
order (fence check first, every check before the first write, holds locked before
balances), and answer with a status the Python side turns into the same typed errors;
a refusal writes nothing. SQLite keeps the Python versions (the demo and fast tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import TextClause, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from trading_system.ledger.types import EntryKind, HoldState
from trading_system.storage.transactions import Database

_HOLD_OUT = (
    "h_id text, h_account text, h_asset text, h_order text, h_reserved bigint, h_remaining bigint, "
    "h_qty bigint, h_filled bigint, h_state text"
)
# A hold's fields, in order, as the holds table names them and as the functions return
# them (prefixed there, so that PL/pgSQL's OUT parameters do not shadow the columns).
HOLD_FIELDS = (
    "hold_id",
    "account_id",
    "asset",
    "order_id",
    "reserved",
    "remaining",
    "order_qty",
    "filled_qty",
    "state",
)
RETURNED_HOLD_FIELDS = (
    "h_id",
    "h_account",
    "h_asset",
    "h_order",
    "h_reserved",
    "h_remaining",
    "h_qty",
    "h_filled",
    "h_state",
)
_HOLD_RETURN = ", ".join(f"h.{column}" for column in HOLD_FIELDS)
_NO_HOLD = ", ".join(["NULL::text"] * 4 + ["NULL::bigint"] * 4 + ["NULL::text"])

_FENCE_CHECK = """
    SELECT f.epoch INTO current_epoch FROM fence f WHERE f.pair_name = p_pair FOR SHARE;
    IF current_epoch IS DISTINCT FROM p_epoch THEN
        RETURN QUERY SELECT 'fenced'::text, current_epoch, NULL::text, {no_hold};
        RETURN;
    END IF;
"""

RESERVE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION ts_ledger_reserve(
    p_pair text, p_epoch bigint, p_hold text, p_account text, p_asset text,
    p_amount bigint, p_qty bigint, p_order text
) RETURNS TABLE (status text, number bigint, other text, {_HOLD_OUT})
LANGUAGE plpgsql AS $$
DECLARE
    current_epoch bigint;
    h holds%ROWTYPE;
    other_hold text;
    left_over bigint;
BEGIN
    {_FENCE_CHECK.format(no_hold=_NO_HOLD)}
    SELECT o.hold_id INTO other_hold FROM holds o
        WHERE p_order IS NOT NULL AND o.order_id = p_order AND o.hold_id <> p_hold LIMIT 1;
    IF FOUND THEN
        RETURN QUERY SELECT 'order_taken'::text, NULL::bigint, other_hold, {_NO_HOLD};
        RETURN;
    END IF;
    SELECT * INTO h FROM holds WHERE holds.hold_id = p_hold;
    IF FOUND THEN
        RETURN QUERY SELECT 'exists'::text, NULL::bigint, NULL::text, {_HOLD_RETURN};
        RETURN;
    END IF;
    UPDATE balances b SET available = b.available - p_amount, held = b.held + p_amount
        WHERE b.account_id = p_account AND b.asset = p_asset AND b.available >= p_amount;
    IF NOT FOUND THEN
        IF NOT EXISTS (SELECT 1 FROM accounts a WHERE a.account_id = p_account) THEN
            RETURN QUERY SELECT 'unknown_account'::text, NULL::bigint, NULL::text, {_NO_HOLD};
        ELSIF NOT EXISTS (SELECT 1 FROM assets s WHERE s.code = p_asset) THEN
            RETURN QUERY SELECT 'unknown_asset'::text, NULL::bigint, NULL::text, {_NO_HOLD};
        ELSE
            SELECT b.available INTO left_over FROM balances b
                WHERE b.account_id = p_account AND b.asset = p_asset;
            RETURN QUERY SELECT 'insufficient'::text, coalesce(left_over, 0), NULL::text, {_NO_HOLD};
        END IF;
        RETURN;
    END IF;
    INSERT INTO holds
        (hold_id, account_id, asset, order_id, reserved, remaining, order_qty, filled_qty, state)
        VALUES (p_hold, p_account, p_asset, p_order, p_amount, p_amount, p_qty, 0,
                '{HoldState.RESERVED.value}');
    INSERT INTO entries (entry_key, account_id, asset, kind, delta_available, delta_held, ref, epoch)
        VALUES ('reserve:' || p_hold, p_account, p_asset, '{EntryKind.RESERVE.value}', -p_amount, p_amount,
                p_hold, p_epoch);
    RETURN QUERY SELECT 'created'::text, NULL::bigint, NULL::text, {_NO_HOLD};
END
$$;
"""

RELEASE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION ts_ledger_release(p_pair text, p_epoch bigint, p_hold text, p_reason text)
RETURNS TABLE (status text, number bigint, other text, {_HOLD_OUT})
LANGUAGE plpgsql AS $$
DECLARE
    current_epoch bigint;
    h holds%ROWTYPE;
BEGIN
    {_FENCE_CHECK.format(no_hold=_NO_HOLD)}
    SELECT * INTO h FROM holds WHERE holds.hold_id = p_hold FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO holds (hold_id, reserved, remaining, order_qty, filled_qty, state, close_reason)
            VALUES (p_hold, 0, 0, 0, 0, '{HoldState.RELEASED.value}', p_reason);
        RETURN QUERY SELECT 'absent'::text, 0::bigint, NULL::text, {_NO_HOLD};
        RETURN;
    END IF;
    IF h.state IN ('{HoldState.RELEASED.value}', '{HoldState.CONSUMED.value}') THEN
        RETURN QUERY SELECT 'already_closed'::text, 0::bigint, NULL::text, {_NO_HOLD};
        RETURN;
    END IF;
    UPDATE holds SET remaining = 0, state = '{HoldState.RELEASED.value}', close_reason = p_reason,
        updated_at = now() WHERE holds.hold_id = p_hold;
    IF h.remaining <> 0 THEN
        UPDATE balances b SET available = b.available + h.remaining, held = b.held - h.remaining
            WHERE b.account_id = h.account_id AND b.asset = h.asset;
        INSERT INTO entries (entry_key, account_id, asset, kind, delta_available, delta_held, ref, epoch)
            VALUES ('release:' || p_hold, h.account_id, h.asset, '{EntryKind.RELEASE.value}', h.remaining,
                    -h.remaining, p_hold, p_epoch);
    END IF;
    RETURN QUERY SELECT 'released'::text, h.remaining, NULL::text, {_NO_HOLD};
END
$$;
"""

BIND_FUNCTION = f"""
CREATE OR REPLACE FUNCTION ts_ledger_bind(p_pair text, p_epoch bigint, p_hold text, p_order text)
RETURNS TABLE (status text, number bigint, other text, {_HOLD_OUT})
LANGUAGE plpgsql AS $$
DECLARE
    current_epoch bigint;
    h holds%ROWTYPE;
    other_hold text;
BEGIN
    {_FENCE_CHECK.format(no_hold=_NO_HOLD)}
    SELECT * INTO h FROM holds WHERE holds.hold_id = p_hold FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, NULL::bigint, NULL::text, {_NO_HOLD};
        RETURN;
    END IF;
    IF h.state = '{HoldState.RELEASED.value}' THEN
        RETURN QUERY SELECT 'released'::text, NULL::bigint, NULL::text, {_NO_HOLD};
        RETURN;
    END IF;
    IF h.order_id IS NOT NULL AND h.order_id <> p_order THEN
        RETURN QUERY SELECT 'bound_other'::text, NULL::bigint, h.order_id, {_NO_HOLD};
        RETURN;
    END IF;
    IF h.order_id IS NULL THEN
        SELECT o.hold_id INTO other_hold FROM holds o WHERE o.order_id = p_order;
        IF FOUND THEN
            RETURN QUERY SELECT 'order_taken'::text, NULL::bigint, other_hold, {_NO_HOLD};
            RETURN;
        END IF;
    END IF;
    IF h.state <> '{HoldState.RESERVED.value}' AND h.order_id = p_order THEN
        RETURN QUERY SELECT 'unchanged'::text, NULL::bigint, NULL::text, {_HOLD_RETURN};
        RETURN;
    END IF;
    UPDATE holds SET order_id = p_order, state = '{HoldState.BOUND.value}', updated_at = now()
        WHERE holds.hold_id = p_hold;
    RETURN QUERY SELECT 'bound'::text, NULL::bigint, NULL::text, {_HOLD_RETURN};
END
$$;
"""

FUNCTIONS = (RESERVE_FUNCTION, RELEASE_FUNCTION, BIND_FUNCTION)


@dataclass(frozen=True, slots=True)
class Call:
    """A call of one of the functions, with its named parameters in order."""

    function: str
    params: tuple[str, ...]

    @property
    def statement(self) -> TextClause:
        return text(f"SELECT * FROM {self.function}({', '.join(':' + name for name in self.params)})")

    @property
    def driver_sql(self) -> str:
        placeholders = ", ".join(f"${n}" for n in range(1, len(self.params) + 1))
        return f"SELECT * FROM {self.function}({placeholders})"


CALL_RESERVE = Call(
    "ts_ledger_reserve", ("pair", "epoch", "hold", "account", "asset", "amount", "qty", "order_id")
)
CALL_RELEASE = Call("ts_ledger_release", ("pair", "epoch", "hold", "reason"))
CALL_BIND = Call("ts_ledger_bind", ("pair", "epoch", "hold", "order_id"))


async def create_functions(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        for function in FUNCTIONS:
            await conn.exec_driver_sql(function)


def on_postgres(db: Database) -> bool:
    return db.dialect.name == "postgresql"


async def call(db: Database, function: Call, params: dict[str, Any]) -> Any:
    """Run one function call; the row it answers (its columns as attributes).

    Given an engine, the call goes straight to the driver's connection, outside any
    transaction: the statement is its own transaction (PostgreSQL commits it before
    answering, synchronous commit included). That saves the BEGIN and COMMIT round trips
    and SQLAlchemy's per-statement work, which were most of a coordinator's CPU for a
    reserve. Given a connection, the call joins (or opens) that connection's transaction
    like every other ledger operation.
    """
    if isinstance(db, AsyncEngine):
        async with db.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            try:
                record = await driver.fetchrow(
                    function.driver_sql, *(params[name] for name in function.params)
                )
            except BaseException as exc:
                # The driver connection may be mid-protocol (cancelled) or gone: never
                # hand it to the next user.
                await conn.invalidate()
                if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
                    raise IntegrityError(function.driver_sql, params, exc) from exc
                raise
            return SimpleNamespace(**dict(record))
    statement = function.statement
    if db.in_transaction():
        return (await db.execute(statement, params)).one()
    async with db.begin():
        return (await db.execute(statement, params)).one()

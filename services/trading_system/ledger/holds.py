"""Reservations: reserve at CanCommit, bind at DoCommit, release on cancel/expiry/abort.

Every function here is one transaction that checks the writer's fence first and does
all its checks before its first write, so a refusal (a typed error) changes nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from trading_system.ledger.accounts import require_account_and_asset
from trading_system.ledger.entries import append_entries, entry
from trading_system.ledger.errors import (
    HoldNotFoundError,
    HoldStateError,
    IdempotencyConflictError,
    InsufficientFundsError,
    RetryableConflictError,
    UnknownAccountError,
    UnknownAssetError,
)
from trading_system.ledger.procedures import (
    CALL_BIND,
    CALL_RELEASE,
    CALL_RESERVE,
    HOLD_FIELDS,
    RETURNED_HOLD_FIELDS,
    call,
    on_postgres,
)
from trading_system.ledger.schema import balances, holds
from trading_system.ledger.types import (
    EntryKind,
    Hold,
    HoldState,
    ReleaseResult,
    ReleaseStatus,
    ReserveResult,
)
from trading_system.ledger.validation import require_amount, require_id
from trading_system.storage.fencing import FencedError, FenceToken, check_fence
from trading_system.storage.transactions import Database, transaction

HOLD_COLUMNS = tuple(holds.c[name] for name in HOLD_FIELDS)
_CLOSED = (HoldState.RELEASED, HoldState.CONSUMED)

# Statements used on every order are built once: building a SQLAlchemy construct per
# call costs about as much as a round trip to the database.
_BY_ID = select(*HOLD_COLUMNS).where(holds.c.hold_id == bindparam("h_id"))
_BY_ID_OR_ORDER = select(*HOLD_COLUMNS).where(
    or_(holds.c.hold_id == bindparam("h_id"), holds.c.order_id == bindparam("h_order"))
)
_LOCK_BY_ID = _BY_ID.with_for_update()
_INSERT_HOLD = holds.insert()
_CLOSE = (
    update(holds)
    .where(holds.c.hold_id == bindparam("h_id"))
    .values(
        remaining=0, state=HoldState.RELEASED.value, close_reason=bindparam("h_reason"), updated_at=func.now()
    )
)
_BIND = (
    update(holds)
    .where(holds.c.hold_id == bindparam("h_id"))
    .values(order_id=bindparam("h_order"), state=HoldState.BOUND.value, updated_at=func.now())
)

# Take the amount only if it is there: the row lock of this one UPDATE is what keeps
# concurrent reserves on the same balance from overdrawing it.
_TAKE = (
    update(balances)
    .where(
        balances.c.account_id == bindparam("b_account"),
        balances.c.asset == bindparam("b_asset"),
        balances.c.available >= bindparam("b_amount"),
    )
    .values(
        available=balances.c.available - bindparam("b_amount"),
        held=balances.c.held + bindparam("b_amount"),
    )
    .returning(balances.c.available)
)
_GIVE_BACK = (
    update(balances)
    .where(balances.c.account_id == bindparam("b_account"), balances.c.asset == bindparam("b_asset"))
    .values(
        available=balances.c.available + bindparam("b_amount"),
        held=balances.c.held - bindparam("b_amount"),
    )
)


def _refused(row: Any, fence: FenceToken) -> None:
    """The fence refusal every stored function answers the same way."""
    if row.status == "fenced":
        raise FencedError(fence.pair_name, fence.epoch, None if row.number is None else int(row.number))


def _expect(row: Any, status: str) -> None:
    if row.status != status:
        raise RuntimeError(f"unexpected ledger function answer {row.status!r}")


def hold_from_row(row: Any, columns: tuple[str, ...] = HOLD_FIELDS) -> Hold:
    hold_id, account_id, asset, order_id, reserved, remaining, order_qty, filled_qty, state = (
        getattr(row, column) for column in columns
    )
    return Hold(
        hold_id=hold_id,
        account_id=account_id,
        asset=asset,
        order_id=order_id,
        reserved=int(reserved),
        remaining=int(remaining),
        order_qty=int(order_qty),
        filled_qty=int(filled_qty),
        state=HoldState(state),
    )


def _returned_hold(row: Any) -> Hold:
    return hold_from_row(row, RETURNED_HOLD_FIELDS)


async def reserve(
    db: Database,
    fence: FenceToken,
    *,
    hold_id: str,
    account_id: str,
    asset: str,
    amount: int,
    order_qty: int,
    order_id: str | None = None,
) -> ReserveResult:
    """Move ``amount`` of ``asset`` from available to held, for an order of ``order_qty``.

    Idempotent per ``hold_id``: repeating the call returns the existing hold with
    ``created=False``. Raises :class:`InsufficientFundsError` (the NO vote) when the
    available balance is short, and :class:`HoldStateError` when the hold was already
    released, e.g. the transaction aborted before this reserve arrived.
    """
    require_id("hold_id", hold_id)
    require_id("account_id", account_id)
    require_id("asset", asset)
    require_amount("amount", amount)
    require_amount("order_qty", order_qty)
    if order_id is not None:
        require_id("order_id", order_id)
    if on_postgres(db):
        return await _reserve_in_function(db, fence, hold_id, account_id, asset, amount, order_qty, order_id)
    try:
        async with transaction(db) as conn:
            await check_fence(conn, fence)
            existing = await _existing_for_reserve(conn, hold_id, order_id)
            if existing is not None:
                _check_same_reserve(existing, account_id, asset, amount, order_qty, order_id)
                return ReserveResult(existing, created=False)
            taken = (
                await conn.execute(_TAKE, {"b_account": account_id, "b_asset": asset, "b_amount": amount})
            ).first()
            if taken is None:
                await _refuse_reserve(conn, account_id, asset, amount)
            await conn.execute(
                _INSERT_HOLD,
                {
                    "hold_id": hold_id,
                    "account_id": account_id,
                    "asset": asset,
                    "order_id": order_id,
                    "reserved": amount,
                    "remaining": amount,
                    "order_qty": order_qty,
                    "filled_qty": 0,
                    "state": HoldState.RESERVED.value,
                },
            )
            await append_entries(
                conn,
                [
                    entry(
                        f"reserve:{hold_id}",
                        account_id,
                        asset,
                        EntryKind.RESERVE,
                        available=-amount,
                        held=amount,
                        ref=hold_id,
                        epoch=fence.epoch,
                    )
                ],
            )
    except IntegrityError as exc:
        # Two reserves with the same hold or order id at the same moment: the loser
        # rolled back; its retry will see the winner's hold.
        raise RetryableConflictError(f"reserve {hold_id!r} raced with another writer") from exc
    hold = Hold(hold_id, account_id, asset, order_id, amount, amount, order_qty, 0, HoldState.RESERVED)
    return ReserveResult(hold, created=True)


async def _reserve_in_function(
    db: Database,
    fence: FenceToken,
    hold_id: str,
    account_id: str,
    asset: str,
    amount: int,
    order_qty: int,
    order_id: str | None,
) -> ReserveResult:
    """``reserve`` as one statement (``ledger.procedures``), with the same answers."""
    params = {
        "pair": fence.pair_name,
        "epoch": fence.epoch,
        "hold": hold_id,
        "account": account_id,
        "asset": asset,
        "amount": amount,
        "qty": order_qty,
        "order_id": order_id,
    }
    try:
        row = await call(db, CALL_RESERVE, params)
    except IntegrityError as exc:
        raise RetryableConflictError(f"reserve {hold_id!r} raced with another writer") from exc
    _refused(row, fence)
    if row.status == "order_taken":
        raise IdempotencyConflictError(f"order {order_id!r} already has hold {row.other!r}")
    if row.status == "exists":
        found = _returned_hold(row)
        _check_same_reserve(found, account_id, asset, amount, order_qty, order_id)
        return ReserveResult(found, created=False)
    if row.status == "unknown_account":
        raise UnknownAccountError(account_id)
    if row.status == "unknown_asset":
        raise UnknownAssetError(asset)
    if row.status == "insufficient":
        raise InsufficientFundsError(account_id, asset, amount, int(row.number))
    _expect(row, "created")
    hold = Hold(hold_id, account_id, asset, order_id, amount, amount, order_qty, 0, HoldState.RESERVED)
    return ReserveResult(hold, created=True)


async def _existing_for_reserve(conn: AsyncConnection, hold_id: str, order_id: str | None) -> Hold | None:
    if order_id is None:
        result = await conn.execute(_BY_ID, {"h_id": hold_id})
    else:
        result = await conn.execute(_BY_ID_OR_ORDER, {"h_id": hold_id, "h_order": order_id})
    found = [hold_from_row(r) for r in result]
    for hold in found:
        if hold.hold_id != hold_id:
            raise IdempotencyConflictError(f"order {order_id!r} already has hold {hold.hold_id!r}")
    return found[0] if found else None


def _check_same_reserve(
    hold: Hold, account_id: str, asset: str, amount: int, order_qty: int, order_id: str | None
) -> None:
    if hold.account_id is None:
        raise HoldStateError(f"hold {hold.hold_id!r} was released before it was reserved (aborted)")
    if (hold.account_id, hold.asset, hold.reserved, hold.order_qty) != (
        account_id,
        asset,
        amount,
        order_qty,
    ) or (order_id is not None and hold.order_id not in (None, order_id)):
        raise IdempotencyConflictError(f"hold {hold.hold_id!r} exists with other values")
    if hold.state == HoldState.RELEASED:
        raise HoldStateError(f"hold {hold.hold_id!r} is already released")


async def _refuse_reserve(conn: AsyncConnection, account_id: str, asset: str, amount: int) -> None:
    """Explain why the conditional UPDATE took nothing, as a typed error."""
    await require_account_and_asset(conn, account_id, asset)
    available = (
        await conn.execute(
            select(balances.c.available).where(balances.c.account_id == account_id, balances.c.asset == asset)
        )
    ).scalar_one_or_none()
    raise InsufficientFundsError(account_id, asset, amount, int(available or 0))


async def _lock_hold(conn: AsyncConnection, hold_id: str) -> Hold | None:
    row = (await conn.execute(_LOCK_BY_ID, {"h_id": hold_id})).first()
    return None if row is None else hold_from_row(row)


async def release(db: Database, fence: FenceToken, hold_id: str, *, reason: str = "cancel") -> ReleaseResult:
    """Return the unused rest of a hold to available (cancel, expiry, abort). Idempotent.

    A hold that does not exist yet gets a tombstone, so a reserve arriving after the
    abort is refused instead of leaving an orphan hold: compensation can always run.
    """
    require_id("hold_id", hold_id)
    require_id("reason", reason)
    if on_postgres(db):
        params = {"pair": fence.pair_name, "epoch": fence.epoch, "hold": hold_id, "reason": reason}
        try:
            row = await call(db, CALL_RELEASE, params)
        except IntegrityError as exc:
            raise RetryableConflictError(f"release {hold_id!r} raced with another writer") from exc
        _refused(row, fence)
        if row.status == "absent":
            return ReleaseResult(hold_id, ReleaseStatus.ABSENT, 0)
        if row.status == "already_closed":
            return ReleaseResult(hold_id, ReleaseStatus.ALREADY_CLOSED, 0)
        _expect(row, "released")
        return ReleaseResult(hold_id, ReleaseStatus.RELEASED, int(row.number))
    try:
        async with transaction(db) as conn:
            await check_fence(conn, fence)
            hold = await _lock_hold(conn, hold_id)
            if hold is None:
                await conn.execute(
                    _INSERT_HOLD,
                    {
                        "hold_id": hold_id,
                        "reserved": 0,
                        "remaining": 0,
                        "order_qty": 0,
                        "filled_qty": 0,
                        "state": HoldState.RELEASED.value,
                        "close_reason": reason,
                    },
                )
                return ReleaseResult(hold_id, ReleaseStatus.ABSENT, 0)
            if hold.state in _CLOSED:
                return ReleaseResult(hold_id, ReleaseStatus.ALREADY_CLOSED, 0)
            await _close_hold(conn, fence, hold, reason)
    except IntegrityError as exc:
        raise RetryableConflictError(f"release {hold_id!r} raced with another writer") from exc
    return ReleaseResult(hold_id, ReleaseStatus.RELEASED, hold.remaining)


async def _close_hold(conn: AsyncConnection, fence: FenceToken, hold: Hold, reason: str) -> None:
    await conn.execute(_CLOSE, {"h_id": hold.hold_id, "h_reason": reason})
    if hold.remaining == 0:
        return
    assert hold.account_id is not None and hold.asset is not None  # tombstones are never open
    await conn.execute(
        _GIVE_BACK, {"b_account": hold.account_id, "b_asset": hold.asset, "b_amount": hold.remaining}
    )
    await append_entries(
        conn,
        [
            entry(
                f"release:{hold.hold_id}",
                hold.account_id,
                hold.asset,
                EntryKind.RELEASE,
                available=hold.remaining,
                held=-hold.remaining,
                ref=hold.hold_id,
                epoch=fence.epoch,
            )
        ],
    )


async def bind_hold(db: Database, fence: FenceToken, hold_id: str, order_id: str) -> Hold:
    """DoCommit: tie the hold to the venue's accepted order. Idempotent.

    Fills may settle against the hold before this arrives (the venue can match an
    order the moment it accepts it), so a reserved, bound or consumed hold of the same
    order is fine; only a released hold or a different order is refused.
    """
    require_id("hold_id", hold_id)
    require_id("order_id", order_id)
    if on_postgres(db):
        params = {"pair": fence.pair_name, "epoch": fence.epoch, "hold": hold_id, "order_id": order_id}
        row = await call(db, CALL_BIND, params)
        _refused(row, fence)
        if row.status == "not_found":
            raise HoldNotFoundError(hold_id)
        if row.status == "released":
            raise HoldStateError(f"hold {hold_id!r} is released; the transaction cannot commit")
        if row.status == "bound_other":
            raise IdempotencyConflictError(
                f"hold {hold_id!r} is bound to order {row.other!r}, not {order_id!r}"
            )
        if row.status == "order_taken":
            raise IdempotencyConflictError(f"order {order_id!r} already has hold {row.other!r}")
        if row.status == "unchanged":
            return _returned_hold(row)
        _expect(row, "bound")
        return replace(_returned_hold(row), order_id=order_id, state=HoldState.BOUND)
    async with transaction(db) as conn:
        await check_fence(conn, fence)
        hold = await _lock_hold(conn, hold_id)
        if hold is None:
            raise HoldNotFoundError(hold_id)
        if hold.state == HoldState.RELEASED:
            raise HoldStateError(f"hold {hold_id!r} is released; the transaction cannot commit")
        if hold.order_id not in (None, order_id):
            raise IdempotencyConflictError(
                f"hold {hold_id!r} is bound to order {hold.order_id!r}, not {order_id!r}"
            )
        if hold.order_id is None:
            other = (
                await conn.execute(select(holds.c.hold_id).where(holds.c.order_id == order_id))
            ).scalar_one_or_none()
            if other is not None:
                raise IdempotencyConflictError(f"order {order_id!r} already has hold {other!r}")
        if hold.state != HoldState.RESERVED and hold.order_id == order_id:
            return hold
        await conn.execute(_BIND, {"h_id": hold_id, "h_order": order_id})
    return replace(hold, order_id=order_id, state=HoldState.BOUND)


async def get_hold(db: Database, hold_id: str) -> Hold | None:
    async with transaction(db) as conn:
        row = (await conn.execute(_BY_ID, {"h_id": hold_id})).first()
    return None if row is None else hold_from_row(row)

"""Appending to the journal of movements (the ``entries`` table)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from trading_system.ledger.schema import entries
from trading_system.ledger.types import EntryKind

EntryRow = dict[str, Any]


def entry(
    key: str, account_id: str, asset: str, kind: EntryKind, *, available: int, held: int, ref: str, epoch: int
) -> EntryRow:
    """One movement on (account, asset): ``available``/``held`` are the deltas it applies."""
    return {
        "entry_key": key,
        "account_id": account_id,
        "asset": asset,
        "kind": kind.value,
        "delta_available": available,
        "delta_held": held,
        "ref": ref,
        "epoch": epoch,
    }


async def append_entries(conn: AsyncConnection, rows: Sequence[EntryRow]) -> None:
    if rows:
        await conn.execute(entries.insert(), list(rows))

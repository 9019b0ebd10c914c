"""Group commit: concurrent inserts share a write; a duplicate only fails its own caller."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from trading_system.execution.book import OrderRecord
from trading_system.execution.service.group_commit import GroupCommit
from trading_system.execution.service.store import DuplicateClientOrderId
from trading_system.storage.fencing import FencedError

pytestmark = pytest.mark.unit


def rec(i: int, client: str | None = None) -> OrderRecord:
    return OrderRecord(f"o{i}", client or f"c{i}", "a", "S", "buy", "limit", "gtc", 1, 1, 0.0)


class FakeTable:
    def __init__(self) -> None:
        self.rows: dict[str, str] = {}
        self.writes: list[int] = []
        self.fail: Exception | None = None

    async def write(self, records: Sequence[OrderRecord]) -> None:
        await asyncio.sleep(0.01)  # a commit takes time; callers arriving meanwhile queue up
        self.writes.append(len(records))
        if self.fail is not None:
            raise self.fail
        clients = [r.client_order_id for r in records]
        if len(set(clients)) < len(clients) or set(clients) & set(self.rows.values()):
            raise DuplicateClientOrderId("duplicate")
        self.rows.update({r.order_id: r.client_order_id for r in records})


async def test_concurrent_inserts_share_commits() -> None:
    table = FakeTable()
    group = GroupCommit(table.write)
    await asyncio.gather(*(group.insert(rec(i)) for i in range(50)))
    await group.close()
    assert len(table.rows) == 50
    assert sum(table.writes) == 50 and len(table.writes) < 10


async def test_a_duplicate_fails_only_its_caller() -> None:
    table = FakeTable()
    group = GroupCommit(table.write)
    await group.insert(rec(0, "taken"))
    results = await asyncio.gather(
        *(group.insert(rec(i, "taken" if i == 3 else None)) for i in range(1, 6)), return_exceptions=True
    )
    await group.close()
    assert [type(r).__name__ for r in results] == ["NoneType"] * 2 + ["DuplicateClientOrderId"] + [
        "NoneType"
    ] * 2
    assert sorted(table.rows) == ["o0", "o1", "o2", "o4", "o5"]


async def test_other_errors_reach_every_caller_of_the_batch() -> None:
    table = FakeTable()
    table.fail = FencedError("execution", 1, 2)
    group = GroupCommit(table.write)
    results = await asyncio.gather(*(group.insert(rec(i)) for i in range(3)), return_exceptions=True)
    await group.close()
    assert all(isinstance(r, FencedError) for r in results) and table.rows == {}

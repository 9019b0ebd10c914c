"""The world every coordinator integration test starts from: a funded ledger, the test
process's venue and requester on a fresh queue namespace, and a store to look at."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.environment.rabbitmq import RabbitMQCluster
from tests.integration.coordinator.harness import Bench, new_namespace, setup_ledger
from trading_system.coordinator.sql_store import SqlStore
from trading_system.storage import create_engine


@pytest_asyncio.fixture(loop_scope="function")
async def world(rabbitmq: RabbitMQCluster, postgres_dsn: str) -> AsyncIterator[tuple[Bench, SqlStore, str]]:
    await setup_ledger(postgres_dsn)
    namespace = new_namespace()
    bench = await Bench.start(list(rabbitmq.urls), namespace)
    db = create_engine(postgres_dsn)
    yield bench, SqlStore(db), namespace
    await bench.close()
    await db.dispose()

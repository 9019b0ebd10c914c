"""Fixtures that give tests the real test environment.

Each component starts once per session, lazily, the first time a test needs it, and is
torn down at the end. Function-scoped wrappers heal what a test broke (a killed RabbitMQ
node, a stopped PostgreSQL) so one test's fault injection never leaks into the next.
"""

from __future__ import annotations

import os

if os.environ.get("TS_MATCHING_CORE") == "pure":  # before anything imports the core
    from tests.pure_core import install

    install()

import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.environment.kubernetes import ControlPlane
from tests.environment.postgres import PostgresServer
from tests.environment.rabbitmq import RabbitMQCluster
from tests.environment.session import (
    attach_control_plane,
    attach_postgres,
    attach_rabbitmq,
    default_base_dir,
    load_state,
    new_control_plane,
    new_postgres,
    new_rabbitmq,
)


@pytest.fixture(scope="session")
def testenv_base() -> Iterator[Path]:
    base = default_base_dir()
    yield base
    # Component fixtures tear down first (they depend on this one); then the data goes.
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def rabbitmq_cluster(testenv_base: Path) -> Iterator[RabbitMQCluster]:
    state = load_state()
    if state and "rabbitmq" in state:
        yield attach_rabbitmq(state)
        return
    cluster = new_rabbitmq(testenv_base)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def rabbitmq(rabbitmq_cluster: RabbitMQCluster) -> Iterator[RabbitMQCluster]:
    """The 3-node cluster, healed after the test if the test broke a node."""
    yield rabbitmq_cluster
    rabbitmq_cluster.heal()


@pytest.fixture(scope="session")
def postgres_server(testenv_base: Path) -> Iterator[PostgresServer]:
    state = load_state()
    if state and "postgres" in state:
        yield attach_postgres(state)
        return
    server = new_postgres(testenv_base)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """The PostgreSQL server, restarted after the test if the test stopped it."""
    yield postgres_server
    if not postgres_server.is_running():
        postgres_server.start()


def _database_name(node_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", node_name.lower())[:40]
    return f"t_{slug}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def postgres_dsn(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for this test (SQLAlchemy asyncpg URL)."""
    name = _database_name(request.node.name)
    dsn = postgres.create_database(name)
    yield dsn
    if postgres.is_running():
        postgres.drop_database(name)


@pytest.fixture(scope="session")
def k8s_cluster(testenv_base: Path) -> Iterator[ControlPlane]:
    state = load_state()
    if state and "kubernetes" in state:
        yield attach_control_plane(state)
        return
    plane = new_control_plane(testenv_base)
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def k8s_namespace(k8s_cluster: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for this test, deleted afterwards (without waiting)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    k8s_cluster.kubectl("create", "namespace", name)
    yield name
    k8s_cluster.kubectl("delete", "namespace", name, "--wait=false")

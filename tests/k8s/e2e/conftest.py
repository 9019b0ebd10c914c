"""Fixtures for the operator-driven end-to-end test: the pods' real processes, a RabbitMQ
virtual host of the test's own on the real cluster, and the external-database Secret.

``kube``, ``ts_crd``, ``k8s_namespace`` and ``operator`` (the operator as a real process)
come from tests/k8s/conftest.py and tests/conftest.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.environment.processes import EnvironmentFailure
from tests.environment.rabbitmq import RabbitMQCluster
from tests.k8s.e2e.runner import PodRunner
from trading_operator.k8s_io import Kube

RABBITMQ_URL = "TRADING_SYSTEM_RABBITMQ_URL"
DB_SECRET = "external-db"


@pytest.fixture
def bus_urls(rabbitmq_cluster: RabbitMQCluster) -> Iterator[list[str]]:
    """The real cluster's nodes, in a virtual host of this test's own.

    The services run with no flags, as in a pod, so their exchange and queue names carry no
    prefix; the vhost keeps them apart from every other test on the shared cluster, and
    deleting it removes every queue the test declared.
    """
    vhost = f"ts-e2e-{uuid.uuid4().hex[:8]}"
    node = rabbitmq_cluster.live_node()
    rabbitmq_cluster.ctl(node, "add_vhost", vhost)
    rabbitmq_cluster.ctl(node, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield [url.rstrip("/") + f"/{vhost}" for url in rabbitmq_cluster.urls]
    finally:
        try:
            rabbitmq_cluster.ctl(rabbitmq_cluster.live_node(), "delete_vhost", vhost, timeout=120)
        except EnvironmentFailure as exc:
            print(f"could not delete vhost {vhost}: {exc}")


@pytest.fixture
def external_db(kube: Kube, k8s_namespace: str, postgres_dsn: str) -> str:
    """A Secret holding the real PostgreSQL's DSN (a fresh database), for ``spec.database``."""
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": DB_SECRET, "namespace": k8s_namespace},
            "type": "Opaque",
            "stringData": {"dsn": postgres_dsn},
        }
    )
    return DB_SECRET


@pytest.fixture
def pod_runner(
    kube: Kube, k8s_namespace: str, bus_urls: list[str], postgres_dsn: str, tmp_path: Path
) -> Iterator[PodRunner]:
    """Real processes for the namespace's pipeline pods. The one substitution: the RabbitMQ
    pods are KWOK fakes that nothing serves, so the services get the real cluster's URL."""
    overrides = {RABBITMQ_URL: ",".join(bus_urls)}
    with PodRunner(kube, k8s_namespace, tmp_path / "pods", env_overrides=overrides) as runner:
        yield runner
    if runner.errors:  # transient API errors are retried; shown for the record
        print(f"pod runner: {len(runner.errors)} API errors, last: {runner.errors[-1]}")

"""The declarative topology, settings from the environment, and error classification."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.unit.bus.support import order
from trading_system.bus import (
    Binding,
    BusMode,
    BusSettings,
    ConfigurationError,
    ErrorClassifier,
    ErrorKind,
    Exchange,
    MessageDecodeError,
    PermanentError,
    PoisonMessageError,
    RetryPolicy,
    Topology,
    TransientError,
    WorkQueue,
)
from trading_system.bus.topology import QueueRole

pytestmark = pytest.mark.unit


def test_a_work_queue_expands_into_its_failure_handling_queues() -> None:
    topology = Topology(
        exchanges=(Exchange("orders"),),
        queues=(
            WorkQueue(
                "matching.commands",
                bindings=(Binding("orders", "order.*"),),
                single_active_consumer=True,
                delivery_limit=4,
                retry=RetryPolicy(max_attempts=3),
                max_length=10_000,
            ),
        ),
    )
    plan = topology.plan()
    by_name = {q.name: q for q in plan.queues}
    assert list(by_name) == [
        "matching.commands",
        "matching.commands.retry.1",
        "matching.commands.retry.2",
        "matching.commands.dead",
        "matching.commands.parking",
    ]
    assert all(q.arguments["x-queue-type"] == "quorum" for q in plan.queues)
    work = by_name["matching.commands"].arguments
    assert work == {
        "x-queue-type": "quorum",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": 4,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "matching.commands.dead",
        "x-single-active-consumer": True,
        "x-max-length": 10_000,
    }
    retry = by_name["matching.commands.retry.2"]
    assert retry.role is QueueRole.RETRY
    assert retry.arguments["x-dead-letter-routing-key"] == "matching.commands"
    assert retry.arguments["x-dead-letter-strategy"] == "at-least-once"
    assert by_name["matching.commands.parking"].arguments == {"x-queue-type": "quorum"}
    assert [(b.queue, b.exchange, b.routing_key) for b in plan.bindings] == [
        ("matching.commands", "orders", "order.*")
    ]


def test_topologies_merge_and_validate() -> None:
    a = Topology((Exchange("x"),), (WorkQueue("q1", bindings=(Binding("x", "k"),)),))
    b = Topology((), (WorkQueue("q2"),))
    merged = a.merge(b)
    assert [q.name for q in merged.queues] == ["q1", "q2"]
    assert merged.queue("q2").name == "q2"
    with pytest.raises(KeyError):
        merged.queue("nope")
    with pytest.raises(ValueError, match="undeclared exchange"):
        Topology((), (WorkQueue("q", bindings=(Binding("missing", "k"),)),))
    with pytest.raises(ValueError, match="duplicate"):
        Topology((), (WorkQueue("q"), WorkQueue("q")))
    with pytest.raises(ValueError, match="invalid queue name"):
        WorkQueue("amq.reserved")


def test_settings_from_the_environment_with_arguments_winning() -> None:
    env = {
        "TRADING_SYSTEM_MESSAGE_BUS_MODE": "In-Memory",
        "TRADING_SYSTEM_RABBITMQ_URLS": "amqp://a/, amqp://b/ ,",
        "TRADING_SYSTEM_SERVICE_NAME": "execution",
    }
    settings = BusSettings.from_env(env)
    assert settings.mode is BusMode.IN_MEMORY
    assert settings.urls == ("amqp://a/", "amqp://b/")
    assert settings.service == "execution"
    assert BusSettings.from_env(env, mode="auto", prefetch=5).mode is BusMode.AUTO
    assert BusSettings.from_env({}).mode is BusMode.RABBITMQ  # the safe default


def test_bad_settings_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="is not one of: rabbitmq, in_memory, auto"):
        BusSettings.from_env({"TRADING_SYSTEM_MESSAGE_BUS_MODE": "kafka"})
    with pytest.raises(ConfigurationError, match="unknown bus settings"):
        BusSettings.from_env({}, colour="red")
    with pytest.raises(ConfigurationError):
        BusSettings(prefetch=0)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TransientError("x"), ErrorKind.TRANSIENT),
        (TimeoutError(), ErrorKind.TRANSIENT),
        (TimeoutError(), ErrorKind.TRANSIENT),
        (ConnectionResetError(), ErrorKind.TRANSIENT),
        (PermanentError("x"), ErrorKind.PERMANENT),
        (MessageDecodeError("x"), ErrorKind.PERMANENT),
        (ValueError("x"), ErrorKind.PERMANENT),
        (KeyError("x"), ErrorKind.PERMANENT),
        (PoisonMessageError("x"), ErrorKind.POISON),
        (RuntimeError("x"), ErrorKind.UNKNOWN),
        (ZeroDivisionError(), ErrorKind.UNKNOWN),
    ],
)
def test_default_classification(error: BaseException, kind: ErrorKind) -> None:
    assert ErrorClassifier().classify(error) is kind


def test_pydantic_errors_are_permanent_and_services_can_extend_the_rules() -> None:
    with pytest.raises(ValidationError) as raised:
        order(1, qty="-1")
    assert ErrorClassifier().classify(raised.value) is ErrorKind.PERMANENT

    class Throttled(Exception):
        pass

    classifier = ErrorClassifier(transient=(Throttled,))
    assert classifier.classify(Throttled()) is ErrorKind.TRANSIENT
    assert classifier.classify(TimeoutError()) is ErrorKind.UNKNOWN  # replaced, not added


def test_a_lost_database_connection_is_transient_whatever_wraps_it() -> None:
    """During a PostgreSQL restart handlers fail with SQLAlchemy errors wrapping the
    driver's; requeueing them at once would exhaust the delivery limit and park them."""
    from asyncpg.exceptions import CannotConnectNowError
    from sqlalchemy.exc import DBAPIError

    def wrapped(cause: BaseException) -> BaseException:
        try:
            try:
                raise cause
            except BaseException as exc:
                raise DBAPIError("SELECT 1", None, exc) from exc
        except DBAPIError as outer:
            return outer

    classifier = ErrorClassifier()
    assert classifier.classify(wrapped(CannotConnectNowError("the database system is shutting down"))) is (
        ErrorKind.TRANSIENT
    )
    assert classifier.classify(wrapped(ConnectionRefusedError(111, "refused"))) is ErrorKind.TRANSIENT
    invalidated = DBAPIError("SELECT 1", None, Exception("gone"), connection_invalidated=True)
    assert classifier.classify(invalidated) is ErrorKind.TRANSIENT
    assert classifier.classify(wrapped(ValueError("a bad row"))) is ErrorKind.UNKNOWN

"""The bus contract: every test here runs on the in-memory transport and on the real
3-node RabbitMQ cluster, and must pass the same way on both."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from tests.integration.bus.conftest import BusFactory
from tests.unit.bus.support import eventually, order
from trading_system.bus import (
    BreakerState,
    CircuitOpenError,
    Deduplicator,
    Envelope,
    EpochGate,
    MessageBus,
    MessageValidationError,
    ParkingTool,
    PermanentError,
    PoisonMessageError,
    PublishNackedError,
    RetryPolicy,
    TransientError,
    UnroutableError,
    current_delivery,
)
from trading_system.bus.catalog import OrderCancel, OrderNew
from trading_system.bus.codec import ENVELOPE_CONTENT_TYPE
from trading_system.bus.topology import dead_letter_queue_name, parking_queue_name
from trading_system.bus.transport import Outgoing

pytestmark = pytest.mark.integration


class Recorder:
    """A handler that records what it saw and fails as told, per order id."""

    def __init__(self, fail: dict[str, list[BaseException | None]] | None = None) -> None:
        self.fail = fail or {}
        self.seen: list[Envelope[Any]] = []
        self.calls: dict[str, list[float]] = {}

    async def __call__(self, env: Envelope[Any]) -> None:
        key = getattr(env.payload, "order_id", env.message_id)
        self.calls.setdefault(key, []).append(time.monotonic())
        plan = self.fail.get(key)
        if plan:
            error = plan.pop(0)
            if error is not None:
                raise error
        self.seen.append(env)

    def ids(self) -> list[str]:
        return [env.payload.order_id for env in self.seen]


async def depth(bus: MessageBus, queue: str) -> int:
    return await bus.transport.queue_depth(queue)


async def test_typed_messages_flow_through_an_exchange_in_order(buses: BusFactory) -> None:
    bus, queue = await buses.declared(routing_key="order.*")
    recorder = Recorder()
    await bus.subscribe(queue, recorder)

    sent = await bus.publish_many([order(i) for i in range(50)])
    cancel = await bus.publish(
        OrderCancel(order_id="o-1", account="acct-1", symbol="BTC-USD"), transaction_id="txn-7"
    )
    await eventually(lambda: len(recorder.seen) == 51, what="51 messages")

    assert [env.message_id for env in recorder.seen[:50]] == [env.message_id for env in sent]
    assert all(isinstance(env.payload, OrderNew) for env in recorder.seen[:50])
    last = recorder.seen[-1]
    assert isinstance(last.payload, OrderCancel)
    assert (last.message_id, last.transaction_id, last.source) == (
        cancel.message_id,
        "txn-7",
        bus.settings.service,
    )
    assert buses.metric(bus, "ts_bus_confirmed_total", message_type="order.new") == 50
    assert buses.metric(bus, "ts_bus_acked_total", queue=queue) == 51


async def test_batch_is_one_amqp_message_seen_as_items_in_order(buses: BusFactory) -> None:
    bus, queue = await buses.declared()
    recorder = Recorder()
    await bus.subscribe(queue, recorder)

    envelopes = await bus.publish_batch([order(i) for i in range(20)], exchange="", routing_key=queue)
    await eventually(lambda: len(recorder.seen) == 20, what="20 batch items")
    assert [env.message_id for env in recorder.seen] == [env.message_id for env in envelopes]
    assert buses.metric(bus, "ts_bus_acked_total", queue=queue) == 1  # one AMQP message


async def test_unroutable_publish_is_an_error_not_a_silent_drop(buses: BusFactory) -> None:
    bus = await buses.bus()
    await bus.declare(buses.topology())
    with pytest.raises(UnroutableError, match="no queue bound"):
        await bus.publish(order(1), routing_key="nobody.listens")
    assert buses.metric(bus, "ts_bus_returned_total", message_type="order.new") == 1
    assert bus.breaker.state is BreakerState.CLOSED


async def test_transient_errors_are_retried_with_growing_delays(buses: BusFactory) -> None:
    bus, queue = await buses.declared()
    recorder = Recorder({"o-1": [TransientError("db down"), TransientError("db down"), TransientError("x")]})
    attempts: list[int] = []

    async def handler(env: Envelope[Any]) -> None:
        info = current_delivery()
        assert info is not None
        attempts.append(info.attempt)
        await recorder(env)

    await bus.subscribe(queue, handler)
    await bus.publish(order(1), exchange="", routing_key=queue)
    await eventually(lambda: len(recorder.seen) == 1, within=15, what="success after 3 retries")

    times = recorder.calls["o-1"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    policy = bus.topology.queue(queue).retry
    assert attempts == [0, 1, 2, 3]
    assert len(gaps) == 3
    for retry_no, gap in enumerate(gaps, start=1):
        assert gap >= policy.base_delay(retry_no) * (1 - policy.jitter) - 0.02, gaps
    assert gaps[0] < gaps[1] < gaps[2], gaps
    assert buses.metric(bus, "ts_bus_retried_total", queue=queue) == 3


async def test_retries_exhausted_park_the_message(buses: BusFactory) -> None:
    retry = RetryPolicy(max_attempts=2, initial_delay=0.05, jitter=0.0)
    bus, queue = await buses.declared(retry=retry)
    recorder = Recorder({"o-1": [TransientError("down"), TransientError("still down")]})
    await bus.subscribe(queue, recorder)

    await bus.publish(order(1), exchange="", routing_key=queue)
    await eventually(lambda: _depth_is(bus, parking_queue_name(queue), 1), what="parked message")
    assert len(recorder.calls["o-1"]) == 2
    depths = await bus.queue_depths()  # before the tool: it holds messages while it looks
    assert depths[parking_queue_name(queue)] == 1 and depths[queue] == 0
    assert buses.metric(bus, "ts_bus_queue_depth", queue=parking_queue_name(queue), kind="parking") == 1
    [parked] = await ParkingTool(bus.transport).inspect(queue)
    assert parked.reason == "retries_exhausted"
    assert "still down" in parked.error
    assert buses.metric(bus, "ts_bus_parked_total", queue=queue, reason="retries_exhausted") == 1


async def _depth_is(bus: MessageBus, queue: str, expected: int) -> bool:
    return await depth(bus, queue) == expected


async def test_permanent_error_is_dead_lettered_at_once(buses: BusFactory) -> None:
    bus, queue = await buses.declared()
    recorder = Recorder({"o-1": [PermanentError("unknown account")]})
    await bus.subscribe(queue, recorder)

    await bus.publish(order(1), exchange="", routing_key=queue)
    await bus.publish(order(2), exchange="", routing_key=queue)
    await eventually(lambda: _depth_is(bus, dead_letter_queue_name(queue), 1), what="dead-lettered message")
    await eventually(lambda: recorder.ids() == ["o-2"], what="the next message")

    assert len(recorder.calls["o-1"]) == 1  # no retry
    dead = await bus.transport.get(dead_letter_queue_name(queue))
    assert dead is not None
    assert dead.headers["x-death"][0]["reason"] == "rejected"
    await dead.reject(requeue=True)
    assert buses.metric(bus, "ts_bus_dead_lettered_total", queue=queue, reason="permanent") == 1


async def test_poison_message_is_parked_after_the_delivery_limit(buses: BusFactory) -> None:
    bus, queue = await buses.declared(delivery_limit=3)
    # An error nobody classified: redelivered until the delivery limit, then parked.
    recorder = Recorder({"o-1": [RuntimeError("segfault-ish")] * 10})
    await bus.subscribe(queue, recorder)

    await bus.publish(order(1), exchange="", routing_key=queue)
    await eventually(lambda: _depth_is(bus, parking_queue_name(queue), 1), what="parked poison message")

    assert len(recorder.calls["o-1"]) == 3  # delivery counts 0, 1, 2; parked unread on 3
    assert await depth(bus, dead_letter_queue_name(queue)) == 0
    [parked] = await ParkingTool(bus.transport).inspect(queue)
    assert parked.reason == "delivery_limit"
    assert buses.metric(bus, "ts_bus_requeued_total", queue=queue) == 3


async def test_explicit_poison_is_parked_and_the_tool_republishes_it(buses: BusFactory) -> None:
    bus, queue = await buses.declared()
    recorder = Recorder({"o-1": [PoisonMessageError("needs a human")]})
    await bus.subscribe(queue, recorder)

    sent = await bus.publish(order(1), exchange="", routing_key=queue)
    await bus.publish(order(2), exchange="", routing_key=queue)
    await eventually(lambda: _depth_is(bus, parking_queue_name(queue), 1), what="parked message")
    await eventually(lambda: recorder.ids() == ["o-2"], what="o-2 handled")

    tool = ParkingTool(bus.transport)
    [parked] = await tool.inspect(queue)
    assert (parked.message_id, parked.reason, parked.item_ids) == (
        sent.message_id,
        "poison",
        (sent.message_id,),
    )
    assert await tool.republish(queue, message_ids={"not-there"}) == []
    assert await tool.republish(queue, message_ids={sent.message_id}) == [sent.message_id]

    await eventually(lambda: recorder.ids() == ["o-2", "o-1"], what="republished message handled")
    assert await depth(bus, parking_queue_name(queue)) == 0
    [again] = [env for env in recorder.seen if env.payload.order_id == "o-1"]
    assert again.message_id == sent.message_id  # same identity: consumers can dedup


async def test_breaker_opens_on_repeated_failures_and_recovers_through_half_open(buses: BusFactory) -> None:
    bus, queue = await buses.declared(
        await buses.bus(breaker_failure_threshold=3, breaker_reset_timeout=0.5), max_length=1
    )

    # The full queue (reject-publish) makes the broker nack: real failures, no mocks.
    nacks = 0
    for i in range(30):
        try:
            await bus.publish(order(i), exchange="", routing_key=queue)
        except PublishNackedError:
            nacks += 1
        except CircuitOpenError:
            break
        if bus.breaker.state is BreakerState.OPEN:
            break
    assert bus.breaker.state is BreakerState.OPEN, f"{nacks} nacks"
    with pytest.raises(CircuitOpenError, match=r"circuit breaker is open .* next trial in"):
        await bus.publish(order(99), exchange="", routing_key=queue)
    health = bus.health()
    assert health.status == "degraded" and health.ready

    # Make room, wait out the reset timeout: the single trial goes through and closes it.
    while (delivery := await bus.transport.get(queue)) is not None:
        await delivery.ack()
    await eventually(lambda: _depth_is(bus, queue, 0), what="queue drained")
    await asyncio.sleep(bus.breaker.reset_timeout)
    await bus.publish(order(100), exchange="", routing_key=queue)
    assert bus.health().breaker is BreakerState.CLOSED
    assert bus.health().status == "ok"
    for state in ("open", "half_open", "closed"):
        assert buses.metric(bus, "ts_bus_breaker_transitions_total", to=state) >= 1
    assert buses.metric(bus, "ts_bus_breaker_state") == 0


async def test_schema_invalid_message_is_refused_at_publish(buses: BusFactory) -> None:
    bus, queue = await buses.declared(await buses.bus(validate_on_publish=True))

    bad = {**order(1).model_dump(mode="json"), "qty": "-3", "order_type": "market"}
    with pytest.raises(MessageValidationError) as raised:
        await bus.publish_data("order.new", bad, exchange="", routing_key=queue)
    text = str(raised.value)
    assert "order.new v1" in text and "qty" in text and "greater than 0" in text

    sneaky = OrderNew.model_construct(**{**order(2).__dict__, "qty": -1})
    with pytest.raises(MessageValidationError, match="qty"):
        await bus.publish(sneaky, exchange="", routing_key=queue)
    with pytest.raises(MessageValidationError, match="unknown message type"):
        await bus.publish_data("order.nonsense", {}, exchange="", routing_key=queue)
    assert await depth(bus, queue) == 0


async def test_schema_invalid_message_is_dead_lettered_at_consume_not_crash_looped(
    buses: BusFactory,
) -> None:
    bus, queue = await buses.declared()
    recorder = Recorder()
    await bus.subscribe(queue, recorder)

    # A producer outside the bus (or on an older schema) sends garbage and a bad order.
    good = bus.codec.encode(bus.envelope(order(1)))
    bad_order = good.replace(b'"qty":"1.5"', b'"qty":"-1"')
    for n, body in enumerate((b"{not json", bad_order)):
        raw = Outgoing(body, f"raw-{n}", "order.new", ENVELOPE_CONTENT_TYPE)
        await bus.transport.publish("", queue, raw, mandatory=True, confirm_timeout=5)
    await bus.publish(order(2), exchange="", routing_key=queue)

    await eventually(lambda: _depth_is(bus, dead_letter_queue_name(queue), 2), what="2 dead-lettered")
    await eventually(lambda: recorder.ids() == ["o-2"], what="the valid message after them")
    assert buses.metric(bus, "ts_bus_dead_lettered_total", queue=queue, reason="invalid") == 2
    assert buses.metric(bus, "ts_bus_requeued_total", queue=queue) == 0


async def test_single_active_consumer_hands_over_when_the_active_one_leaves(buses: BusFactory) -> None:
    first_bus, second_bus = await buses.bus(), await buses.bus()
    topology = buses.topology(sac=True)
    await first_bus.declare(topology)
    await second_bus.declare(topology)
    queue = topology.queues[0].name
    first, second = Recorder(), Recorder()
    first_sub = await first_bus.subscribe(queue, first)
    await second_bus.subscribe(queue, second)

    await first_bus.publish_many([order(i) for i in range(10)], exchange="", routing_key=queue)
    await eventually(lambda: len(first.seen) == 10, what="10 on the active consumer")
    assert second.seen == []

    await first_bus.unsubscribe(first_sub)
    await first_bus.publish_many([order(i) for i in range(10, 20)], exchange="", routing_key=queue)
    await eventually(lambda: len(second.seen) == 10, what="10 on the new active consumer")
    assert second.ids() == [f"o-{i}" for i in range(10, 20)]


async def test_dedup_and_epoch_gate_drop_what_must_not_be_applied_twice(buses: BusFactory) -> None:
    bus, queue = await buses.declared()
    recorder = Recorder()
    await bus.subscribe(queue, recorder, dedup=Deduplicator(1000), epoch_gate=EpochGate())

    publish = bus.publish
    one = bus.envelope(order(1), epoch=2, sequence=1)
    await publish(one, exchange="", routing_key=queue)
    await publish(one, exchange="", routing_key=queue)  # a re-sent duplicate, same id
    await publish(order(2), exchange="", routing_key=queue, epoch=1, sequence=9)  # a fenced old active
    await publish(order(3), exchange="", routing_key=queue, epoch=2, sequence=2)
    await eventually(lambda: recorder.ids() == ["o-1", "o-3"], what="only o-1 and o-3 applied")
    await eventually(
        lambda: buses.metric(bus, "ts_bus_acked_total", queue=queue) == 4,
        what="all four settled",
    )
    assert buses.metric(bus, "ts_bus_dropped_total", queue=queue, reason="duplicate") == 1
    assert buses.metric(bus, "ts_bus_dropped_total", queue=queue, reason="stale_epoch") == 1

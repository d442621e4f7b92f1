"""Batched acknowledgements on a Redis broker (workers/redis_acks.py), on a real Redis.

An acknowledgement takes effect locally at once (the prefetch window moves) and leaves
kombu's `unacked` hash and index at the end of the loop turn, in one pipeline; closing
the channel writes what is pending; a message never acknowledged stays restorable.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Queue
from test_redelivery import spare_redis_broker  # noqa: F401 - a fixture

from workers.redis_acks import batch_redis_acks

pytestmark = pytest.mark.integration


class _Hub:
    """The part of kombu's Hub the batching uses: the per-turn callbacks."""

    def __init__(self) -> None:
        self.on_tick: set[Any] = set()

    def turn(self) -> None:
        for callback in list(self.on_tick):
            callback()


@pytest.fixture
def received(spare_redis_broker: str) -> Iterator[tuple[Any, list[Any], redis.Redis]]:  # noqa: F811
    queue = Queue("acks-test", routing_key="acks-test")
    with Connection(spare_redis_broker) as conn:
        producer = conn.Producer()
        for n in range(5):
            producer.publish({"n": n}, routing_key="acks-test", declare=[queue])
        channel = conn.channel()
        messages: list[Any] = []
        consumer = conn.Consumer(
            queue, channel=channel, callbacks=[lambda _b, m: messages.append(m)]
        )
        consumer.qos(prefetch_count=10)
        with consumer:
            while len(messages) < 5:
                conn.drain_events(timeout=5)
            with redis.Redis.from_url(spare_redis_broker) as client:
                yield channel, messages, client


def test_acks_leave_redis_in_one_pipeline_at_the_end_of_the_turn(received: Any) -> None:
    channel, messages, client = received
    hub = _Hub()
    assert batch_redis_acks(channel, hub, (redis.ConnectionError,)) is not None
    assert client.hlen("unacked") == 5

    for message in messages[:3]:
        message.ack()
    assert all(m.acknowledged for m in messages[:3])
    assert channel.qos.can_consume_max_estimate() == 10 - 2  # the prefetch window moved
    assert client.hlen("unacked") == 5  # not written yet

    hub.turn()
    assert client.hlen("unacked") == 2
    assert client.zcard("unacked_index") == 2

    messages[3].ack()
    channel.close()  # writes what is pending, restores the one never acknowledged
    assert hub.on_tick == set()
    assert client.hlen("unacked") == 0
    assert client.llen("acks-test") == 1


def test_other_brokers_and_loops_are_left_alone(received: Any) -> None:
    channel, _messages, _client = received
    assert batch_redis_acks(channel, None, ()) is None  # no event loop
    assert batch_redis_acks(object(), _Hub(), ()) is None  # not a Redis channel

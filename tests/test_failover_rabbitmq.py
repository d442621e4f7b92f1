"""A RabbitMQ node failure under load loses nothing (bench/failover.py, shortened).

A three-node cluster of its own (scripts/rabbitmq-cluster.sh) with quorum queues is the
broker, given to producers and workers as kombu's failover list, publishing with
confirms: kill -9 the node leading registry.heartbeats, and the worker a second later.
"""

from __future__ import annotations

import pytest
from failover_helpers import FailoverRun, assert_nothing_lost, short_options

pytestmark = pytest.mark.integration


def test_killing_the_heartbeat_queue_leader_loses_nothing():
    with FailoverRun(short_options("rabbitmq")) as run:
        outcome = run.scenario("rabbitmq")
    assert_nothing_lost(outcome)

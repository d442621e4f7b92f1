"""Redis and PostgreSQL failovers under load lose nothing (bench/failover.py, shortened).

Real stores of their own (Redis behind three Sentinels, a PostgreSQL primary with a
synchronous standby), a real worker, beat and liveness listener, a fleet heartbeating:
kill -9 the Redis primary, then kill -9 the PostgreSQL primary and promote the
standby, each with the worker SIGKILLed a second later.
"""

from __future__ import annotations

import pytest
from failover_helpers import FailoverRun, assert_nothing_lost, short_options

pytestmark = pytest.mark.integration


def test_redis_then_postgres_failover_lose_nothing():
    with FailoverRun(short_options("redis", "postgres")) as run:
        redis_outcome = run.scenario("redis")
        postgres_outcome = run.scenario("postgres")
    assert_nothing_lost(redis_outcome)
    assert_nothing_lost(postgres_outcome)

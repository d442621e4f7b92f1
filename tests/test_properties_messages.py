"""Property (whole messages, both brokers, a real worker process): whatever is published
on a registry queue, the worker never exits, every queue drains, and a valid heartbeat
sent afterwards still applies (tests/message_fuzzing.py; the long campaign is
bench/fuzz_messages.py, its figures in docs/SECURITY.md)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_helpers import wait_until
from liveness_helpers import PrivateRedis, private_rabbitmq_vhost
from message_fuzzing import message, publish, push_raw, queues_drained, raw_redis_entry
from sqlalchemy import text
from workerproc import (
    WORKER_READY,
    ManagedProcess,
    celery_worker_argv,
    managed_process,
    process_env,
)

from molecule_registry_client import celery_message
from molecule_registry_client.names import HEARTBEAT_QUEUE, HEARTBEAT_TASK

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def fuzzed_worker(
    request: pytest.FixtureRequest, test_env: dict[str, str], engine: Any
) -> Iterator[tuple[str, ManagedProcess]]:
    # A broker of the test's own: the suite's in-process worker must not take these.
    with (
        tempfile.TemporaryDirectory() as logs,
        PrivateRedis(Path(logs)) as server,
        private_rabbitmq_vhost() as amqp_url,
    ):
        broker_url = server.url() if request.param == "redis" else amqp_url
        env = process_env(test_env, CELERY_BROKER_URL=broker_url)
        with (
            managed_process(
                celery_worker_argv(), env=env, ready=WORKER_READY, log_dir=Path(logs), name="fuzz"
            ) as worker,
        ):
            yield broker_url, worker
            assert "Unrecoverable error" not in worker.log()


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    messages=st.lists(message(), min_size=10, max_size=10),
    raw=st.lists(raw_redis_entry(), max_size=4),
)
def test_no_generated_message_stops_the_worker(
    fuzzed_worker: tuple[str, ManagedProcess],
    engine: Any,
    messages: list[dict[str, Any]],
    raw: list[str],
) -> None:
    broker_url, worker = fuzzed_worker
    for item in messages:
        publish(broker_url, item)
    if broker_url.startswith("redis://"):
        push_raw(broker_url, raw)
    # A valid heartbeat of a workspace that exists still applies after all of them.
    ws = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO workspaces (id, name, status) VALUES (:id, :id, 'online')"),
            {"id": ws},
        )
    body, headers, _ = celery_message(
        HEARTBEAT_TASK, {"workspace_id": ws, "active_tasks": 5}, origin="t"
    )
    publish(broker_url, {"queue": HEARTBEAT_QUEUE, "body": body, "headers": headers})

    def applied() -> bool:
        with engine.connect() as conn:
            return (
                conn.execute(
                    text("SELECT active_tasks FROM workspaces WHERE id = :id"), {"id": ws}
                ).scalar()
                == 5
            )

    wait_until(applied, timeout=60)
    wait_until(lambda: queues_drained(broker_url), timeout=60)
    assert worker.alive, worker.tail()

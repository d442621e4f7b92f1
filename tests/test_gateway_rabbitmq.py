"""The gateway on RabbitMQ: publisher confirms, and the flows end to end.

A vhost of its own per test; the result backend stays the test run's Redis.
- no worker: concurrent heartbeats are each answered 200 once their batch is confirmed,
  and the broker holds them in `registry.heartbeat_batch` messages (fewer than calls);
- a real `celery worker` subprocess on the vhost: register through the gateway returns
  the token, and a heartbeat with it changes the workspace.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from gateway_helpers import CONNECT_CARD, bearer, running_gateway
from ingest_helpers import register_now, wait_until, workspace
from kombu import Connection
from liveness_helpers import private_rabbitmq_vhost
from sqlalchemy import Engine
from workerproc import WORKER_READY, celery_worker_argv, managed_process, process_env

pytestmark = pytest.mark.integration


@pytest.fixture
def vhost_url() -> Iterator[str]:
    with private_rabbitmq_vhost() as url:
        yield url


def waiting_messages(broker_url: str, queue: str) -> int:
    with Connection(broker_url) as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


def test_heartbeats_answered_once_confirmed(
    db: Engine, vhost_url: str, test_env: dict[str, str], tmp_path
):
    workspaces = [str(uuid.uuid4()) for _ in range(30)]
    tokens = {ws: register_now(ws, card={"name": "w"})["auth_token"] for ws in workspaces}
    answers: list[int] = []
    with running_gateway(test_env, tmp_path, CELERY_BROKER_URL=vhost_url) as gateway:
        start = threading.Barrier(len(workspaces))

        def beat(ws: str) -> None:
            with gateway.client() as http:
                start.wait()
                answers.append(
                    http.post(
                        "/registry/heartbeat",
                        json={"workspace_id": ws, "uptime_seconds": 5},
                        headers=bearer(tokens[ws]),
                    ).status_code
                )

        threads = [threading.Thread(target=beat, args=(ws,)) for ws in workspaces]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        batches = gateway.process.count(r"published a heartbeat batch of")
    assert answers == [200] * len(workspaces)
    # Every answered heartbeat is in the broker (confirmed), in fewer messages than calls.
    assert waiting_messages(vhost_url, "registry.heartbeats") == batches
    assert 1 <= batches < len(workspaces)


def test_register_and_heartbeat_through_a_worker(
    db: Engine, vhost_url: str, test_env: dict[str, str], tmp_path
):
    env = process_env(test_env, CELERY_BROKER_URL=vhost_url)
    with (
        managed_process(
            celery_worker_argv(pool="threads"),
            env=env,
            log_dir=tmp_path,
            ready=WORKER_READY,
            timeout=60,
            name="worker",
        ),
        running_gateway(test_env, tmp_path, CELERY_BROKER_URL=vhost_url) as gateway,
        gateway.client() as http,
    ):
        ws = str(uuid.uuid4())
        answer = http.post(
            "/registry/register",
            json={"id": ws, "agent_card": CONNECT_CARD, "delivery_mode": "poll"},
        )
        assert answer.status_code == 200, answer.text
        token = answer.json()["auth_token"]
        beat = http.post(
            "/registry/heartbeat",
            json={"workspace_id": ws, "runtime_state": "wedged", "uptime_seconds": 1},
            headers=bearer(token),
        )
        assert beat.status_code == 200
        wait_until(lambda: workspace(db, ws).status == "degraded", timeout=20)

"""The producer client (client/molecule_registry_client/__init__.py) against the real broker and worker."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import redis
from demo_helpers import closed_port, private_rabbitmq_vhost, reserved_redis_pair, wait_for
from sqlalchemy import text

from molecule_registry_client import (
    RegistryClient,
    RegistryError,
    RegistryRefused,
    RegistryTimeout,
    RegistryUnavailable,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def client(test_env):
    with RegistryClient(
        test_env["CELERY_BROKER_URL"], result_backend=test_env["CELERY_RESULT_BACKEND"]
    ) as registry_client:
        yield registry_client


def _row(db, workspace_id):
    with db.connect() as conn:
        return conn.execute(
            text("SELECT status, agent_card, active_tasks FROM workspaces WHERE id = :id"),
            {"id": workspace_id},
        ).first()


def test_import_needs_no_database_nor_registry_settings():
    code = (
        "import sys, molecule_registry_client\n"
        "loaded = [m for m in ('sqlalchemy', 'registry.config', 'registry.db', 'celery') "
        "if m in sys.modules]\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    # Celery is loaded only when a reply is awaited; a heartbeat-only agent never needs it.
    assert out.strip() == "[]"


def test_register_heartbeat_and_update_card_through_the_worker(db, worker, client):
    ws = uuid.uuid4()
    token = client.register(ws, {"name": "planner"}, delivery_mode="poll")
    assert len(token) >= 40
    assert _row(db, ws).status == "online"

    client.heartbeat(ws, token, error_rate=0.9, sample_error="model 503", active_tasks=2)
    assert wait_for(lambda: _row(db, ws).status == "degraded", timeout=15)
    assert _row(db, ws).active_tasks == 2

    result = client.update_card(ws, {"name": "planner", "version": 2}, auth_token=token)
    assert result["status"] != "rejected"
    assert _row(db, ws).agent_card == {"name": "planner", "version": 2}

    # A later registration sends the token it holds and gets it back as the one to use.
    assert client.register(ws, {"name": "planner"}, delivery_mode="poll", auth_token=token) == token


def test_refusals_raise_with_the_registry_error_text(db, worker, client):
    ws = uuid.uuid4()
    token = client.register(ws, {"name": "a"}, delivery_mode="poll")

    with pytest.raises(RegistryRefused) as unauthorized:
        client.register(ws, {"name": "hijacker"}, delivery_mode="poll")
    assert unauthorized.value.status == "unauthorized"
    assert "auth_token" in unauthorized.value.error

    with pytest.raises(RegistryRefused) as rejected:
        client.register(ws, {"name": "a"}, delivery_mode="carrier-pigeon", auth_token=token)
    assert rejected.value.status == "rejected"
    assert "delivery_mode" in str(rejected.value)

    with pytest.raises(RegistryRefused, match="unauthorized"):
        client.update_card(ws, {"name": "b"}, auth_token="not-the-token")
    assert _row(db, ws).agent_card == {"name": "a", "description": "a"}  # filled in (§12)


def test_messages_are_routed_by_name_as_json_to_the_right_queues():
    # A broker no worker consumes from, so the messages can be read back as sent.
    with reserved_redis_pair() as (_, broker_url):
        with RegistryClient(broker_url) as idle_client:
            ws = uuid.uuid4()
            heartbeat_id = idle_client.heartbeat(ws, "tok", active_tasks=1, sent_at=1_700_000_000)
            register_id = idle_client.send(
                "registry.register", {"id": str(ws), "agent_card": {}}, keep_result=True
            )
            started = time.monotonic()
            with pytest.raises(RegistryTimeout, match="'registry' queue"):
                idle_client.register(ws, {"name": "a"}, timeout=0.5)
            assert time.monotonic() - started < 3

        broker = redis.Redis.from_url(broker_url)
        (raw_heartbeat,) = broker.lrange("registry.heartbeats", 0, -1)
        registers = broker.lrange("registry", 0, -1)
    assert len(registers) == 2  # the explicit send and the register() that timed out

    message = json.loads(raw_heartbeat)
    headers = message["headers"]
    assert headers["task"] == "registry.heartbeat"
    assert headers["id"] == heartbeat_id
    assert headers["ignore_result"] is True
    assert "tok" not in headers["argsrepr"]  # the token never goes into a header
    assert message["content-type"] == "application/json"
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert kwargs == {}
    assert args == [
        {
            "workspace_id": str(ws),
            "auth_token": "tok",
            "error_rate": 0.0,
            "active_tasks": 1,
            "uptime_seconds": 0,
            "monthly_spend": 0,
            "runtime_state": "",
            "sent_at": 1_700_000_000,
        }
    ]  # fields left out (sample_error, runtime_metadata, …) are absent, not null
    register_ids = {json.loads(raw)["headers"]["id"] for raw in registers}
    assert register_id in register_ids
    assert all(json.loads(raw)["headers"]["ignore_result"] is False for raw in registers)


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_unreachable_broker_is_a_clear_error_in_bounded_time(scheme):
    port = closed_port()
    url = (
        f"redis://:s3cret@127.0.0.1:{port}/0"
        if scheme == "redis"
        else f"amqp://guest:s3cret@127.0.0.1:{port}//"
    )
    started = time.monotonic()
    with RegistryClient(url, result_backend="redis://127.0.0.1:6379/0") as down:
        with pytest.raises(RegistryUnavailable) as error:
            down.heartbeat(uuid.uuid4(), "tok")
        with pytest.raises(RegistryUnavailable):
            down.register(uuid.uuid4(), {"name": "a"})
    elapsed = time.monotonic() - started
    message = str(error.value)
    assert message.startswith("cannot reach the broker at ")
    assert f"127.0.0.1:{port}" in message
    assert "s3cret" not in message
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_unreachable_result_backend_is_a_clear_error():
    port = closed_port()
    with reserved_redis_pair() as (_, broker_url):
        backend = f"redis://:hunter2@127.0.0.1:{port}/0"
        with RegistryClient(broker_url, result_backend=backend) as half_down:
            started = time.monotonic()
            with pytest.raises(RegistryUnavailable) as error:
                half_down.register(uuid.uuid4(), {"name": "a"}, timeout=5)
    assert "result backend" in str(error.value)
    assert f"127.0.0.1:{port}" in str(error.value)
    assert "hunter2" not in str(error.value)
    assert time.monotonic() - started < 10


def test_from_env_and_the_reply_needs_a_result_backend():
    client = RegistryClient.from_env({"REDIS_URL": "redis://cache:6379/3"})
    assert client.broker_url == "redis://cache:6379/3"
    assert client.result_backend == "redis://cache:6379/3"
    client.close()

    amqp = RegistryClient("amqp://guest:guest@127.0.0.1:5672//")
    assert amqp.result_backend is None  # an AMQP broker cannot hold results
    with pytest.raises(RegistryError, match="result backend"):
        amqp.register(uuid.uuid4(), {"name": "a"})
    amqp.close()


def test_rabbitmq_broker_end_to_end(db, test_env, tmp_path):
    """AMQP broker, Redis result backend, a real `celery worker` on its own vhost."""
    backend = test_env["CELERY_RESULT_BACKEND"]
    with private_rabbitmq_vhost() as broker_url:
        env = {**os.environ, **test_env, "CELERY_BROKER_URL": broker_url, "METRICS_PORT": "0"}
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--pool", "threads",
             "-c", "2", "-Q", "registry,registry.heartbeats", "-n", f"amqp-{uuid.uuid4().hex[:6]}@%h",
             "--without-mingle", "--without-gossip", "-l", "WARNING"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            with RegistryClient(broker_url, result_backend=backend) as amqp_client:
                ws = uuid.uuid4()
                token = amqp_client.register(
                    ws, {"name": "rabbit"}, delivery_mode="poll", timeout=60
                )
                amqp_client.heartbeat(ws, token, runtime_state="wedged")
                assert wait_for(lambda: _row(db, ws).status == "degraded", timeout=20), (
                    tmp_path / "worker.log"
                ).read_text()[-2000:]
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
            log.close()

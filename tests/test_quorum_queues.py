"""RabbitMQ quorum queues, declared by configuration (BROKER_QUEUE_TYPE=quorum).

- the settings: quorum queues only on an AMQP broker, each bound to a topic exchange
  (Celery's native delayed delivery for retries), per-consumer QoS detected;
- a worker started with BROKER_QUEUE_TYPE=quorum declares quorum queues, and the
  SIGKILL test holds on them: a worker killed while holding messages loses none;
- the producer client declares the same type (`queue_type=`), and sends to a quorum
  queue; a producer declaring the other type gets RabbitMQ's refusal as a clear error.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from liveness_helpers import private_rabbitmq_vhost
from sqlalchemy import Engine
from test_redelivery import _kill_a_worker_holding_messages
from workerproc import WORKER_READY, celery_worker_argv, managed_process, process_env

import celeryconfig
from molecule_registry_client import RegistryClient, RegistryError
from molecule_registry_client.names import QUEUE_NAMES, queue_arguments
from registry.config import load

pytestmark = pytest.mark.integration


@pytest.fixture
def vhost_url() -> Iterator[str]:
    with private_rabbitmq_vhost() as url:
        yield url


def queue_types(broker_url: str) -> dict[str, str]:
    """{queue: type} of the vhost's registry queues, as RabbitMQ reports them."""
    vhost = broker_url.rsplit("/", 1)[1]
    tool = shutil.which("rabbitmqctl")
    assert tool
    done = subprocess.run(
        [tool, "-q", "list_queues", "-p", vhost, "name", "type", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = (line.split() for line in done.stdout.splitlines() if line.strip())
    return {name: kind for name, kind in rows if name in QUEUE_NAMES}


def test_quorum_is_chosen_by_configuration_and_only_for_amqp():
    amqp = "amqp://guest:guest@127.0.0.1:5672/x"
    assert load({"CELERY_BROKER_URL": amqp, "BROKER_QUEUE_TYPE": "quorum"}).quorum_queues
    assert load({"CELERY_BROKER_URL": amqp, "BROKER_QUEUE_TYPE": "QUORUM "}).quorum_queues
    assert not load({"CELERY_BROKER_URL": amqp}).quorum_queues  # classic by default
    # Quorum queues are RabbitMQ's: with a Redis broker the setting changes nothing.
    assert not load({"REDIS_URL": "redis://h/0", "BROKER_QUEUE_TYPE": "quorum"}).quorum_queues
    # A bad value falls back to the default, loudly, never a crash.
    bad = load({"CELERY_BROKER_URL": amqp, "BROKER_QUEUE_TYPE": "raft"})
    assert bad.broker_queue_type == "classic"


def test_quorum_queue_declarations():
    queues = celeryconfig.registry_queues(quorum=True)
    assert [q.name for q in queues] == list(QUEUE_NAMES)
    for queue in queues:
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        assert queue.durable
        assert queue.exchange.type == "topic"  # native delayed delivery needs it
        assert queue.routing_key == queue.name
    classic = celeryconfig.registry_queues(quorum=False)
    assert all(not q.queue_arguments for q in classic)
    assert celeryconfig.worker_detect_quorum_queues is True
    assert queue_arguments("classic") == {}
    with pytest.raises(ValueError, match="queue type 'raft'"):
        queue_arguments("raft")
    with pytest.raises(ValueError, match="queue type"):
        RegistryClient("amqp://guest:guest@127.0.0.1:5672//", queue_type="raft")


def test_worker_killed_while_holding_messages_loses_none_on_quorum_queues(
    db: Engine, vhost_url: str, test_env: dict[str, str], tmp_path: Path
) -> None:
    _kill_a_worker_holding_messages(db, vhost_url, test_env, tmp_path, queue_type="quorum")
    assert queue_types(vhost_url) == dict.fromkeys(QUEUE_NAMES, "quorum")


def test_client_sends_to_quorum_queues_and_a_worker_applies_it(
    db: Engine, vhost_url: str, test_env: dict[str, str], tmp_path: Path
) -> None:
    env = process_env(test_env, CELERY_BROKER_URL=vhost_url, BROKER_QUEUE_TYPE="quorum")
    with managed_process(
        celery_worker_argv(), env=env, ready=WORKER_READY, log_dir=tmp_path, name="quorum"
    ) as worker:
        assert queue_types(vhost_url) == dict.fromkeys(QUEUE_NAMES, "quorum")
        # A producer declaring classic queues is refused, clearly: the types must match.
        with (
            RegistryClient(vhost_url, publish_retries=0) as wrong,
            pytest.raises(RegistryError, match=r"refused it: .*x-queue-type"),
        ):
            wrong.heartbeat(uuid.uuid4(), "token")
        with RegistryClient(
            vhost_url, result_backend=test_env["CELERY_RESULT_BACKEND"], queue_type="quorum"
        ) as client:
            ws = uuid.uuid4()
            token = client.register(ws, {"name": "q"}, delivery_mode="poll", timeout=60)
            assert token
        assert "Failed to setup delayed delivery" not in worker.log()
        # The doctor sees quorum queues, and a worker consuming each.
        checks = _doctor(env)
        assert checks["broker"]["status"] == "ok", checks["broker"]
        assert "quorum queues, replicated" in checks["broker"]["detail"]
        assert checks["workers"]["status"] == "ok", checks["workers"]
        # Configured for classic queues against quorum ones: named, with the fix.
        checks = _doctor({**env, "BROKER_QUEUE_TYPE": "classic"})
        assert checks["broker"]["status"] == "FAIL"
        assert "x-queue-type" in checks["broker"]["detail"]
        assert "BROKER_QUEUE_TYPE" in checks["broker"]["fix"]


def _doctor(env: dict[str, str]) -> dict[str, dict[str, str]]:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("molecule-registry")), "doctor", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return {check["name"]: check for check in json.loads(done.stdout)}


def test_quorum_with_a_redis_broker_is_ignored_loudly(monkeypatch):
    from registry.config import reload_settings
    from workers.startup import ignored_settings

    monkeypatch.setenv("BROKER_QUEUE_TYPE", "quorum")
    try:
        reload_settings()
        (line,) = ignored_settings()
        assert "BROKER_QUEUE_TYPE=quorum is ignored" in line
        assert "redis://" in line
    finally:
        monkeypatch.delenv("BROKER_QUEUE_TYPE")
        reload_settings()
    assert ignored_settings() == []

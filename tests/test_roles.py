"""Roles on the real Redis and RabbitMQ (`scripts/roles.sh`, docs/SECURITY.md "Roles").

Each run creates its own users (a random prefix) and deletes them at the end; the
`default` Redis user and the `/` RabbitMQ vhost are never changed. A producer's
credentials publish messages and nothing else: no other caller's answer (token), no
liveness key, no event stream, no queued message of another agent.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from celery import Celery
from ingest_helpers import new_id, stream_events, wait_until, workspace
from kombu import Connection, Exchange, Queue
from liveness_helpers import LISTENER_READY, listener_argv
from sqlalchemy import text
from workerproc import (
    BEAT_READY,
    WORKER_READY,
    celery_beat_argv,
    celery_worker_argv,
    managed_process,
    process_env,
)

from molecule_registry_client import RegistryClient, RegistryRefused

pytestmark = pytest.mark.integration

ROLES = Path(__file__).resolve().parent.parent / "scripts" / "roles.sh"
ROLE_NAMES = ("producer", "broker", "results", "data", "subscriber")
CALLERS = {"gw": "gw1", "other": "other1"}  # caller name -> its task id prefix


def _roles(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(ROLES), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class RedisRoles:
    prefix: str
    passwords: dict[str, str]
    host: str
    data_db: int
    broker_db: int

    def url(self, role: str, db: int | None = None) -> str:
        user = f"{self.prefix}-{'caller-' if role in CALLERS else ''}{role}"
        db = self.broker_db if db is None else db
        return f"redis://{user}:{self.passwords[role]}@{self.host}/{db}"

    def client(self, role: str, db: int | None = None) -> redis.Redis:
        return redis.Redis.from_url(self.url(role, db), decode_responses=True)


@pytest.fixture(scope="module")
def redis_roles(test_env: dict[str, str]) -> Iterator[RedisRoles]:
    data, broker = urlsplit(test_env["REDIS_URL"]), urlsplit(test_env["CELERY_BROKER_URL"])
    admin_url = f"redis://{data.netloc}"
    roles = RedisRoles(
        prefix=f"test{secrets.token_hex(4)}",
        passwords={name: secrets.token_hex(16) for name in (*ROLE_NAMES, *CALLERS)},
        host=data.netloc,
        data_db=int(data.path.strip("/")),
        broker_db=int(broker.path.strip("/")),
    )
    env = {"ROLES_PREFIX": roles.prefix, "REDIS_ADMIN_URL": admin_url}
    env |= {f"{name.upper()}_PASSWORD": roles.passwords[name] for name in ROLE_NAMES}
    admin = redis.Redis.from_url(admin_url, decode_responses=True)
    try:
        out = _roles("redis", "apply", env=env)
        assert roles.passwords["producer"] in out  # the URLs to hand out
        for name, prefix in CALLERS.items():
            _roles(
                "redis",
                "caller",
                name,
                prefix,
                env={**env, "CALLER_PASSWORD": roles.passwords[name]},
            )
        yield roles
    finally:
        _roles("redis", "delete", *CALLERS, env=env)
        left = [u for u in admin.acl_users() if u.startswith(roles.prefix)]
        assert not left, left


def _refused(client: redis.Redis, *command: Any) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command(*command)


def _state(client: redis.Redis, keys: list[str]) -> dict[str, Any]:
    """Value, TTL and, for the stream, length and last id of each key."""
    state: dict[str, Any] = {}
    for key in keys:
        kind = client.type(key)
        if kind == "stream":
            state[key] = (client.xlen(key), client.xrevrange(key, count=1))
        elif kind == "list":
            state[key] = client.lrange(key, 0, -1)
        else:
            state[key] = (client.get(key), client.ttl(key) > 100)
    return state


def test_a_producer_can_publish_and_do_nothing_else(db, redis_roles: RedisRoles) -> None:
    admin_data = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    admin_broker = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"], decode_responses=True)
    ws, task_id = new_id(), str(uuid.uuid4())
    meta = f"celery-task-meta-{task_id}"
    secret = json.dumps({"status": "SUCCESS", "result": {"auth_token": "t" * 43}})
    admin_broker.set(meta, secret, ex=300)
    admin_data.set(f"ws:{ws}", "online", ex=180)
    admin_data.xadd("events:stream", {"data": "{}"})
    watched_data = [f"ws:{ws}", "events:stream"]
    # (No message is seeded into a queue: a worker of another test may consume it. The
    # refusals below are of the commands, whatever a queue holds.)
    watched_broker = [meta]
    before = (_state(admin_data, watched_data), _state(admin_broker, watched_broker))

    # The default deployment has one Redis: try in both databases.
    for db_number in (redis_roles.broker_db, redis_roles.data_db):
        producer = redis_roles.client("producer", db_number)
        # Another caller's answer (its token), by name or by listing.
        _refused(producer, "GET", meta)
        _refused(producer, "MGET", meta)
        _refused(producer, "KEYS", "celery-task-meta-*")
        _refused(producer, "SCAN", "0", "MATCH", "celery-task-meta-*")
        _refused(producer, "SUBSCRIBE", meta)
        # Liveness keys: no write of any kind, so no 1-second TTL.
        _refused(producer, "SET", f"ws:{ws}", "online", "EX", "1")
        _refused(producer, "EXPIRE", f"ws:{ws}", "1")
        _refused(producer, "DEL", f"ws:{ws}")
        _refused(producer, "LPUSH", f"ws:{ws}", "x")  # a granted command on another key
        _refused(producer, "SET", "registry:self_preservation:last", "x")
        # The event stream and channel.
        _refused(producer, "XTRIM", "events:stream", "MAXLEN", "0")
        _refused(producer, "XADD", "events:stream", "*", "data", "{}")
        _refused(producer, "XRANGE", "events:stream", "-", "+")
        _refused(producer, "PUBLISH", "events:broadcast", "{}")
        # Other agents' waiting messages (a heartbeat carries its token), the
        # worker's unacknowledged ones, the sweeps queue.
        _refused(producer, "LRANGE", "registry.heartbeats", "0", "-1")
        _refused(producer, "RPOP", "registry.heartbeats")
        _refused(producer, "BRPOP", "registry.heartbeats", "1")
        _refused(producer, "DEL", "registry.heartbeats")
        _refused(producer, "HGETALL", "unacked")
        _refused(producer, "LPUSH", "registry.sweeps", "x")
        _refused(producer, "FLUSHDB")
        _refused(producer, "CONFIG", "SET", "notify-keyspace-events", "")
    assert (_state(admin_data, watched_data), _state(admin_broker, watched_broker)) == before
    admin_broker.delete(meta)


@pytest.fixture
def role_worker(redis_roles: RedisRoles, test_env: dict[str, str], tmp_path: Path):
    """A real worker that holds only the broker, results and data roles."""
    env = process_env(
        test_env,
        CELERY_BROKER_URL=redis_roles.url("broker"),
        CELERY_RESULT_BACKEND=redis_roles.url("results"),
        REDIS_URL=redis_roles.url("data", redis_roles.data_db),
    )
    with managed_process(
        celery_worker_argv(pool="threads"), env=env, ready=WORKER_READY, log_dir=tmp_path
    ) as proc:
        yield proc


@pytest.fixture
def role_beat(redis_roles: RedisRoles, test_env: dict[str, str], tmp_path: Path):
    """Celery beat with the broker and data roles."""
    env = process_env(
        test_env,
        CELERY_BROKER_URL=redis_roles.url("broker"),
        CELERY_RESULT_BACKEND=redis_roles.url("results"),
        REDIS_URL=redis_roles.url("data", redis_roles.data_db),
    )
    argv = celery_beat_argv(tmp_path / "beat-schedule")
    with managed_process(argv, env=env, ready=BEAT_READY, log_dir=tmp_path, name="beat") as proc:
        yield proc


def test_the_roles_run_the_registry_and_answers_reach_their_caller_only(
    db, redis_roles: RedisRoles, role_worker, role_beat, tmp_path: Path
) -> None:
    log_dir = tmp_path
    ws, other_ws = new_id(), new_id()
    with RegistryClient(redis_roles.url("gw"), task_id_prefix=CALLERS["gw"]) as gw:
        token = gw.register(ws, {"name": "planner"}, delivery_mode="poll")
    # A workspace with a live token: another registration without it is refused,
    # and the refusal (an answer too) reaches this caller.
    with RegistryClient(redis_roles.url("other"), task_id_prefix=CALLERS["other"]) as other:
        with pytest.raises(RegistryRefused):
            other.register(ws, {"name": "hijack"}, delivery_mode="poll")
        other_token = other.register(other_ws, {"name": "second"}, delivery_mode="poll")
    assert token and other_token

    # Each caller reads its own answers and no one else's; a producer none.
    admin_broker = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"], decode_responses=True)
    answers = {
        prefix: next(admin_broker.scan_iter(match=f"celery-task-meta-{prefix}-*"))
        for prefix in CALLERS.values()
    }
    gw_client, other_client = redis_roles.client("gw"), redis_roles.client("other")
    assert token in gw_client.get(answers["gw1"])
    _refused(gw_client, "GET", answers["other1"])
    _refused(other_client, "GET", answers["gw1"])
    _refused(redis_roles.client("producer"), "GET", answers["gw1"])
    _refused(gw_client, "KEYS", "celery-task-meta-*")
    _refused(other_client, "DEL", answers["gw1"])
    _refused(gw_client, "SET", answers["gw1"], "forged")
    assert gw_client.delete(answers["gw1"]) == 1  # read once, then gone

    # A heartbeat with a producer's credentials reaches the worker, which writes the
    # liveness key and the event stream with the data role.
    with RegistryClient(redis_roles.url("producer")) as producer:
        producer.heartbeat(ws, token, current_task="roles", active_tasks=1)
    wait_until(lambda: workspace(db, ws).current_task == "roles")
    admin_data = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    assert admin_data.get(f"ws:{ws}") == "online"
    assert {e["event"] for e in stream_events(admin_data)} >= {"WORKSPACE_ONLINE"}

    # The liveness listener with the data role: an expired key marks the workspace.
    listener_env = process_env(os.environ, REDIS_URL=redis_roles.url("data", redis_roles.data_db))
    with managed_process(
        listener_argv(), env=listener_env, ready=LISTENER_READY, log_dir=log_dir, name="ln"
    ):
        with db.begin() as conn:  # a heartbeat fresher than half the TTL would save it
            conn.execute(
                text(
                    "UPDATE workspaces SET last_heartbeat_at = now() - interval '1 hour'"
                    " WHERE id = :id"
                ),
                {"id": ws},
            )
        admin_data.pexpire(f"ws:{ws}", 1)
        wait_until(lambda: workspace(db, ws).status != "online", timeout=20)

    # Beat's sweeps ran on the worker (each leaves its lifesign with the data role).
    wait_until(lambda: admin_data.hgetall("registry:sweeps:last-run"), timeout=60)
    # doctor with the data and broker roles: every check it can make answers.
    doctor_env = process_env(
        os.environ,
        REDIS_URL=redis_roles.url("data", redis_roles.data_db),
        CELERY_BROKER_URL=redis_roles.url("broker"),
        CELERY_RESULT_BACKEND=redis_roles.url("results"),
    )
    done = subprocess.run(
        [str(Path(sys.executable).parent / "molecule-registry"), "doctor", "--json"],
        env=doctor_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    for name in ("redis", "notifications", "workers", "heartbeat-lag", "outbox", "beat"):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["broker"]["status"] in ("ok", "warn"), checks["broker"]  # warn: AOF off

    # A subscriber reads the stream and the channel, and can change neither.
    subscriber = redis_roles.client("subscriber", redis_roles.data_db)
    assert subscriber.xrange("events:stream")
    pubsub = subscriber.pubsub()
    pubsub.subscribe("events:broadcast")
    pubsub.close()
    _refused(subscriber, "XTRIM", "events:stream", "MAXLEN", "0")
    _refused(subscriber, "XADD", "events:stream", "*", "data", "{}")
    _refused(subscriber, "PUBLISH", "events:broadcast", "{}")
    _refused(subscriber, "GET", f"ws:{ws}")
    _refused(subscriber, "SET", f"ws:{ws}", "online")

    # A plain Celery producer (the README's example) with the same credentials.
    app = Celery(broker=redis_roles.url("producer"), set_as_current=False)
    try:
        app.send_task(
            "registry.heartbeat",
            args=[{"workspace_id": ws, "auth_token": token, "current_task": "celery"}],
            queue="registry.heartbeats",
            argsrepr="(heartbeat)",
        )
    finally:
        app.close()
    wait_until(lambda: workspace(db, ws).current_task == "celery")


def test_a_caller_prefix_must_be_plain() -> None:
    for bad in ("a-b", "x*", "é", "p" * 65):
        with pytest.raises(ValueError, match="task_id_prefix"):
            RegistryClient("redis://127.0.0.1:6379/0", task_id_prefix=bad)
    done = subprocess.run(
        [str(ROLES), "redis", "caller", "x", "a-*"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "PREFIX" in done.stderr


# --- RabbitMQ ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rabbit_roles() -> Iterator[dict[str, str]]:
    # scripts/test installs and starts RabbitMQ and runs as root on CI: a missing
    # rabbitmqctl is a broken set-up to report, not a reason to skip.
    assert shutil.which("rabbitmqctl"), "rabbitmqctl is not installed (scripts/services.sh)"
    assert os.geteuid() == 0, "creating RabbitMQ users needs root (rabbitmqctl)"
    suffix = secrets.token_hex(4)
    env = {
        "ROLES_PREFIX": f"test{suffix}",
        "RABBITMQ_VHOST": f"registry-test-{suffix}",
        "PRODUCER_PASSWORD": secrets.token_hex(16),
        "WORKER_PASSWORD": secrets.token_hex(16),
        "RABBITMQ_DELETE_VHOST": "1",
    }
    try:
        out = _roles("rabbitmq", "apply", env=env)
        urls = dict(
            line.split("CELERY_BROKER_URL=") for line in out.splitlines() if "amqp://" in line
        )
        yield {key.split()[0]: value for key, value in urls.items()}
    finally:
        _roles("rabbitmq", "delete", env=env)


def _refused_amqp(url: str, action: Any) -> None:
    with Connection(url, connect_timeout=5) as conn, conn.channel() as channel:
        with pytest.raises(conn.channel_errors) as caught:
            action(channel)
        assert "ACCESS_REFUSED" in str(caught.value), caught.value


def _publish_to_amq_fanout(channel: Any) -> None:
    channel.basic_publish(channel.prepare_message(b"x"), "amq.fanout", "")
    # A refused publish closes the channel asynchronously: the next call reports it.
    channel.queue_declare("registry.heartbeats", passive=True)


def test_a_rabbitmq_producer_can_publish_and_read_nothing(rabbit_roles: dict[str, str]) -> None:
    producer, worker = rabbit_roles["producer"], rabbit_roles["workers"]
    ws = new_id()
    with RegistryClient(producer) as client:
        client.heartbeat(ws, "t" * 43, current_task="rabbit")

    # Reading a queue (another agent's heartbeat and token), declaring or publishing
    # anywhere else: refused.
    _refused_amqp(producer, lambda ch: ch.basic_get("registry.heartbeats"))
    _refused_amqp(producer, lambda ch: ch.basic_get("registry"))
    _refused_amqp(producer, lambda ch: Queue("registry.sweeps", channel=ch).declare())
    _refused_amqp(producer, lambda ch: Queue("spy", channel=ch).declare())
    _refused_amqp(producer, lambda ch: Exchange("spy", "fanout", channel=ch).declare())
    _refused_amqp(producer, _publish_to_amq_fanout)

    # The message is there, for the workers' credentials.
    with Connection(worker, connect_timeout=5) as conn, conn.channel() as channel:
        message = channel.basic_get("registry.heartbeats", no_ack=True)
    assert message is not None
    assert message.headers["task"] == "registry.heartbeat"
    assert ws in str(message.body)

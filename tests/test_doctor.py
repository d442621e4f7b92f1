"""`molecule-registry doctor` on a real stack, healthy and then broken one piece at a time.

The stack is the test run's PostgreSQL database, a Redis server of our own (AOF on, so
the broker is persistent, and so its notification setting can be switched off without
touching anybody else), a worker consuming every queue, and — per test — a beat and a
liveness listener. Sweep intervals are 2 s so that beat shows life quickly; time is
moved by writing the sweeps' last-run notes into the past.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from liveness_helpers import LISTENER_READY, PrivateRedis, listener_argv, wait_until
from sqlalchemy import Engine, text
from test_unmigrated import _scratch_database
from workerproc import (
    BEAT_READY,
    PROJECT_ROOT,
    WORKER_READY,
    celery_beat_argv,
    celery_worker_argv,
    managed_process,
    process_env,
)

from registry.lifesigns import LISTENER_PREFIX, SWEEP_RUNS_KEY

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("molecule-registry"))
CHECKS = [
    "postgresql",
    "redis",
    "notifications",
    "broker",
    "workers",
    "beat",
    "listener",
    "heartbeat-lag",
    "self-preservation",
    "outbox",
]
INTERVALS = {
    name: "2"
    for name in (
        "BACKSTOP_SWEEP_INTERVAL",
        "HEALTH_SWEEP_INTERVAL",
        "PROVISION_SWEEP_INTERVAL",
        "HIBERNATION_SWEEP_INTERVAL",
        "ORPHAN_SWEEP_INTERVAL",
        "RELAY_EVENTS_INTERVAL",
    )
}


class Stack:
    def __init__(self, redis: PrivateRedis, env: dict[str, str], log_dir: Path) -> None:
        self.redis = redis
        self.env = env
        self.log_dir = log_dir

    def doctor(
        self, *args: str, human: bool = False, **overrides: str
    ) -> tuple[int, dict[str, dict[str, Any]], str]:
        """(exit status, {check name: check}, the human output if asked) of a doctor run."""
        env = {**self.env, **overrides}
        as_json = _run([CLI, "doctor", "--timeout", "1.5", "--json", *args], env)
        checks = {c["name"]: c for c in json.loads(as_json.stdout)}
        assert list(checks) == CHECKS
        if not human:
            return as_json.returncode, checks, as_json.stdout
        done = _run([CLI, "doctor", "--timeout", "1.5", *args], env)
        assert done.returncode == as_json.returncode, (done.stdout, as_json.stdout)
        lines = done.stdout.splitlines()
        assert len(lines) == len(CHECKS), done.stdout  # one line per check
        for line, name in zip(lines, CHECKS, strict=True):
            assert line.split()[1] == name
        return done.returncode, checks, done.stdout


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture(scope="module")
def stack(test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("doctor")
    with PrivateRedis(workdir, "--appendonly", "yes") as redis_server:
        env = process_env(
            test_env,
            REDIS_URL=redis_server.url(0),
            CELERY_BROKER_URL=redis_server.url(1),
            CELERY_RESULT_BACKEND=redis_server.url(1),
            **INTERVALS,
        )
        with managed_process(
            celery_worker_argv(pool="threads", concurrency=2),
            env=env,
            ready=WORKER_READY,
            log_dir=workdir,
            name="worker",
        ):
            yield Stack(redis_server, env, workdir)


@pytest.fixture
def listener(stack: Stack) -> Iterator[None]:
    with managed_process(
        listener_argv(), env=stack.env, ready=LISTENER_READY, log_dir=stack.log_dir, name="ln"
    ) as process:
        wait_until(lambda: _listener_keys(stack), what="the listener's sign of life")
        yield
        process.stop()  # SIGTERM: a clean stop removes its key at once


@pytest.fixture
def beat(stack: Stack) -> Iterator[None]:
    schedule = stack.log_dir / "beat-schedule"
    with managed_process(
        celery_beat_argv(schedule), env=stack.env, ready=BEAT_READY, log_dir=stack.log_dir
    ) as process:
        client = stack.redis.client(0)
        client.delete(SWEEP_RUNS_KEY)
        wait_until(lambda: client.hlen(SWEEP_RUNS_KEY) > 0, timeout=20, what="a sweep run")
        yield
        process.stop()


def _listener_keys(stack: Stack) -> list[str]:
    return list(stack.redis.client(0).scan_iter(match=LISTENER_PREFIX + "*"))


def _statuses(checks: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: check["status"] for name, check in checks.items()}


def test_healthy_stack_exits_zero(db: Engine, stack: Stack, listener: None, beat: None) -> None:
    status, checks, output = stack.doctor(human=True)
    assert status == 0, output
    assert set(_statuses(checks).values()) == {"ok"}, output
    assert "schema at head" in checks["postgresql"]["detail"]
    assert "AOF on" in checks["broker"]["detail"]
    assert "registry.heartbeats: 1" in checks["workers"]["detail"]
    assert "1 alive" in checks["listener"]["detail"]
    # --strict: no warning either.
    assert stack.doctor("--strict")[0] == 0


def test_notifications_off(db: Engine, stack: Stack, listener: None, beat: None) -> None:
    client = stack.redis.client(0)
    before = client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    client.config_set("notify-keyspace-events", "")
    try:
        status, checks, output = stack.doctor(human=True)
    finally:
        client.config_set("notify-keyspace-events", before)
    assert status == 1
    assert _failing(checks) == {"notifications"}, output
    assert "notify-keyspace-events Ex" in checks["notifications"]["fix"]
    assert "notifications" in output.splitlines()[2] and "fix:" in output.splitlines()[2]


def test_no_listener(db: Engine, stack: Stack, beat: None) -> None:
    assert _listener_keys(stack) == []  # the last listener stopped cleanly
    status, checks, output = stack.doctor()
    assert status == 1
    assert _failing(checks) == {"listener"}, output
    assert "python -m workers.liveness" in checks["listener"]["fix"]


def test_no_beat(db: Engine, stack: Stack, listener: None) -> None:
    # Beat stopped with the last test; its last notes are written an hour into the past.
    client = stack.redis.client(0)
    seconds, _ = client.time()
    for task in client.hkeys(SWEEP_RUNS_KEY) or ["registry.sweep_health"]:
        client.hset(SWEEP_RUNS_KEY, task, seconds - 3600)
    status, checks, output = stack.doctor()
    assert status == 1
    assert _failing(checks) == {"beat"}, output
    assert re.search(r"no sweep has run for 36\d\d s", checks["beat"]["detail"])
    client.delete(SWEEP_RUNS_KEY)
    assert "no sweep has ever run" in stack.doctor()[1]["beat"]["detail"]


def test_unpublished_outbox_event(db: Engine, stack: Stack, listener: None) -> None:
    # No beat, so no relay: the event stays unpublished.
    client = stack.redis.client(0)
    seconds, _ = client.time()
    client.hset(SWEEP_RUNS_KEY, "registry.sweep_health", seconds)  # beat looks alive
    with db.begin() as conn:
        conn.execute(
            text(
                """
                WITH ev AS (
                    INSERT INTO structure_events (event_type, payload, created_at)
                    VALUES ('WORKSPACE_OFFLINE', '{}', now() - interval '5 minutes')
                    RETURNING id, created_at
                )
                INSERT INTO event_outbox (event_id, created_at) SELECT id, created_at FROM ev
                """
            )
        )
    status, checks, output = stack.doctor()
    assert status == 1
    assert _failing(checks) == {"outbox"}, output
    assert "1 recorded event(s) unpublished" in checks["outbox"]["detail"]
    assert "registry.relay_events" in checks["outbox"]["fix"]


def test_self_preservation_active(db: Engine, stack: Stack, listener: None) -> None:
    client = stack.redis.client(0)
    seconds, _ = client.time()
    client.hset(SWEEP_RUNS_KEY, "registry.sweep_health", seconds)
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE registry_self_preservation SET active = true, reason = 'mass_expiry', "
                "since = now() - interval '2 minutes' WHERE id = 1"
            )
        )
    status, checks, output = stack.doctor()
    assert status == 1
    assert _failing(checks) == {"self-preservation"}, output
    assert re.search(
        r"ACTIVE for 1[2-9]\d s \(mass_expiry\)", checks["self-preservation"]["detail"]
    )


def test_unmigrated_schema(stack: Stack, test_env: dict[str, str], listener: None) -> None:
    client = stack.redis.client(0)
    seconds, _ = client.time()
    client.hset(SWEEP_RUNS_KEY, "registry.sweep_health", seconds)
    for url in _scratch_database(test_env, None):
        status, checks, output = stack.doctor(DATABASE_URL=url)
        assert status == 1
        assert _failing(checks) == {"postgresql"}, output
        assert "no registry schema" in checks["postgresql"]["detail"]
        assert checks["postgresql"]["fix"] == "run `molecule-registry migrate`"
        for name in ("heartbeat-lag", "self-preservation", "outbox"):
            assert checks[name]["status"] == "skip"


def test_no_worker_and_unreachable_stores(stack: Stack, test_env: dict[str, str]) -> None:
    from liveness_helpers import free_port

    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    status, checks, output = stack.doctor(
        DATABASE_URL=f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/x",
        REDIS_URL=nowhere,
        CELERY_BROKER_URL=nowhere,
    )
    assert status == 1
    for name in ("postgresql", "redis", "broker"):
        assert checks[name]["status"] == "FAIL", output
        assert "cannot reach" in checks[name]["detail"]
    for name in ("notifications", "workers", "beat", "listener", "heartbeat-lag", "outbox"):
        assert checks[name]["status"] == "skip", output


def _failing(checks: dict[str, dict[str, Any]]) -> set[str]:
    return {name for name, check in checks.items() if check["status"] not in ("ok", "skip")}

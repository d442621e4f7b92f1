"""Several runners at once (CONTRACT §1): no duplicate status change, no duplicate event.

Two beats send each sweep twice; two listeners receive each notification twice. Each
change is a conditional UPDATE over `FOR UPDATE SKIP LOCKED` candidates, and the
self-preservation start/end is a conditional UPDATE of one row, so every change and
event happens once. Threads released by a barrier stand in for concurrent runs; the
last test runs two real `celery beat` processes.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from fakes import FakeContainers
from liveness_helpers import (
    PrivateRedis,
    add_fleet,
    age_heartbeats,
    fresh_liveness_state,
    self_preservation_events,
    unreachable_events,
    wait_until,
)
from maintenance_helpers import run_concurrently
from workerproc import (
    WORKER_READY,
    celery_beat_argv,
    celery_worker_argv,
    managed_process,
    process_env,
)

from molecule_registry_client.names import SWEEP_QUEUE
from registry.config import get_settings
from registry.liveness.keys import liveness_key
from registry.liveness.selfpreservation import evaluate_now
from registry.sweeps.backstop import sweep_backstop
from registry.sweeps.health import sweep_health
from workers.liveness import LivenessListener

pytestmark = pytest.mark.integration


@pytest.fixture
def liveness_db(db):
    yield from fresh_liveness_state(db)


def _once_each(engine, expected: list) -> None:
    per_workspace = Counter(ws for _, ws, _ in unreachable_events(engine))
    assert sorted(per_workspace) == sorted(expected)
    assert set(per_workspace.values()) == {1}


def test_concurrent_backstops_change_each_row_once(liveness_db):
    stale = add_fleet(liveness_db, 150, heartbeat_age="10 minutes")
    # 150 of 150 stale would be a mass event; keep the fleet share below the threshold.
    add_fleet(liveness_db, 200, heartbeat_age="5 seconds")
    results = run_concurrently(4, lambda: sweep_backstop(get_settings(), batch_size=1000))
    assert sum(r["changed"] for r in results) == 150
    _once_each(liveness_db, stale)


def test_concurrent_health_sweeps_change_each_row_once(liveness_db):
    gone = add_fleet(liveness_db, 40)
    quiet = add_fleet(liveness_db, 10, runtime="external", heartbeat_age="5 minutes")
    checker = FakeContainers()  # nothing runs
    results = run_concurrently(3, lambda: sweep_health(get_settings(), checker))
    assert sum(r["changed"] for r in results) == 50
    _once_each(liveness_db, gone + quiet)


def test_concurrent_listeners_change_each_row_once(liveness_db):
    expired = add_fleet(liveness_db, 30, heartbeat_age="10 minutes")
    add_fleet(liveness_db, 40, heartbeat_age="5 seconds")  # the healthy majority
    keys = [liveness_key(ws) for ws in expired]
    changed = run_concurrently(3, lambda: LivenessListener(get_settings()).handle(keys))
    assert sum(changed) == 30
    _once_each(liveness_db, expired)


def test_concurrent_evaluations_record_one_start_and_one_end(liveness_db):
    fleet = add_fleet(liveness_db, 24, heartbeat_age="10 minutes")
    assert all(a.paused for a in run_concurrently(4, lambda: evaluate_now(get_settings())))
    age_heartbeats(liveness_db, fleet, "1 second")
    assert not any(a.paused for a in run_concurrently(4, lambda: evaluate_now(get_settings())))
    assert [e["active"] for e in self_preservation_events(liveness_db)] == [True, False]


def _beat_argv(workdir: Path, name: str) -> list[str]:
    return celery_beat_argv(
        workdir / f"{name}-schedule", extra=["--pidfile", str(workdir / f"{name}.pid")]
    )


def test_two_beats_at_once_change_and_record_once(liveness_db, test_env, tmp_path: Path):
    stale = add_fleet(liveness_db, 12, heartbeat_age="10 minutes")
    quiet = add_fleet(liveness_db, 3, runtime="external", heartbeat_age="5 minutes")
    add_fleet(liveness_db, 20, heartbeat_age="5 seconds")
    with PrivateRedis(tmp_path) as broker:  # a broker no other worker consumes
        env = process_env(
            test_env,
            CELERY_BROKER_URL=broker.url(0),
            CELERY_RESULT_BACKEND=broker.url(1),
            METRICS_PORT="0",
            BACKSTOP_SWEEP_INTERVAL="1",
            HEALTH_SWEEP_INTERVAL="1",
        )
        with managed_process(
            celery_worker_argv([SWEEP_QUEUE], pool="threads", concurrency=4),
            env=env,
            log_dir=tmp_path,
            ready=WORKER_READY,
            name="sweeps-worker",
        ):
            beats = [
                managed_process(
                    _beat_argv(tmp_path, name),
                    env=env,
                    log_dir=tmp_path,
                    ready=r"beat: Starting",
                    name=name,
                )
                for name in ("beat-a", "beat-b")
            ]
            with beats[0] as first, beats[1] as second:
                wait_until(
                    lambda: len(unreachable_events(liveness_db)) >= 15,
                    timeout=30,
                    what="the stale workspaces marked",
                )
                for beat in (first, second):  # both beats really did send the sweeps
                    beat.wait_for_log(r"Sending due task sweep-backstop", count=2, timeout=10)
                    beat.wait_for_log(r"Sending due task sweep-health", count=2, timeout=10)
                time.sleep(1.5)  # more doubled ticks: nothing changes twice
    _once_each(liveness_db, stale + quiet)

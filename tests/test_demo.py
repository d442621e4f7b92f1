"""The one-command demo, run through its real command, and its building blocks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from demo_helpers import (
    closed_port,
    free_port,
    processes_matching,
    reserved_redis_pair,
    scrape,
    scratch_database,
)

from molecule_registry_demo.simulator import (
    DEFAULT_MIX,
    SHOWCASE_STATUS,
    Behaviour,
    allocate,
    parse_mix,
)
from molecule_registry_demo.simulator.fake_engine import FakeDockerEngine
from registry.sweeps.containers import DockerContainers, container_name

CLI = str(Path(sys.executable).parent / "molecule-registry")
# Hibernation's unit is the minute: idle agents hibernate about 62-66 s into the run.
DEMO_SECONDS = 75


def test_parse_mix_and_allocate():
    assert parse_mix("healthy=3, stuck=1") == {b: 0.0 for b in Behaviour} | {
        Behaviour.HEALTHY: 3.0,
        Behaviour.STUCK: 1.0,
    }
    for bad, message in [
        ("zombie=1", "unknown behaviour 'zombie'"),
        ("healthy=-1", "non-negative"),
        ("healthy", "non-negative"),
        ("healthy=0", "no agent any behaviour"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_mix(bad)

    small = allocate(12, DEFAULT_MIX)
    assert sum(small.values()) == 12
    assert all(small[b] >= 1 for b in Behaviour)  # every status shows even in a small fleet
    big = allocate(1000, DEFAULT_MIX)
    assert sum(big.values()) == 1000
    assert big[Behaviour.HEALTHY] == 550
    assert allocate(2, DEFAULT_MIX)[Behaviour.HEALTHY] >= 1
    assert sum(allocate(2, DEFAULT_MIX).values()) == 2


def test_simulated_engine_answers_the_real_docker_client():
    ws = uuid.uuid4()
    with FakeDockerEngine(simulate_workspaces=True) as engine:
        engine.start()
        with DockerContainers(engine.base_url, timeout=5) as docker:
            assert docker.is_running(ws) is True
            docker.stop(ws)
            assert docker.is_running(ws) is False
            assert engine.is_stopped(ws)
            docker.stop(ws)  # already stopped: 304, not an error
            other = uuid.uuid4()
            engine.crash(other)
            assert docker.is_running(other) is False
            assert docker.list_managed() == []
            docker.remove_volume(container_name(ws).removeprefix("ws-"))
    assert engine.stops_requested == 2


def _run_cli(args, env, timeout=60):
    return subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize(
    ("variable", "url", "service"),
    [
        ("REDIS_URL", "redis://:pw@127.0.0.1:{port}/0", "Redis"),
        ("DATABASE_URL", "postgresql+psycopg2://postgres:pw@127.0.0.1:{port}/demo", "PostgreSQL"),
    ],
)
def test_demo_refuses_to_start_without_its_services(test_env, tmp_path, variable, url, service):
    port = closed_port()
    env = dict(test_env, **{variable: url.format(port=port)})
    started = time.monotonic()
    result = _run_cli(["demo", "--fleet", "3", "--log-dir", str(tmp_path)], env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: cannot reach {service} at ")
    assert f"127.0.0.1:{port}" in lines[0]
    assert ":pw@" not in lines[0]
    assert time.monotonic() - started < 20
    assert not (tmp_path / "worker.log").exists()  # nothing was started


def test_demo_rejects_a_bad_mix(test_env):
    result = _run_cli(["demo", "--mix", "healthy=5,zombie=1"], dict(test_env))
    assert result.returncode == 2
    assert "Invalid value for '--mix': unknown behaviour 'zombie'" in result.stderr


@pytest.mark.integration
def test_demo_shows_every_status_and_leaves_no_process(test_env, tmp_path):
    port = free_port()
    summary_path = tmp_path / "summary.json"
    output_path = tmp_path / "output.txt"
    log_dir = tmp_path / "logs"
    with (
        reserved_redis_pair() as (data_url, broker_url),
        scratch_database(test_env["DATABASE_URL"], "demo") as database_url,
    ):
        env = dict(
            test_env,
            DATABASE_URL=database_url,
            REDIS_URL=data_url,
            CELERY_BROKER_URL=broker_url,
            CELERY_RESULT_BACKEND=broker_url,
        )
        args = [
            "demo",
            "--fleet", "12",
            "--duration", str(DEMO_SECONDS),
            "--log-dir", str(log_dir),
            "--metrics-port", str(port),
            "--summary-json", str(summary_path),
            "--seed", "7",
        ]  # fmt: skip
        with output_path.open("wb") as output:
            demo = subprocess.Popen(
                [CLI, *args], env=env, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            first, second = _scrape_twice(f"http://127.0.0.1:{port}/metrics", demo)
            # The demo serves the fleet board too, at the URL it printed.
            board_url = re.search(r"fleet board: (http://\S+)", output_path.read_text())
            assert board_url is not None, output_path.read_text()[-4000:]
            with urllib.request.urlopen(board_url[1] + "api/snapshot", timeout=10) as response:
                board_fleet = json.loads(response.read())
            returncode = demo.wait(timeout=DEMO_SECONDS + 90)
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, 9)
                demo.wait()
        output = output_path.read_text()
        assert returncode == 0, output[-4000:]

        # Every behaviour showed its status, in the closing table and in the JSON.
        summary = json.loads(summary_path.read_text())
        for behaviour, status in SHOWCASE_STATUS.items():
            entry = summary["behaviours"][behaviour.value]
            assert entry["agents"] >= 1
            assert status.value in entry["reached"], (behaviour, entry, output[-4000:])
            assert f"{status.value:<15} ✓" in output, behaviour
        assert summary["missing"] == []
        # CONTRACT §12: a late agent's workspace failed first, then came back online.
        assert {"failed", "online"} <= set(summary["behaviours"]["late"]["reached"])
        assert board_fleet["total"] > 0 and summary["board_url"] == board_url[1]
        assert summary["heartbeats_sent"] > 100
        assert summary["send_errors"] == 0
        for line in ("WORKSPACE_OFFLINE", "WORKSPACE_DEGRADED", "WORKSPACE_HIBERNATED",
                     "WORKSPACE_PROVISION_FAILED", "WORKSPACE_AWAITING_AGENT"):  # fmt: skip
            assert line in output, line
        assert "heartbeats sent" in output
        assert "all processes stopped" in output

        # No process of the demo is left: its own group, its children's groups, anything
        # still running from its log directory (the worker's command line names it).
        assert summary["killed"] == []
        pgids = {demo.pid, *summary["processes"].values()}
        assert processes_matching(pgids, needle=str(log_dir)) == []

    # The worker's endpoint served the documented series, and they moved.
    ok = 'registry_heartbeats_total{outcome="ok"}'
    assert second[ok] > first[ok] > 0
    assert any(key.startswith("registry_transitions_total{") for key in second)
    assert 'registry_queue_length{queue="registry.heartbeats"}' in second
    assert "registry_self_preservation_active" in second


def _scrape_twice(url, demo):
    """Two scrapes about 25 s apart while the demo runs."""
    samples = []
    deadline = time.monotonic() + DEMO_SECONDS
    for wait in (20, 25):
        time.sleep(wait)
        while demo.poll() is None and time.monotonic() < deadline:
            try:
                samples.append(scrape(url))
                break
            except OSError:
                time.sleep(1)
    assert len(samples) == 2, "the metrics endpoint did not answer"
    return samples


def test_earlier_demo_fleets_are_retired_before_a_new_run(db):
    """A dead earlier fleet must not hold self-preservation on for the next demo."""
    from sqlalchemy import text

    from molecule_registry_demo.simulator.fleet import retire_earlier_fleets

    leftover, unrelated = uuid.uuid4(), uuid.uuid4()
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workspaces (id, name, status, last_heartbeat_at) VALUES "
                "(:a, 'demo-82a43e-laptop-001', 'online', now() - interval '1 hour'), "
                "(:b, 'demo-x', 'online', now() - interval '1 hour')"
            ),
            {"a": leftover, "b": unrelated},
        )

    assert retire_earlier_fleets(db) == 1
    assert retire_earlier_fleets(db) == 0  # already removed: nothing to do

    with db.connect() as conn:
        status = dict(conn.execute(text("SELECT id, status FROM workspaces")).all())
        events = (
            conn.execute(
                text(
                    "SELECT workspace_id FROM structure_events WHERE event_type = 'WORKSPACE_REMOVED'"
                )
            )
            .scalars()
            .all()
        )
    assert status == {leftover: "removed", unrelated: "online"}
    assert events == [leftover]

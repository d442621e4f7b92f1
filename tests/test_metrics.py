"""Prometheus metrics: the recording helpers and the worker's endpoint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from demo_helpers import closed_port, free_port, reserved_redis_pair, scrape, wait_for
from prometheus_client import REGISTRY

from molecule_registry_client import RegistryClient
from registry import metrics
from registry.config import load
from workers.metrics_endpoint import (
    QueueLengthCollector,
    remove_abandoned_private_dirs,
    remove_stale_files,
    start_metrics_server,
)


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_observe_sweep_as_context_manager():
    runs = sample("registry_sweep_runs_total", sweep="t-ctx", outcome="ok")
    with metrics.observe_sweep("t-ctx") as run:
        run.changed = 3
    assert sample("registry_sweep_runs_total", sweep="t-ctx", outcome="ok") == runs + 1
    assert sample("registry_sweep_rows_changed_total", sweep="t-ctx") == 3
    assert sample("registry_sweep_duration_seconds_count", sweep="t-ctx") == 1


def test_observe_sweep_as_decorator_reads_changed_and_counts_errors():
    @metrics.observe_sweep("t-deco")
    def sweep(changed):
        if changed < 0:
            raise RuntimeError("dependency down")
        return {"status": "ok", "changed": changed}

    assert sweep(2) == {"status": "ok", "changed": 2}
    assert sweep(0)["changed"] == 0
    with pytest.raises(RuntimeError, match="dependency down"):
        sweep(-1)
    assert sample("registry_sweep_rows_changed_total", sweep="t-deco") == 2
    assert sample("registry_sweep_runs_total", sweep="t-deco", outcome="ok") == 2
    assert sample("registry_sweep_runs_total", sweep="t-deco", outcome="error") == 1
    assert sample("registry_sweep_duration_seconds_count", sweep="t-deco") == 3


def test_transition_and_self_preservation_helpers():
    before = sample("registry_transitions_total", **{"from": "online", "to": "offline"})
    metrics.record_transition("online", "offline", 4)
    metrics.record_transition("online", "offline", 0)
    assert sample("registry_transitions_total", **{"from": "online", "to": "offline"}) == before + 4
    metrics.set_self_preservation(True)
    assert sample("registry_self_preservation_active") == 1
    metrics.set_self_preservation(False)
    assert sample("registry_self_preservation_active") == 0


def test_queue_length_is_read_from_the_broker():
    with reserved_redis_pair() as (_, broker_url):
        with RegistryClient(broker_url) as client:
            for _ in range(3):
                client.heartbeat(uuid.uuid4(), "tok")
            client.send("registry.register", {"id": str(uuid.uuid4()), "agent_card": {}})
        lengths = QueueLengthCollector(broker_url).lengths()
    assert lengths == {"registry": 1, "registry.heartbeats": 3, "registry.sweeps": 0}

    # A broker that cannot answer gives no sample, never a failed scrape or a false 0.
    (family,) = QueueLengthCollector(f"redis://127.0.0.1:{closed_port()}/0").collect()
    assert family.samples == []


def test_queue_length_on_rabbitmq():
    lengths = QueueLengthCollector(
        "amqp://guest:guest@127.0.0.1:5672//", queues=(f"t-missing-{uuid.uuid4().hex}",)
    ).lengths()
    assert lengths == {}  # a queue nobody declared yet is skipped


def test_stale_value_files_of_finished_processes_are_removed(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(finished.stdout)
    (tmp_path / f"counter_{dead_pid}.db").write_bytes(b"")
    (tmp_path / f"gauge_livemostrecent_{dead_pid}.db").write_bytes(b"")
    (tmp_path / f"counter_{os.getpid()}.db").write_bytes(b"")
    assert remove_stale_files(str(tmp_path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == [f"counter_{os.getpid()}.db"]


def test_endpoint_serves_series_that_move(db, worker, test_env):
    port = free_port()
    settings = load({**test_env, "METRICS_PORT": str(port), "METRICS_ADDR": "127.0.0.1"})
    assert start_metrics_server(load({**test_env, "METRICS_PORT": "0"})) is None

    started = start_metrics_server(settings)
    assert started is not None
    server, bound = started
    try:
        assert bound == port
        url = f"http://127.0.0.1:{port}/metrics"
        before = scrape(url)
        with RegistryClient(
            test_env["CELERY_BROKER_URL"], result_backend=test_env["CELERY_RESULT_BACKEND"]
        ) as client:
            ws = uuid.uuid4()
            token = client.register(ws, {"name": "m"}, delivery_mode="poll")
            client.heartbeat(ws, token, error_rate=0.8)
            client.heartbeat(ws, "wrong-token")
        ok = 'registry_heartbeats_total{outcome="ok"}'
        refused = 'registry_heartbeats_rejected_total{reason="unauthorized"}'
        degraded = 'registry_transitions_total{from="online",to="degraded"}'
        after = wait_for(
            lambda: (
                (s := scrape(url)).get(refused, 0) > before.get(refused, 0)
                and s.get(ok, 0) > before.get(ok, 0)
                and s
            ),
            timeout=15,
        )
        assert after, "heartbeat counters did not move"
        assert after[degraded] >= before.get(degraded, 0) + 1
        for queue in ("registry", "registry.heartbeats", "registry.sweeps"):
            assert f'registry_queue_length{{queue="{queue}"}}' in after
        assert "registry_self_preservation_active" in after
    finally:
        server.shutdown()
        server.server_close()


def test_prefork_worker_serves_pool_counters_in_multiprocess_mode(db, test_env, tmp_path):
    """A real `celery worker` (prefork): tasks count in pool processes, the main one serves."""
    port = free_port()
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    with reserved_redis_pair() as (_, broker_url):
        env = dict(
            test_env,
            CELERY_BROKER_URL=broker_url,
            CELERY_RESULT_BACKEND=broker_url,
            METRICS_PORT=str(port),
            METRICS_ADDR="127.0.0.1",
            PROMETHEUS_MULTIPROC_DIR=str(multiproc),
        )
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-c", "2",
             "-Q", "registry,registry.heartbeats", "-n", f"metrics-{uuid.uuid4().hex[:6]}@%h",
             "--without-mingle", "--without-gossip", "-l", "WARNING"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            with RegistryClient(broker_url) as client:
                ws = uuid.uuid4()
                token = client.register(ws, {"name": "p"}, delivery_mode="poll", timeout=60)
                for _ in range(4):
                    client.heartbeat(ws, token)
            ok = 'registry_heartbeats_total{outcome="ok"}'
            samples = wait_for(lambda: _scrape_quietly(url).get(ok, 0) >= 3, timeout=20)
            assert samples, Path(tmp_path / "worker.log").read_text()[-2000:]
            assert any(multiproc.glob("counter_*.db"))
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
            log.close()


def _scrape_quietly(url):
    try:
        return scrape(url)
    except OSError:
        return {}


def test_documented_prefork_worker_serves_pool_counters_without_extra_env(db, test_env, tmp_path):
    """README's worker command, prefork, no PROMETHEUS_MULTIPROC_DIR: the worker arranges
    a private multiprocess directory itself, serves the pool's counters, and removes the
    directory at shutdown. (Only the port is chosen, so parallel runs do not collide.)"""
    port = free_port()
    with reserved_redis_pair() as (_, broker_url):
        env = {
            k: v
            for k, v in {**os.environ, **test_env}.items()
            if k not in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
        }
        env.update(
            CELERY_BROKER_URL=broker_url,
            CELERY_RESULT_BACKEND=broker_url,
            METRICS_PORT=str(port),
            METRICS_ADDR="127.0.0.1",
            PYTHONUNBUFFERED="1",
        )
        log_path = tmp_path / "worker.log"
        log = log_path.open("wb")
        worker = subprocess.Popen(
            ["celery", "-A", "workers.app", "worker",
             "-Q", "registry,registry.heartbeats,registry.sweeps", "-l", "INFO"],
            env={**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            with RegistryClient(broker_url) as client:
                ws = uuid.uuid4()
                token = client.register(ws, {"name": "d"}, delivery_mode="poll", timeout=60)
                for _ in range(4):
                    client.heartbeat(ws, token)
            ok = 'registry_heartbeats_total{outcome="ok"}'
            moved = wait_for(lambda: _scrape_quietly(url).get(ok, 0) >= 3, timeout=30)
            assert moved, log_path.read_text()[-3000:]
            samples = scrape(url)
            for queue in ("registry", "registry.heartbeats", "registry.sweeps"):
                assert f'registry_queue_length{{queue="{queue}"}}' in samples
            (private,) = Path(tempfile.gettempdir()).glob(
                f"molecule-registry-metrics-{worker.pid}-*"
            )
            assert any(private.glob("counter_*.db"))
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
            log.close()
        assert not private.exists()  # removed at shutdown
        assert "prefork pool without" not in log_path.read_text()


def test_abandoned_private_dirs_are_removed(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = tmp_path / f"molecule-registry-metrics-{int(finished.stdout)}-abc"
    live = tmp_path / f"molecule-registry-metrics-{os.getpid()}-def"
    other = tmp_path / "something-else-1"
    for path in (dead, live, other):
        path.mkdir()
        (path / "counter_1.db").write_bytes(b"")
    assert remove_abandoned_private_dirs(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def _exported_sample_names() -> set[str]:
    """Every sample name the worker's endpoint can serve: our series and the queue gauge."""
    names = {"registry_queue_length"}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    for family in REGISTRY.collect():
        if family.name.startswith("registry_"):
            names.update(family.name + s for s in suffixes.get(family.type, ("", "_count", "_sum")))
    return names


def test_grafana_dashboard_names_only_exported_metrics():
    import json

    dashboard = json.loads(
        (Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json").read_text()
    )
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    named = {name for expr in exprs for name in re.findall(r"\bregistry_[a-z_]+\b", expr)}
    assert named, "the dashboard queries no registry metric"
    exported = _exported_sample_names()
    assert named <= exported, f"not exported: {sorted(named - exported)}"


def test_private_dir_switches_series_defined_at_import_to_multiprocess(tmp_path):
    """Unlabelled series hold a value from import on: the switch must re-create it, so a
    pool process's write lands in the directory the endpoint reads. (In a subprocess:
    the switch is for the whole process.)"""
    script = """
import os, shutil
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from registry import metrics
from workers.metrics_endpoint import create_private_dir, MULTIPROC_ENV
directory = create_private_dir()
assert os.environ[MULTIPROC_ENV] == directory
if os.fork() == 0:  # a pool process
    metrics.set_self_preservation(True)
    metrics.HEARTBEATS.labels("ok").inc(2)
    os._exit(0)
os.wait()
registry = CollectorRegistry()
MultiProcessCollector(registry, path=directory)
print(registry.get_sample_value("registry_self_preservation_active"))
print(registry.get_sample_value("registry_heartbeats_total", {"outcome": "ok"}))
shutil.rmtree(directory)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1.0", "2.0"]

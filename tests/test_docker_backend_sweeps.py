"""The hibernation and orphan sweeps end to end on DockerContainers.

The real docker SDK talks HTTP to demo/molecule_registry_demo/simulator/fake_engine.py; then the same through
the tasks, with the backend chosen by CONTAINER_BACKEND=docker and DOCKER_HOST.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from celery.signals import beat_init
from maintenance_helpers import add_workspace, environment, events, status_of
from sqlalchemy import Engine

from molecule_registry_demo.simulator.fake_engine import FakeDockerEngine
from registry.sweeps.containers import (
    INSTANCE_LABEL,
    MANAGED_LABEL,
    DockerContainers,
    container_name,
    legacy_container_name,
    volume_names,
)
from registry.sweeps.hibernation import sweep_hibernation
from registry.sweeps.orphans import sweep_orphans

pytestmark = pytest.mark.integration

MANAGED = {MANAGED_LABEL: "true", INSTANCE_LABEL: "default"}
OTHER_INSTANCE = {MANAGED_LABEL: "true", INSTANCE_LABEL: "0123456789abcdef"}


@pytest.fixture
def engine_api() -> Iterator[FakeDockerEngine]:
    with FakeDockerEngine() as fake:
        yield fake


@pytest.fixture
def docker(engine_api: FakeDockerEngine) -> Iterator[DockerContainers]:
    with DockerContainers(engine_api.base_url, timeout=5) as containers:
        yield containers


def volumes_of(name: str) -> set[str]:
    """The volumes the reaper removes with container `name` (CONTRACT §12)."""
    return set(volume_names(name.removeprefix("ws-")))


def managed(
    engine_api: FakeDockerEngine,
    ws: uuid.UUID,
    *,
    volume: bool = True,
    legacy: bool = False,
    labels: dict[str, str] | None = None,
) -> str:
    """A workspace container as the provisioner creates it, with its volumes (the
    `-workspace` one, never removed, included); its name."""
    name = legacy_container_name(ws) if legacy else container_name(ws)
    engine_api.add_container(name, running=True, labels=MANAGED if labels is None else labels)
    if volume:
        engine_api.volumes |= volumes_of(name) | {f"{name}-workspace"}
    return name


def test_hibernation_stops_the_container(
    db: Engine, engine_api: FakeDockerEngine, docker: DockerContainers
) -> None:
    ws = add_workspace(db, hibernation_idle_minutes=5, idle_for="6 minutes")
    name = managed(engine_api, ws)

    assert sweep_hibernation(docker)["changed"] == 1

    assert engine_api.containers[name].running is False
    assert len(engine_api.requests_to("POST", f"/containers/{name}/stop")) == 1
    assert status_of(db, ws) == "hibernated"
    assert volumes_of(name) <= engine_api.volumes  # hibernation keeps the data


def test_hibernation_engine_error_restores_status_then_retries(
    db: Engine, engine_api: FakeDockerEngine, docker: DockerContainers
) -> None:
    ws = add_workspace(db, status="degraded", hibernation_idle_minutes=5, idle_for="6 minutes")
    name = managed(engine_api, ws)
    engine_api.fail[name] = 500

    result = sweep_hibernation(docker)

    assert (result["changed"], result["stop_failed"]) == (0, 1)
    assert status_of(db, ws) == "degraded"
    assert engine_api.containers[name].running is True

    del engine_api.fail[name]
    assert sweep_hibernation(docker)["changed"] == 1
    assert status_of(db, ws) == "hibernated"
    assert engine_api.containers[name].running is False


def test_hibernation_of_a_container_already_gone(
    db: Engine, engine_api: FakeDockerEngine, docker: DockerContainers
) -> None:
    ws = add_workspace(db, hibernation_idle_minutes=5, idle_for="6 minutes")
    assert sweep_hibernation(docker)["changed"] == 1  # 404: stopped already
    assert status_of(db, ws) == "hibernated"


def test_orphans_both_passes(
    db: Engine, engine_api: FakeDockerEngine, docker: DockerContainers
) -> None:
    removed = add_workspace(db, status="removed")
    live = add_workspace(db, status="online")
    wiped = uuid.uuid4()
    removed_name, live_name, wiped_name = (managed(engine_api, ws) for ws in (removed, live, wiped))
    # Pass 1 goes by name: a removed workspace's container without the label is reaped too.
    unlabelled = add_workspace(db, status="removed")
    unlabelled_name = managed(engine_api, unlabelled, labels={})
    # Foreign containers: no label, or a label but not a workspace name.
    engine_api.add_container("postgres", running=True)
    engine_api.add_container(container_name(uuid.uuid4()), running=True)  # unlabelled ws-*
    engine_api.add_container("ws-0f3c2a9b_1d2", running=True, labels=MANAGED)

    result = sweep_orphans(docker)

    assert result["changed"] == 3
    assert (result["removed"]["stopped"], result["unknown"]["stopped"]) == (2, 1)
    assert engine_api.containers[removed_name].running is False
    assert engine_api.containers[unlabelled_name].running is False
    assert engine_api.containers[wiped_name].running is False
    assert engine_api.containers[live_name].running is True
    assert all(engine_api.containers[n].running for n in ("postgres", "ws-0f3c2a9b_1d2"))
    kept = {f"{n}-workspace" for n in (removed_name, live_name, wiped_name, unlabelled_name)}
    assert engine_api.volumes == volumes_of(live_name) | kept
    assert engine_api.requests_to("POST", "/containers/ws-0f3c2a9b_1d2/stop") == []

    # The engine lists stopped containers too: the next sweep's repeat is harmless.
    again = sweep_orphans(docker)
    assert again["removed"]["stop_errors"] == again["unknown"]["stop_errors"] == 0
    assert again["removed"]["volume_errors"] == 0


def test_orphans_stop_failure_keeps_the_volume_volume_failure_is_logged(
    db: Engine, engine_api: FakeDockerEngine, docker: DockerContainers
) -> None:
    stuck, busy_volume = add_workspace(db, status="removed"), add_workspace(db, status="removed")
    stuck_name = managed(engine_api, stuck)
    managed(engine_api, busy_volume)
    engine_api.fail[stuck_name] = 500
    busy = sorted(volumes_of(container_name(busy_volume)))[0]
    engine_api.fail[busy] = 409  # volume in use

    result = sweep_orphans(docker)

    assert result["removed"] == {
        "stopped": 1,
        "volumes_removed": 0,
        "stop_errors": 1,
        "volume_errors": 1,
        "error": None,
    }
    assert volumes_of(stuck_name) <= engine_api.volumes
    for volume in volumes_of(stuck_name):
        assert engine_api.requests_to("DELETE", f"/volumes/{volume}") == []


def test_TestSweepOnce_WipedDBDoesNotCrossReapOtherInstance(
    db: Engine, engine_api: FakeDockerEngine, docker: DockerContainers
) -> None:
    # Two platform instances share one engine, and this registry's database was wiped:
    # no container has a row. Only this instance's (both labels, its id) are reaped.
    add_workspace(db, status="online")  # the fleet that is left
    ours = managed(engine_api, uuid.uuid4())
    ours_legacy = managed(engine_api, uuid.uuid4(), legacy=True)
    theirs = managed(engine_api, uuid.uuid4(), labels=OTHER_INSTANCE)
    theirs_legacy = managed(engine_api, uuid.uuid4(), legacy=True, labels=OTHER_INSTANCE)
    no_instance = managed(engine_api, uuid.uuid4(), labels={MANAGED_LABEL: "true"})
    old_label = managed(engine_api, uuid.uuid4(), labels={"molecule.managed": "true"})
    untouched = (theirs, theirs_legacy, no_instance, old_label)

    result = sweep_orphans(docker)

    assert result["unknown"]["stopped"] == result["unknown"]["volumes_removed"] == 2
    assert not engine_api.containers[ours].running
    assert not engine_api.containers[ours_legacy].running
    for name in untouched:
        assert engine_api.containers[name].running, name
        assert engine_api.requests_to("POST", f"/containers/{name}/stop") == []
        assert volumes_of(name) | {f"{name}-workspace"} <= engine_api.volumes
    assert not (volumes_of(ours) | volumes_of(ours_legacy)) & engine_api.volumes
    # The engine filtered on both labels; a misbehaving engine changes nothing.
    (listing,) = [
        r
        for r in engine_api.requests_to("GET", "/containers/json")
        if "label" in (r.filters() or {})
    ]
    assert sorted(listing.filters()["label"]) == [
        "molecule.platform.instance=default",
        "molecule.platform.managed=true",
    ]
    engine_api.ignore_filters = True
    again = sweep_orphans(docker)  # ours again (stopped already: harmless), never theirs
    assert again["unknown"]["stopped"] == 2
    for name in untouched:
        assert engine_api.containers[name].running, name
        assert engine_api.requests_to("POST", f"/containers/{name}/stop") == []


def test_orphans_with_another_instance_id_reap_only_that_instance(
    db: Engine, engine_api: FakeDockerEngine
) -> None:
    ours = managed(engine_api, uuid.uuid4())
    theirs = managed(engine_api, uuid.uuid4(), labels=OTHER_INSTANCE)
    with DockerContainers(engine_api.base_url, timeout=5, instance_id="0123456789abcdef") as other:
        assert sweep_orphans(other)["unknown"]["stopped"] == 1
    assert engine_api.containers[ours].running
    assert not engine_api.containers[theirs].running


def test_orphans_never_touch_a_container_with_a_foreign_name_or_volume(
    db: Engine, engine_api: FakeDockerEngine, docker: DockerContainers
) -> None:
    removed = add_workspace(db, status="removed")
    name = managed(engine_api, removed)
    foreign_volume = f"{name}-data"  # an old or foreign suffix: never removed
    engine_api.volumes.add(foreign_volume)
    odd_names = [
        f"ws-{str(removed)[:16]}",  # neither 12 nor 36 characters
        f"ws-{removed}x",
        f"ws-{str(removed)[:35]}_",
    ]
    for odd in odd_names:
        engine_api.add_container(odd, running=True, labels=MANAGED)

    result = sweep_orphans(docker)

    assert result["removed"]["stopped"] == 1
    assert foreign_volume in engine_api.volumes
    assert engine_api.requests_to("DELETE", f"/volumes/{foreign_volume}") == []
    for odd in odd_names:
        assert engine_api.containers[odd].running
        assert engine_api.requests_to("POST", f"/containers/{odd}/stop") == []


def test_health_sweep_checks_the_legacy_name_and_skips_mock(
    db: Engine, engine_api: FakeDockerEngine, docker: DockerContainers
) -> None:
    from registry.config import get_settings
    from registry.sweeps.health import sweep_health

    legacy = add_workspace(db, status="online")
    managed(engine_api, legacy, legacy=True)  # an older provisioner's container, running
    gone = add_workspace(db, status="online")  # no container under either name
    mock = add_workspace(db, status="online", runtime="mock")  # never has a container

    result = sweep_health(get_settings(), docker)

    assert result["changed"] == 1
    assert (status_of(db, legacy), status_of(db, gone), status_of(db, mock)) == (
        "online",
        "offline",
        "online",
    )
    for ws in (mock,):
        for name in (container_name(ws), legacy_container_name(ws)):
            assert engine_api.requests_to("GET", f"/containers/{name}/json") == []


def test_orphans_engine_down_fails_both_passes_without_crashing(
    db: Engine, engine_api: FakeDockerEngine, docker: DockerContainers
) -> None:
    engine_api.fail_list = 500
    result = sweep_orphans(docker)
    assert result["status"] == "ok"
    assert result["removed"]["error"].startswith("ContainerError")
    assert result["unknown"]["error"].startswith("ContainerError")


# --- through the tasks, backend from the configuration -------------------------------


@pytest.fixture
def docker_configured(engine_api: FakeDockerEngine) -> Iterator[None]:
    with environment(CONTAINER_BACKEND="docker", DOCKER_HOST=engine_api.base_url):
        yield


def test_hibernation_task(
    db: Engine, engine_api: FakeDockerEngine, docker_configured: None, worker, celery_app
) -> None:
    ws = add_workspace(db, hibernation_idle_minutes=5, idle_for="6 minutes", tier=2)
    name = managed(engine_api, ws)

    result = celery_app.send_task("registry.sweep_hibernation", queue="registry.sweeps").get(
        timeout=20
    )

    assert result["status"] == "ok"
    assert result["changed"] == 1
    assert engine_api.containers[name].running is False
    (event,) = events(db, "WORKSPACE_HIBERNATED")
    assert event.payload["tier"] == 2


def test_orphan_task(
    db: Engine, engine_api: FakeDockerEngine, docker_configured: None, worker, celery_app
) -> None:
    name = managed(engine_api, add_workspace(db, status="removed"))

    result = celery_app.send_task("registry.sweep_orphans", queue="registry.sweeps").get(timeout=20)

    assert result["status"] == "ok"
    assert result["changed"] == 1
    assert engine_api.containers[name].running is False


class _BeatService:
    """Stands for celery.beat.Service, the sender of beat_init: it carries its app."""

    def __init__(self, app: object) -> None:
        self.app = app


def test_orphan_sweep_runs_once_when_beat_starts(
    db: Engine, engine_api: FakeDockerEngine, docker_configured: None, worker, celery_app
) -> None:
    wiped_name = managed(engine_api, uuid.uuid4())

    # What `celery beat` (or `worker --beat`) sends at start: its Service, whose app it is.
    beat_init.send(sender=_BeatService(celery_app))

    deadline = time.monotonic() + 20
    while engine_api.containers[wiped_name].running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine_api.containers[wiped_name].running is False

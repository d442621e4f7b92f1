"""registry.containers: the real docker SDK against demo/molecule_registry_demo/simulator/fake_engine.py."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from fakes import FakeContainers

from molecule_registry_demo.simulator.fake_engine import FakeDockerEngine
from registry.config import Settings
from registry.sweeps.containers import (
    MANAGED_LABEL,
    ContainerChecker,
    ContainerError,
    ContainerReaper,
    ContainerStopper,
    DockerContainers,
    ManagedContainer,
    container_backend,
    container_name,
    id_prefix,
    volume_name,
)

MANAGED = {MANAGED_LABEL: "true"}
WS = UUID("0f3c2a9b-1d2e-4f50-8a6b-7c8d9e0f1a2b")
WS_NAME = "ws-0f3c2a9b-1d2"


@pytest.fixture
def engine() -> Iterator[FakeDockerEngine]:
    with FakeDockerEngine() as fake:
        yield fake


@pytest.fixture
def docker_containers(engine: FakeDockerEngine) -> Iterator[DockerContainers]:
    with DockerContainers(engine.base_url) as containers:
        yield containers


def test_naming_contract() -> None:
    assert id_prefix(WS) == "0f3c2a9b-1d2"
    assert container_name(WS) == WS_NAME
    assert container_name(str(WS)) == WS_NAME
    assert volume_name("0f3c2a9b-1d2") == "ws-0f3c2a9b-1d2-data"


def test_implementations_satisfy_the_protocols(engine: FakeDockerEngine) -> None:
    with DockerContainers(engine.base_url) as real:
        for impl in (real, FakeContainers()):
            assert isinstance(impl, ContainerChecker)
            assert isinstance(impl, ContainerStopper)
            assert isinstance(impl, ContainerReaper)


# --- is_running -------------------------------------------------------------------


def test_is_running(engine: FakeDockerEngine, docker_containers: DockerContainers) -> None:
    engine.add_container(WS_NAME, running=True)
    assert docker_containers.is_running(WS) is True
    (request,) = engine.requests
    assert (request.method, request.path) == ("GET", f"/containers/{WS_NAME}/json")
    assert request.api_version == "1.43"  # pinned: no /version round trip first


def test_is_running_stopped(engine: FakeDockerEngine, docker_containers: DockerContainers) -> None:
    engine.add_container(WS_NAME, running=False)
    assert docker_containers.is_running(WS) is False


def test_is_running_missing_container_is_a_real_no(docker_containers: DockerContainers) -> None:
    assert docker_containers.is_running(WS) is False


def test_is_running_engine_error_raises(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    engine.add_container(WS_NAME)
    engine.fail[WS_NAME] = 500
    with pytest.raises(ContainerError, match="inspect ws-0f3c2a9b-1d2"):
        docker_containers.is_running(WS)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_engine_raises() -> None:
    with DockerContainers(f"tcp://127.0.0.1:{_closed_port()}", timeout=2) as unreachable:
        with pytest.raises(ContainerError):
            unreachable.is_running(WS)
        with pytest.raises(ContainerError):
            unreachable.stop(WS)
        with pytest.raises(ContainerError):
            unreachable.list_managed()
        with pytest.raises(ContainerError):
            unreachable.list_workspace_containers()
        with pytest.raises(ContainerError):
            unreachable.remove_volume("0f3c2a9b-1d2")


def test_invalid_base_url_fails_on_use_not_on_construction() -> None:
    broken = DockerContainers("fd://nowhere")  # the SDK rejects this protocol
    with pytest.raises(ContainerError, match="cannot create a Docker client"):
        broken.is_running(WS)
    broken.close()


# --- stop -------------------------------------------------------------------------


def test_stop(engine: FakeDockerEngine, docker_containers: DockerContainers) -> None:
    engine.add_container(WS_NAME, running=True)
    docker_containers.stop(WS)
    assert engine.containers[WS_NAME].running is False
    assert len(engine.requests_to("POST", f"/containers/{WS_NAME}/stop")) == 1
    assert len(engine.requests) == 1  # no inspect before the stop


def test_stop_already_stopped_is_success(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    engine.add_container(WS_NAME, running=False)
    docker_containers.stop(WS)  # the engine answers 304


def test_stop_missing_container_is_success(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    docker_containers.stop(WS)
    assert len(engine.requests_to("POST", f"/containers/{WS_NAME}/stop")) == 1


def test_stop_engine_error_raises(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    engine.add_container(WS_NAME)
    engine.fail[WS_NAME] = 500
    with pytest.raises(ContainerError, match="stop ws-0f3c2a9b-1d2"):
        docker_containers.stop(WS)


def test_stop_container_by_name(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    engine.add_container("ws-abcdef012345", running=True)
    docker_containers.stop_container("ws-abcdef012345")
    assert engine.containers["ws-abcdef012345"].running is False


@pytest.mark.parametrize("name", ["../volumes/x", "ws-1/stop", "", "ws-a?all=1", "-ws"])
def test_unsafe_names_never_reach_the_engine(
    engine: FakeDockerEngine, docker_containers: DockerContainers, name: str
) -> None:
    with pytest.raises(ContainerError, match="unsafe"):
        docker_containers.stop_container(name)
    assert engine.requests == []


@pytest.mark.parametrize("prefix", ["", "../x", "abc/def", "pg-data", "ab%", "0f3c2a9b_1d2"])
def test_non_workspace_prefixes_never_reach_the_engine(
    engine: FakeDockerEngine, docker_containers: DockerContainers, prefix: str
) -> None:
    with pytest.raises(ContainerError, match="unsafe"):
        docker_containers.remove_volume(prefix)
    assert engine.requests == []


# --- list_managed -----------------------------------------------------------------


def test_list_managed_sends_the_label_filter(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    engine.add_container("ws-aaaaaaaaaaaa", running=True, labels={**MANAGED, "tier": "2"})
    engine.add_container("ws-bbbbbbbbbbbb", running=False, labels=MANAGED)
    engine.add_container("ws-cccccccccccc", running=True)  # not managed
    engine.add_container("postgres", running=True)

    found = docker_containers.list_managed()

    assert found == [
        ManagedContainer("ws-aaaaaaaaaaaa", "aaaaaaaaaaaa", {**MANAGED, "tier": "2"}),
        ManagedContainer("ws-bbbbbbbbbbbb", "bbbbbbbbbbbb", MANAGED),  # stopped ones too
    ]
    (request,) = engine.requests_to("GET", "/containers/json")
    assert request.filters() == {"label": ["molecule.managed=true"]}
    assert request.query["all"] == ["1"]


def test_list_managed_rechecks_label_and_name(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    # An engine that ignores the filter must still never hand a foreign container
    # to the reaper; a managed container not named ws-* maps to no workspace.
    engine.ignore_filters = True
    engine.add_container("ws-aaaaaaaaaaaa", labels=MANAGED)
    engine.add_container("ws-cccccccccccc")  # unmanaged
    engine.add_container("ws-dddddddddddd", labels={MANAGED_LABEL: "false"})
    engine.add_container("molecule-proxy", labels=MANAGED)
    assert [c.name for c in docker_containers.list_managed()] == ["ws-aaaaaaaaaaaa"]


def test_list_managed_empty(docker_containers: DockerContainers) -> None:
    assert docker_containers.list_managed() == []


def test_list_managed_engine_error_raises(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    engine.fail_list = 500
    with pytest.raises(ContainerError, match="list managed containers"):
        docker_containers.list_managed()


# --- list_workspace_containers ----------------------------------------------------


def test_list_workspace_containers_sends_the_name_filter(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    engine.add_container(WS_NAME, running=False)  # unlabelled, stopped: listed all the same
    engine.add_container("ws-aaaaaaaa-bbb", labels={**MANAGED, "tier": "2"})
    engine.add_container("postgres")

    found = docker_containers.list_workspace_containers()

    assert found == [
        ManagedContainer(WS_NAME, "0f3c2a9b-1d2", {}),
        ManagedContainer("ws-aaaaaaaa-bbb", "aaaaaaaa-bbb", {**MANAGED, "tier": "2"}),
    ]
    (request,) = engine.requests_to("GET", "/containers/json")
    assert request.filters() == {"name": ["ws-"]}
    assert request.query["all"] == ["1"]


def test_list_workspace_containers_rechecks_the_exact_name(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    # The engine's name filter matches anywhere in the name, so it lets these through;
    # none is `ws-` + the first 12 characters of a UUID.
    for name in ("dev-ws-0f3c2a9b-1d2", "ws-0f3c2a9b-1d2e", "ws-0f3c2a9b_1d2", "ws-pg-data"):
        engine.add_container(name, labels=MANAGED)
    engine.add_container("ws-0F3C2A9B-1D2")
    assert [c.name for c in docker_containers.list_workspace_containers()] == ["ws-0F3C2A9B-1D2"]

    engine.ignore_filters = True  # an engine that ignores the filter altogether
    engine.add_container("postgres", labels=MANAGED)
    assert [c.name for c in docker_containers.list_workspace_containers()] == ["ws-0F3C2A9B-1D2"]


def test_list_workspace_containers_engine_error_raises(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    engine.fail_list = 500
    with pytest.raises(ContainerError, match="list workspace containers"):
        docker_containers.list_workspace_containers()


# --- remove_volume ----------------------------------------------------------------


def test_remove_volume(engine: FakeDockerEngine, docker_containers: DockerContainers) -> None:
    engine.volumes.add("ws-aaaaaaaaaaaa-data")
    docker_containers.remove_volume("aaaaaaaaaaaa")
    assert engine.volumes == set()
    assert len(engine.requests_to("DELETE", "/volumes/ws-aaaaaaaaaaaa-data")) == 1


def test_remove_missing_volume_is_success(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    docker_containers.remove_volume("aaaaaaaaaaaa")
    assert len(engine.requests_to("DELETE", "/volumes/ws-aaaaaaaaaaaa-data")) == 1


@pytest.mark.parametrize("status", [500, 409])  # 409: volume still in use
def test_remove_volume_engine_error_raises(
    engine: FakeDockerEngine, docker_containers: DockerContainers, status: int
) -> None:
    engine.volumes.add("ws-aaaaaaaaaaaa-data")
    engine.fail["ws-aaaaaaaaaaaa-data"] = status
    with pytest.raises(ContainerError, match="remove volume ws-aaaaaaaaaaaa-data"):
        docker_containers.remove_volume("aaaaaaaaaaaa")


# --- factory ----------------------------------------------------------------------


def test_backend_none_by_default() -> None:
    assert container_backend(Settings(), environ={}) is None
    assert container_backend(Settings(container_backend="none"), environ={}) is None


def test_backend_docker_uses_docker_host() -> None:
    backend = container_backend(
        Settings(container_backend="docker"), environ={"DOCKER_HOST": "tcp://10.0.0.5:2375"}
    )
    assert isinstance(backend, DockerContainers)
    assert backend.base_url == "tcp://10.0.0.5:2375"


def test_backend_docker_default_host() -> None:
    backend = container_backend(Settings(container_backend="Docker"), environ={})
    assert isinstance(backend, DockerContainers)
    assert backend.base_url is None  # the SDK default (local socket)


def test_backend_unknown_disables_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="registry.containers"):
        assert container_backend(Settings(container_backend="kubernetes"), environ={}) is None
        assert container_backend(Settings(container_backend="kubernetes"), environ={}) is None
    assert caplog.text.count("CONTAINER_BACKEND='kubernetes'") == 1


# --- the test double ------------------------------------------------------------


def test_fake_containers_knobs() -> None:
    fake = FakeContainers()
    running, broken = uuid.uuid4(), uuid.uuid4()
    fake.running.add(running)
    fake.failing.add(broken)
    assert fake.is_running(running) is True
    assert fake.is_running(uuid.uuid4()) is False
    with pytest.raises(ContainerError):
        fake.is_running(broken)

    fake.stop_fails = True
    with pytest.raises(ContainerError):
        fake.stop(running)
    assert fake.is_running(running) is True
    fake.stop_fails = False
    fake.stop(running)
    assert fake.is_running(running) is False
    assert fake.stopped == [container_name(running)]

    name = fake.add_managed(uuid.uuid4())
    bare = fake.add_unlabelled(uuid.uuid4())
    fake.volume_fails.add("deadbeef0000")
    assert [c.name for c in fake.list_managed()] == [name]
    assert {c.name for c in fake.list_workspace_containers()} == {name, bare}
    fake.stop_container(name)
    fake.stop_container(bare)
    assert fake.list_managed() == fake.list_workspace_containers() == []
    with pytest.raises(ContainerError):
        fake.remove_volume("deadbeef0000")
    fake.remove_volume(name.removeprefix("ws-"))
    assert fake.removed_volumes == [f"{name}-data"]
    assert fake.calls_to("stop") == [running, running]


def test_backend_docker_honours_tls_settings(tmp_path: Path) -> None:
    # As the docker CLI does: DOCKER_TLS_VERIFY / DOCKER_CERT_PATH make it verified TLS.
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("not a real certificate; the client only loads paths\n")
    env = {
        "DOCKER_HOST": "tcp://10.0.0.5:2376",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(tmp_path),
    }
    backend = container_backend(Settings(container_backend="docker"), environ=env)
    assert isinstance(backend, DockerContainers)
    client = backend._docker()  # created lazily; no request is made here
    try:
        assert client.api.base_url == "https://10.0.0.5:2376"
        assert client.api.verify == str(tmp_path / "ca.pem")
        assert client.api.cert == (str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    finally:
        backend.close()

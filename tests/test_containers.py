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
    INSTANCE_LABEL,
    MANAGED_LABEL,
    ContainerChecker,
    ContainerError,
    ContainerReaper,
    ContainerStopper,
    DockerContainers,
    ManagedContainer,
    container_backend,
    container_name,
    container_names,
    id_prefix,
    legacy_container_name,
    volume_names,
)

MANAGED = {MANAGED_LABEL: "true", INSTANCE_LABEL: "default"}
OTHER_INSTANCE = {MANAGED_LABEL: "true", INSTANCE_LABEL: "0123456789abcdef"}
WS = UUID("0f3c2a9b-1d2e-4f50-8a6b-7c8d9e0f1a2b")
WS_NAME = "ws-0f3c2a9b-1d2e-4f50-8a6b-7c8d9e0f1a2b"
LEGACY_NAME = "ws-0f3c2a9b-1d2"
OTHER = "ws-aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"  # another workspace's container


@pytest.fixture
def engine() -> Iterator[FakeDockerEngine]:
    with FakeDockerEngine() as fake:
        yield fake


@pytest.fixture
def docker_containers(engine: FakeDockerEngine) -> Iterator[DockerContainers]:
    with DockerContainers(engine.base_url) as containers:
        yield containers


def test_naming_contract() -> None:
    # CONTRACT §12: the original's newest provisioner names, legacy still recognised.
    assert id_prefix(WS) == "0f3c2a9b-1d2"
    assert container_name(WS) == container_name(str(WS)) == WS_NAME
    assert legacy_container_name(WS) == LEGACY_NAME
    assert container_names(WS) == (WS_NAME, LEGACY_NAME)
    assert volume_names(str(WS)) == (f"{WS_NAME}-configs", f"{WS_NAME}-claude-sessions")
    assert volume_names("0f3c2a9b-1d2") == (
        "ws-0f3c2a9b-1d2-configs",
        "ws-0f3c2a9b-1d2-claude-sessions",
    )
    assert (MANAGED_LABEL, INSTANCE_LABEL) == (
        "molecule.platform.managed",
        "molecule.platform.instance",
    )


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


def test_is_running_falls_back_to_the_legacy_name(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    engine.add_container(LEGACY_NAME, running=True)
    assert docker_containers.is_running(WS) is True
    assert [r.path for r in engine.requests] == [
        f"/containers/{WS_NAME}/json",  # 404 first
        f"/containers/{LEGACY_NAME}/json",
    ]


def test_is_running_missing_container_is_a_real_no(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    assert docker_containers.is_running(WS) is False
    assert len(engine.requests) == 2  # both names asked; 404 twice is "not running"


def test_is_running_engine_error_raises(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    engine.add_container(WS_NAME)
    engine.fail[WS_NAME] = 500
    with pytest.raises(ContainerError, match=f"inspect {WS_NAME}"):
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
    assert len(engine.requests) == 1  # no inspect before the stop, no legacy try


def test_stop_falls_back_to_the_legacy_name(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    engine.add_container(LEGACY_NAME, running=True)
    docker_containers.stop(WS)
    assert engine.containers[LEGACY_NAME].running is False
    assert [r.path for r in engine.requests] == [
        f"/containers/{WS_NAME}/stop",
        f"/containers/{LEGACY_NAME}/stop",
    ]


def test_stop_already_stopped_is_success(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    engine.add_container(WS_NAME, running=False)
    docker_containers.stop(WS)  # the engine answers 304
    assert len(engine.requests) == 1  # stopped already is found: no legacy try


def test_stop_missing_container_is_success(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    docker_containers.stop(WS)  # 404 on both names counts as stopped
    assert len(engine.requests_to("POST", f"/containers/{WS_NAME}/stop")) == 1
    assert len(engine.requests_to("POST", f"/containers/{LEGACY_NAME}/stop")) == 1


def test_stop_engine_error_raises(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    engine.add_container(WS_NAME)
    engine.fail[WS_NAME] = 500
    with pytest.raises(ContainerError, match=f"stop {WS_NAME}"):
        docker_containers.stop(WS)
    assert engine.requests_to("POST", f"/containers/{LEGACY_NAME}/stop") == []  # no guess


def test_stop_container_by_name(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    engine.add_container(OTHER, running=True)
    docker_containers.stop_container(OTHER)
    assert engine.containers[OTHER].running is False


@pytest.mark.parametrize("name", ["../volumes/x", "ws-1/stop", "", "ws-a?all=1", "-ws"])
def test_unsafe_names_never_reach_the_engine(
    engine: FakeDockerEngine, docker_containers: DockerContainers, name: str
) -> None:
    with pytest.raises(ContainerError, match="unsafe"):
        docker_containers.stop_container(name)
    assert engine.requests == []


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "../x",
        "abc/def",
        "pg-data",
        "ab%",
        "0f3c2a9b_1d2",
        "0f3c2a9b-1d2e",  # neither 12 nor 36 characters
        "0f3c2a9b-1d2e-4f50-8a6b-7c8d9e0f1a2",
        "0f3c2a9b-1d2e-4f50-8a6b-7c8d9e0f1a2b-workspace",
    ],
)
def test_non_workspace_prefixes_never_reach_the_engine(
    engine: FakeDockerEngine, docker_containers: DockerContainers, prefix: str
) -> None:
    with pytest.raises(ContainerError, match="unsafe"):
        docker_containers.remove_volume(prefix)
    assert engine.requests == []


# --- list_managed -----------------------------------------------------------------


def test_list_managed_sends_both_label_filters(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    engine.add_container(OTHER, running=True, labels={**MANAGED, "tier": "2"})
    engine.add_container(LEGACY_NAME, running=False, labels=MANAGED)
    engine.add_container("ws-cccccccc-ccc", running=True)  # not managed
    engine.add_container("ws-dddddddd-ddd", labels=OTHER_INSTANCE)  # another platform's
    engine.add_container("ws-eeeeeeee-eee", labels={"molecule.managed": "true"})  # old label
    engine.add_container("postgres", running=True)

    found = docker_containers.list_managed()

    assert found == [
        ManagedContainer(OTHER, OTHER.removeprefix("ws-"), {**MANAGED, "tier": "2"}),
        ManagedContainer(LEGACY_NAME, "0f3c2a9b-1d2", MANAGED),  # stopped ones too
    ] or found == [
        ManagedContainer(LEGACY_NAME, "0f3c2a9b-1d2", MANAGED),
        ManagedContainer(OTHER, OTHER.removeprefix("ws-"), {**MANAGED, "tier": "2"}),
    ]
    (request,) = engine.requests_to("GET", "/containers/json")
    assert request.filters() == {
        "label": ["molecule.platform.managed=true", "molecule.platform.instance=default"]
    }
    assert request.query["all"] == ["1"]


def test_list_managed_uses_the_configured_instance_id(engine: FakeDockerEngine) -> None:
    engine.add_container(WS_NAME, labels=MANAGED)
    engine.add_container(OTHER, labels=OTHER_INSTANCE)
    with DockerContainers(engine.base_url, instance_id="0123456789abcdef") as theirs:
        assert [c.name for c in theirs.list_managed()] == [OTHER]


def test_list_managed_rechecks_labels_and_name(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    # An engine that ignores the filter must still never hand a foreign container
    # to the reaper; a managed container not named after a workspace maps to none.
    engine.ignore_filters = True
    engine.add_container(WS_NAME, labels=MANAGED)
    engine.add_container("ws-cccccccc-ccc")  # unmanaged
    engine.add_container("ws-dddddddd-ddd", labels={**MANAGED, MANAGED_LABEL: "false"})
    engine.add_container("ws-eeeeeeee-eee", labels=OTHER_INSTANCE)
    engine.add_container("ws-ffffffff-fff", labels={MANAGED_LABEL: "true"})  # no instance
    engine.add_container("molecule-proxy", labels=MANAGED)
    engine.add_container("ws-0f3c2a9b-1d2e", labels=MANAGED)  # neither 12 nor 36
    assert [c.name for c in docker_containers.list_managed()] == [WS_NAME]


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
    engine.add_container("ws-aaaaaaaa-bbb", labels={**MANAGED, "tier": "2"})  # legacy
    engine.add_container("postgres")

    found = docker_containers.list_workspace_containers()

    assert found == [
        ManagedContainer(WS_NAME, str(WS), {}),
        ManagedContainer("ws-aaaaaaaa-bbb", "aaaaaaaa-bbb", {**MANAGED, "tier": "2"}),
    ]
    (request,) = engine.requests_to("GET", "/containers/json")
    assert request.filters() == {"name": ["ws-"]}
    assert request.query["all"] == ["1"]


def test_list_workspace_containers_rechecks_the_exact_name(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    # The engine's name filter matches anywhere in the name, so it lets these through;
    # none is `ws-` + a UUID's text or its first 12 characters.
    for name in (
        "dev-ws-0f3c2a9b-1d2",
        "ws-0f3c2a9b-1d2e",
        "ws-0f3c2a9b_1d2",
        "ws-pg-data",
        f"{WS_NAME}-configs",
        f"x{WS_NAME}",
        WS_NAME[:-1],
    ):
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


@pytest.mark.parametrize("key", [str(WS), "0f3c2a9b-1d2"], ids=["full id", "legacy prefix"])
def test_remove_volume(
    engine: FakeDockerEngine, docker_containers: DockerContainers, key: str
) -> None:
    kept = f"ws-{key}-workspace"  # the agent's work: never removed
    engine.volumes |= {f"ws-{key}-configs", f"ws-{key}-claude-sessions", kept}
    docker_containers.remove_volume(key)
    assert engine.volumes == {kept}
    assert len(engine.requests_to("DELETE", f"/volumes/ws-{key}-configs")) == 1
    assert len(engine.requests_to("DELETE", f"/volumes/ws-{key}-claude-sessions")) == 1
    assert engine.requests_to("DELETE", f"/volumes/{kept}") == []


def test_remove_missing_volume_is_success(
    engine: FakeDockerEngine, docker_containers: DockerContainers
) -> None:
    docker_containers.remove_volume("aaaaaaaa-aaa")  # 404 on both
    assert len(engine.requests_to("DELETE", "/volumes/ws-aaaaaaaa-aaa-configs")) == 1
    assert len(engine.requests_to("DELETE", "/volumes/ws-aaaaaaaa-aaa-claude-sessions")) == 1


@pytest.mark.parametrize("status", [500, 409])  # 409: volume still in use
def test_remove_volume_engine_error_raises(
    engine: FakeDockerEngine, docker_containers: DockerContainers, status: int
) -> None:
    engine.volumes |= {"ws-aaaaaaaa-aaa-configs", "ws-aaaaaaaa-aaa-claude-sessions"}
    engine.fail["ws-aaaaaaaa-aaa-configs"] = status
    with pytest.raises(ContainerError, match="remove volume ws-aaaaaaaa-aaa-configs"):
        docker_containers.remove_volume("aaaaaaaa-aaa")
    # The other volume is still removed: one failure does not keep both.
    assert engine.volumes == {"ws-aaaaaaaa-aaa-configs"}


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


def test_backend_docker_uses_the_platform_instance_id() -> None:
    backend = container_backend(
        Settings(container_backend="docker", platform_instance_id="a1b2c3d4e5f60718"), environ={}
    )
    assert isinstance(backend, DockerContainers)
    assert backend.instance_id == "a1b2c3d4e5f60718"
    assert container_backend(Settings(container_backend="docker"), environ={}).instance_id == (
        "default"
    )


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
    fake.volume_fails.add("deadbeef-000")
    assert [c.name for c in fake.list_managed()] == [name]
    assert {c.name for c in fake.list_workspace_containers()} == {name, bare}
    fake.stop_container(name)
    fake.stop_container(bare)
    assert fake.list_managed() == fake.list_workspace_containers() == []
    with pytest.raises(ContainerError):
        fake.remove_volume("deadbeef-000")
    fake.remove_volume(name.removeprefix("ws-"))
    assert fake.removed_volumes == [f"{name}-configs", f"{name}-claude-sessions"]
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


@pytest.mark.parametrize("raw", ["has space", "a/b", "x" * 65, "label=value", "ünïcode", "a,b"])
def test_invalid_platform_instance_id_falls_back_loudly(
    raw: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry import config

    monkeypatch.setattr(config, "_warned", set())  # "once" is per process; start afresh
    with caplog.at_level(logging.WARNING, logger="registry.config"):
        loaded = [config.load({"PLATFORM_INSTANCE_ID": raw}) for _ in range(2)]
    assert {s.platform_instance_id for s in loaded} == {"default"}
    warnings = [r.getMessage() for r in caplog.records if "PLATFORM_INSTANCE_ID" in r.getMessage()]
    assert len(warnings) == 1 and "using the default 'default'" in warnings[0], warnings


@pytest.mark.parametrize("raw", ["default", "a1b2c3d4e5f60718", "prod.eu-1_blue", "x" * 64])
def test_valid_platform_instance_ids(raw: str) -> None:
    from registry import config

    assert config.load({"PLATFORM_INSTANCE_ID": f" {raw} "}).platform_instance_id == raw

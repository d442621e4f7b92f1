"""Container checking, stopping and reaping (CONTRACT §5, §12) behind small interfaces.

The platform runs each workspace as a Docker container. Naming contract shared with
the provisioner (the service that creates the containers), as the original's newest
provisioner writes it:

- container of workspace `<id>`: `ws-<full 36-char id>` (`container_name`); the
  legacy `ws-<first 12 chars>` (`legacy_container_name`) of older provisioners is
  still recognised: checking and stopping try the full name first, then the legacy
  one (not found under either is "not running" / "already stopped");
- its volumes: `ws-<id>-configs` and `ws-<id>-claude-sessions`, `<id>` being the
  same full id or legacy prefix as its container's (`volume_names`);
  `ws-<id>-workspace` (the agent's work) is never removed;
- every container and volume the platform manages carries the labels
  `molecule.platform.managed=true` and `molecule.platform.instance=<instance id>`
  (PLATFORM_INSTANCE_ID, `default` unless set). The orphan sweep reaps a container
  whose workspace row is missing only if it carries both, with this instance's id:
  another platform sharing the engine is never touched. One whose workspace row is
  `removed` it finds by name alone (`list_workspace_containers`), labelled or not.
  A name that is neither `ws-` + 36 nor `ws-` + 12 characters of a UUID's text is
  not a workspace's and is never acted on.

Three interfaces, one per use: the health sweep asks a `ContainerChecker`, the
hibernation sweep uses a `ContainerStopper`, the orphan sweep a `ContainerReaper`.
`DockerContainers` implements all three on the Docker Engine API; `tests/fakes.py`
holds the test double. `container_backend(settings)` returns None when no backend
is configured (`CONTAINER_BACKEND=none`, the default): the sweeps that need one are
then disabled.

Errors: every failure talking to the engine is a `ContainerError`, so a sweep skips
that workspace instead of acting on a guess. "No such container" is not a failure
but an answer: not running; and stopping it has already happened.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import docker
import docker.errors
import requests

from registry.config import Settings

log = logging.getLogger(__name__)

CONTAINER_PREFIX = "ws-"
ID_PREFIX_LENGTH = 12
# The volumes the orphan sweep removes with their container; `-workspace` never.
VOLUME_SUFFIXES = ("-configs", "-claude-sessions")
MANAGED_LABEL = "molecule.platform.managed"
MANAGED_LABEL_VALUE = "true"
INSTANCE_LABEL = "molecule.platform.instance"
DEFAULT_INSTANCE_ID = "default"

# Pinned rather than negotiated: negotiation costs a /version round trip before the
# first call. 1.43 is Docker Engine 24; newer engines accept older API versions.
DEFAULT_API_VERSION = "1.43"
# Per request; a hung engine must not eat the orphan sweep's 30 s deadline.
DEFAULT_TIMEOUT_SECONDS = 10

# Docker's own rule for container names. Checked before a name goes into
# a URL path, so a name can never address another endpoint (`..`, `/`, `?`).
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# What follows `ws-` in a workspace's container or volume name: a full UUID's text or
# its first 12 characters (legacy). Nothing else is ever listed, queried or removed.
_LEGACY_KEY = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{3}"
_FULL_KEY = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
WORKSPACE_KEY_RE = re.compile(rf"^(?:{_FULL_KEY}|{_LEGACY_KEY})$")
_WORKSPACE_CONTAINER_RE = re.compile(rf"^ws-(?:{_FULL_KEY}|{_LEGACY_KEY})$")


class ContainerError(Exception):
    """The container engine could not answer; the caller must not act on a guess."""


def id_prefix(workspace_id: UUID | str) -> str:
    return str(workspace_id)[:ID_PREFIX_LENGTH]


def container_name(workspace_id: UUID | str) -> str:
    """The current name: `ws-<full id>`."""
    return f"{CONTAINER_PREFIX}{str(workspace_id).lower()}"


def legacy_container_name(workspace_id: UUID | str) -> str:
    """The name older provisioners gave: `ws-<first 12 chars of the id>`."""
    return f"{CONTAINER_PREFIX}{id_prefix(workspace_id).lower()}"


def container_names(workspace_id: UUID | str) -> tuple[str, str]:
    """Both names a workspace's container may have, the current one first."""
    return container_name(workspace_id), legacy_container_name(workspace_id)


def volume_names(workspace_key: str) -> tuple[str, ...]:
    """The volumes removed with the container named `ws-<workspace_key>`."""
    return tuple(f"{CONTAINER_PREFIX}{workspace_key}{suffix}" for suffix in VOLUME_SUFFIXES)


@dataclass(frozen=True)
class ManagedContainer:
    """A container named after a workspace; `labels` says whether it is managed."""

    name: str  # e.g. "ws-0f3c2a9b-1d2e-4f50-8a6b-7c8d9e0f1a2b" or legacy "ws-0f3c2a9b-1d2"
    workspace_prefix: str  # the part after "ws-": a full workspace id or its first 12 chars
    labels: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class ContainerChecker(Protocol):
    def is_running(self, workspace_id: UUID) -> bool:
        """True/False from the engine; raises ContainerError when it cannot tell."""
        ...


@runtime_checkable
class ContainerStopper(Protocol):
    def stop(self, workspace_id: UUID) -> None:
        """Stop the workspace's container (a missing one counts as stopped)."""
        ...


@runtime_checkable
class ContainerReaper(Protocol):
    def list_managed(self) -> list[ManagedContainer]:
        """Containers named `ws-...` carrying the managed label and this instance's id."""
        ...

    def list_workspace_containers(self) -> list[ManagedContainer]:
        """Containers named `ws-<full id>` or `ws-<first 12 chars>`, labelled or not."""
        ...

    def stop_container(self, name: str) -> None: ...

    def remove_volume(self, workspace_prefix: str) -> None:
        """Remove `ws-<key>-configs` and `ws-<key>-claude-sessions` (missing ones count
        as removed). `workspace_prefix` must be a full id or a legacy 12-character
        prefix (ContainerError otherwise)."""
        ...


def _checked_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ContainerError(f"refusing unsafe container name {name!r}")
    return name


class DockerContainers:
    """All three interfaces on the Docker Engine API (the `docker` SDK).

    The SDK client is created on first use, so a worker starts even while the engine
    is down; a failed creation is retried on the next call. Thread-safe: the SDK's
    requests session is shared, as the SDK allows. Call `close()` when done.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        version: str = DEFAULT_API_VERSION,
        timeout: int = DEFAULT_TIMEOUT_SECONDS,
        environment: Mapping[str, str] | None = None,
        instance_id: str = DEFAULT_INSTANCE_ID,
    ) -> None:
        self.base_url = base_url
        # Whose rowless containers this registry may reap (PLATFORM_INSTANCE_ID).
        self.instance_id = instance_id
        # Given an environment, the client is configured as the docker CLI is: DOCKER_HOST,
        # DOCKER_TLS_VERIFY and DOCKER_CERT_PATH (a remote engine over verified TLS, not
        # in clear text); base_url is then only what DOCKER_HOST said, for display.
        self.environment = dict(environment) if environment is not None else None
        self.version = version
        self.timeout = timeout
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    def _docker(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                try:
                    if self.environment is not None:
                        self._client = docker.DockerClient.from_env(
                            version=self.version,
                            timeout=self.timeout,
                            environment=self.environment,
                        )
                    else:  # base_url None → the SDK default (the local Unix socket)
                        self._client = docker.DockerClient(
                            base_url=self.base_url, version=self.version, timeout=self.timeout
                        )
                except (docker.errors.DockerException, requests.RequestException) as exc:
                    raise ContainerError(f"cannot create a Docker client: {exc}") from exc
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> DockerContainers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ContainerChecker
    def is_running(self, workspace_id: UUID) -> bool:
        for name in container_names(workspace_id):  # current name first, then legacy
            state = self._inspect_state(_checked_name(name))
            if state is not None:
                return bool(state.get("Running"))
        return False  # gone under both names: a real answer, not an error

    def _inspect_state(self, name: str) -> dict[str, Any] | None:
        """The container's State, or None when no container has that name."""
        try:
            attrs = self._docker().api.inspect_container(name)
        except docker.errors.NotFound:
            return None
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ContainerError(f"inspect {name}: {exc}") from exc
        return dict(attrs.get("State") or {})

    # ContainerStopper
    def stop(self, workspace_id: UUID) -> None:
        for name in container_names(workspace_id):  # current name first, then legacy
            if self._stop(_checked_name(name)):
                return
        log.info("no container of workspace %s exists; nothing to stop", workspace_id)

    # ContainerReaper
    def stop_container(self, name: str) -> None:
        if not self._stop(_checked_name(name)):
            log.info("container %s does not exist; nothing to stop", name)

    def _stop(self, name: str) -> bool:
        """Stop `name`; False when no container has that name."""
        try:
            # One call, no inspect first; the engine answers 304 if already stopped.
            # Grace period: the container's own StopTimeout (Docker default 10 s).
            self._docker().api.stop(name)
        except docker.errors.NotFound:
            return False
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ContainerError(f"stop {name}: {exc}") from exc
        return True

    def _managed_labels(self) -> dict[str, str]:
        return {MANAGED_LABEL: MANAGED_LABEL_VALUE, INSTANCE_LABEL: self.instance_id}

    def _list(self, filters: dict[str, Any], what: str) -> list[dict[str, Any]]:
        try:
            # all=True: a stopped orphan still holds its volumes, so the reaper must see
            # it too (stopping it again is a no-op). The filter runs in the engine.
            return self._docker().api.containers(all=True, filters=filters)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ContainerError(f"list {what}: {exc}") from exc

    def list_managed(self) -> list[ManagedContainer]:
        wanted = self._managed_labels()
        # Several label filters: the engine returns containers carrying all of them.
        raw = self._list({"label": [f"{k}={v}" for k, v in wanted.items()]}, "managed containers")
        found: list[ManagedContainer] = []
        for entry in raw:
            labels = entry.get("Labels") or {}
            # Re-checked here: the reaper stops what this returns, so it must never
            # include a foreign container (another platform instance's included),
            # whatever the engine did with the filter.
            if any(labels.get(key) != value for key, value in wanted.items()):
                continue
            for raw_name in entry.get("Names") or []:
                name = raw_name.lstrip("/")  # the Engine API prefixes names with "/"
                if _WORKSPACE_CONTAINER_RE.match(name):
                    found.append(
                        ManagedContainer(
                            name=name,
                            workspace_prefix=name.removeprefix(CONTAINER_PREFIX),
                            labels=dict(labels),
                        )
                    )
                    break
        return found

    def list_workspace_containers(self) -> list[ManagedContainer]:
        # The engine's name filter is a regular expression searched anywhere in the
        # name ("ws-" also matches "dev-ws-1"), so the exact shape is checked here:
        # the reaper stops what this returns.
        raw = self._list({"name": CONTAINER_PREFIX}, "workspace containers")
        found: list[ManagedContainer] = []
        for entry in raw:
            for raw_name in entry.get("Names") or []:
                name = raw_name.lstrip("/")  # the Engine API prefixes names with "/"
                if _WORKSPACE_CONTAINER_RE.match(name):
                    found.append(
                        ManagedContainer(
                            name=name,
                            workspace_prefix=name.removeprefix(CONTAINER_PREFIX),
                            labels=dict(entry.get("Labels") or {}),
                        )
                    )
                    break
        return found

    def remove_volume(self, workspace_prefix: str) -> None:
        if not WORKSPACE_KEY_RE.match(workspace_prefix):
            raise ContainerError(f"refusing unsafe workspace prefix {workspace_prefix!r}")
        failures: list[str] = []
        for name in volume_names(workspace_prefix):
            try:
                self._docker().api.remove_volume(name)
            except docker.errors.NotFound:
                log.info("volume %s does not exist; nothing to remove", name)
            except (docker.errors.DockerException, requests.RequestException) as exc:
                failures.append(f"remove volume {name}: {exc}")  # try the other one too
        if failures:
            raise ContainerError("; ".join(failures))


_KNOWN_BACKENDS = ("none", "docker")
_warned_backends: set[str] = set()


def container_backend(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> DockerContainers | None:
    """The configured backend: None for `none` (default) or an unknown value.

    `docker` talks to `DOCKER_HOST` if set, else the SDK default (the local socket), and
    honours `DOCKER_TLS_VERIFY` / `DOCKER_CERT_PATH` as the docker CLI does.
    An unknown value disables the container sweeps with a warning (once) rather than
    crashing the worker, like every other invalid option (see registry.config).
    """
    env = os.environ if environ is None else environ
    backend = settings.container_backend.strip().lower() or "none"
    if backend == "docker":
        return DockerContainers(
            base_url=env.get("DOCKER_HOST") or None,
            environment=env,
            instance_id=settings.platform_instance_id,
        )
    if backend not in _KNOWN_BACKENDS and backend not in _warned_backends:
        _warned_backends.add(backend)
        log.warning(
            "CONTAINER_BACKEND=%r is not one of %s; container sweeps are disabled",
            settings.container_backend,
            ", ".join(_KNOWN_BACKENDS),
        )
    return None


@contextmanager
def open_container_backend(settings: Settings) -> Iterator[DockerContainers | None]:
    """`container_backend` for the length of one sweep, closed afterwards."""
    backend = container_backend(settings)
    try:
        yield backend
    finally:
        if backend is not None:
            backend.close()

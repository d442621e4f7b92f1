"""Container checking, stopping and reaping (CONTRACT §5) behind small interfaces.

The platform runs each workspace as a Docker container. Naming contract shared with
the provisioner (the service that creates the containers):

- container of workspace `<id>`: `ws-<first 12 chars of str(id)>` (`container_name`);
- its data volume: `ws-<same 12 chars>-data` (`volume_name`);
- every container the platform manages carries the label `molecule.managed=true`.
  The orphan sweep reaps a container whose workspace row is missing only if it
  carries the label; one whose workspace row is `removed` it finds by name alone
  (`list_workspace_containers`), labelled or not.

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
VOLUME_SUFFIX = "-data"
MANAGED_LABEL = "molecule.managed"
MANAGED_LABEL_VALUE = "true"

# Pinned rather than negotiated: negotiation costs a /version round trip before the
# first call. 1.43 is Docker Engine 24; newer engines accept older API versions.
DEFAULT_API_VERSION = "1.43"
# Per request; a hung engine must not eat the orphan sweep's 30 s deadline.
DEFAULT_TIMEOUT_SECONDS = 10

# Docker's own rule for container names. Checked before a name goes into
# a URL path, so a name can never address another endpoint (`..`, `/`, `?`).
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# A workspace prefix is the start of a UUID string; the reaper never removes a volume
# that is not shaped like a workspace's.
_PREFIX_RE = re.compile(r"^[0-9a-fA-F-]+$")
# `ws-` + the first 12 characters of a UUID: the only names listed by name alone.
_WORKSPACE_CONTAINER_RE = re.compile(r"^ws-[0-9a-fA-F]{8}-[0-9a-fA-F]{3}$")


class ContainerError(Exception):
    """The container engine could not answer; the caller must not act on a guess."""


def id_prefix(workspace_id: UUID | str) -> str:
    return str(workspace_id)[:ID_PREFIX_LENGTH]


def container_name(workspace_id: UUID | str) -> str:
    return f"{CONTAINER_PREFIX}{id_prefix(workspace_id)}"


def volume_name(workspace_prefix: str) -> str:
    return f"{CONTAINER_PREFIX}{workspace_prefix}{VOLUME_SUFFIX}"


@dataclass(frozen=True)
class ManagedContainer:
    """A container named after a workspace; `labels` says whether it is managed."""

    name: str  # e.g. "ws-0f3c2a9b-1d2"
    workspace_prefix: str  # the part after "ws-": the first 12 chars of a workspace id
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
        """Containers named `ws-...` carrying the managed label."""
        ...

    def list_workspace_containers(self) -> list[ManagedContainer]:
        """Containers named `ws-<first 12 chars of a UUID>`, labelled or not."""
        ...

    def stop_container(self, name: str) -> None: ...

    def remove_volume(self, workspace_prefix: str) -> None:
        """Remove `ws-<prefix>-data` (a missing one counts as removed).

        `workspace_prefix` must be hex digits and `-` only (ContainerError otherwise).
        """
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
    ) -> None:
        self.base_url = base_url
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
        name = _checked_name(container_name(workspace_id))
        try:
            attrs = self._docker().api.inspect_container(name)
        except docker.errors.NotFound:
            return False  # gone: a real answer, not an error
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ContainerError(f"inspect {name}: {exc}") from exc
        return bool((attrs.get("State") or {}).get("Running"))

    # ContainerStopper
    def stop(self, workspace_id: UUID) -> None:
        self.stop_container(container_name(workspace_id))

    # ContainerReaper
    def stop_container(self, name: str) -> None:
        name = _checked_name(name)
        try:
            # One call, no inspect first; the engine answers 304 if already stopped.
            # Grace period: the container's own StopTimeout (Docker default 10 s).
            self._docker().api.stop(name)
        except docker.errors.NotFound:
            log.info("container %s does not exist; nothing to stop", name)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ContainerError(f"stop {name}: {exc}") from exc

    def _list(self, filters: dict[str, str], what: str) -> list[dict[str, Any]]:
        try:
            # all=True: a stopped orphan still holds its volume, so the reaper must see
            # it too (stopping it again is a no-op). The filter runs in the engine.
            return self._docker().api.containers(all=True, filters=filters)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ContainerError(f"list {what}: {exc}") from exc

    def list_managed(self) -> list[ManagedContainer]:
        raw = self._list({"label": f"{MANAGED_LABEL}={MANAGED_LABEL_VALUE}"}, "managed containers")
        found: list[ManagedContainer] = []
        for entry in raw:
            labels = entry.get("Labels") or {}
            # Re-checked here: the reaper stops what this returns, so it must never
            # include a foreign container, whatever the engine did with the filter.
            if labels.get(MANAGED_LABEL) != MANAGED_LABEL_VALUE:
                continue
            for raw_name in entry.get("Names") or []:
                name = raw_name.lstrip("/")  # the Engine API prefixes names with "/"
                if name.startswith(CONTAINER_PREFIX):
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
        if not _PREFIX_RE.match(workspace_prefix):
            raise ContainerError(f"refusing unsafe workspace prefix {workspace_prefix!r}")
        name = volume_name(workspace_prefix)
        try:
            self._docker().api.remove_volume(name)
        except docker.errors.NotFound:
            log.info("volume %s does not exist; nothing to remove", name)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ContainerError(f"remove volume {name}: {exc}") from exc


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
        return DockerContainers(base_url=env.get("DOCKER_HOST") or None, environment=env)
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

"""In-memory test doubles for the registry's external interfaces.

`FakeContainers` implements ContainerChecker, ContainerStopper and ContainerReaper
(registry.containers) with knobs for every failure a sweep must survive, and records
every call so tests can assert what was (not) done.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from uuid import UUID

from registry.sweeps.containers import (
    MANAGED_LABEL,
    MANAGED_LABEL_VALUE,
    ContainerError,
    ManagedContainer,
    container_name,
    volume_name,
)


@dataclass
class FakeContainers:
    """Knobs (all plain sets, mutate freely between calls):

    - `running`: workspace ids whose container runs (`is_running` → True);
    - `failing`: workspace ids for which `is_running` and `stop` raise ContainerError;
    - `stop_fails`: when True, every `stop`/`stop_container` raises ContainerError;
    - `managed`: container names `list_managed` reports (`ws-<prefix>`);
    - `unlabelled`: `ws-<prefix>` container names without the managed label;
      `list_workspace_containers` reports these and the managed ones, the name
      unchecked, like an engine ignoring its filter (the sweep's own guard decides);
    - `list_fails`: when True, both listings raise ContainerError;
    - `failing_names`: container names whose `stop_container` raises;
    - `volume_fails`: prefixes whose `remove_volume` raises.

    Records: `calls` (method, argument) in order; `stopped` container names and
    `removed_volumes` volume names that succeeded. A successful stop also takes the
    workspace out of `running` and the name out of `managed` and `unlabelled`, like
    a real engine with auto-removed containers.
    """

    running: set[UUID] = field(default_factory=set)
    failing: set[UUID] = field(default_factory=set)
    stop_fails: bool = False
    managed: set[str] = field(default_factory=set)
    unlabelled: set[str] = field(default_factory=set)
    list_fails: bool = False
    failing_names: set[str] = field(default_factory=set)
    volume_fails: set[str] = field(default_factory=set)
    calls: list[tuple[str, object]] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    removed_volumes: list[str] = field(default_factory=list)
    # Sweeps may run their calls on several threads.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _record(self, method: str, arg: object) -> None:
        with self._lock:
            self.calls.append((method, arg))

    def calls_to(self, method: str) -> list[object]:
        return [arg for name, arg in self.calls if name == method]

    # ContainerChecker
    def is_running(self, workspace_id: UUID) -> bool:
        self._record("is_running", workspace_id)
        if workspace_id in self.failing:
            raise ContainerError(f"fake: cannot inspect {container_name(workspace_id)}")
        return workspace_id in self.running

    # ContainerStopper
    def stop(self, workspace_id: UUID) -> None:
        self._record("stop", workspace_id)
        if workspace_id in self.failing:
            raise ContainerError(f"fake: cannot stop {container_name(workspace_id)}")
        self._stop(container_name(workspace_id))
        self.running.discard(workspace_id)

    # ContainerReaper
    def list_managed(self) -> list[ManagedContainer]:
        self._record("list_managed", None)
        if self.list_fails:
            raise ContainerError("fake: cannot list containers")
        return [
            ManagedContainer(
                name=name,
                workspace_prefix=name.removeprefix("ws-"),
                labels={MANAGED_LABEL: MANAGED_LABEL_VALUE},
            )
            for name in sorted(self.managed)
        ]

    def list_workspace_containers(self) -> list[ManagedContainer]:
        self._record("list_workspace_containers", None)
        if self.list_fails:
            raise ContainerError("fake: cannot list containers")
        labelled = {MANAGED_LABEL: MANAGED_LABEL_VALUE}
        return [
            ManagedContainer(
                name=name,
                workspace_prefix=name.removeprefix("ws-"),
                labels=labelled if name in self.managed else {},
            )
            for name in sorted(self.managed | self.unlabelled)
            if name.startswith("ws-")
        ]

    def stop_container(self, name: str) -> None:
        self._record("stop_container", name)
        self._stop(name)
        self.running = {ws for ws in self.running if container_name(ws) != name}

    def remove_volume(self, workspace_prefix: str) -> None:
        self._record("remove_volume", workspace_prefix)
        if workspace_prefix in self.volume_fails:
            raise ContainerError(f"fake: cannot remove {volume_name(workspace_prefix)}")
        with self._lock:
            self.removed_volumes.append(volume_name(workspace_prefix))

    def add_managed(self, workspace_id: UUID | str, *, running: bool = True) -> str:
        """Pretend the platform started a container for `workspace_id`; its name."""
        name = container_name(workspace_id)
        self.managed.add(name)
        if running and isinstance(workspace_id, UUID):
            self.running.add(workspace_id)
        return name

    def add_unlabelled(self, workspace_id: UUID | str) -> str:
        """A `ws-<prefix>` container without the managed label; its name."""
        name = container_name(workspace_id)
        self.unlabelled.add(name)
        return name

    def _stop(self, name: str) -> None:
        if self.stop_fails or name in self.failing_names:
            raise ContainerError(f"fake: cannot stop {name}")
        with self._lock:
            self.stopped.append(name)
            self.managed.discard(name)
            self.unlabelled.discard(name)

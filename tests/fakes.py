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
    DEFAULT_INSTANCE_ID,
    INSTANCE_LABEL,
    MANAGED_LABEL,
    MANAGED_LABEL_VALUE,
    ContainerError,
    ManagedContainer,
    container_name,
    container_names,
    legacy_container_name,
    volume_names,
)

# The labels of a container this registry's platform instance manages.
OURS = {MANAGED_LABEL: MANAGED_LABEL_VALUE, INSTANCE_LABEL: DEFAULT_INSTANCE_ID}
# Managed by another platform instance sharing the engine.
THEIRS = {MANAGED_LABEL: MANAGED_LABEL_VALUE, INSTANCE_LABEL: "0123456789abcdef"}


@dataclass
class FakeContainers:
    """Knobs (all plain sets, mutate freely between calls):

    - `running`: workspace ids whose container runs (`is_running` → True);
    - `failing`: workspace ids for which `is_running` and `stop` raise ContainerError;
    - `stop_fails`: when True, every `stop`/`stop_container` raises ContainerError;
    - `managed`: container names `list_managed` reports (`ws-<id>` or legacy
      `ws-<prefix>`), carrying both labels with this instance's id;
    - `unlabelled`: container names without the managed labels;
    - `foreign`: container names managed by another platform instance (`list_managed`
      leaves them out, as the engine's label filter does);
      `list_workspace_containers` reports all three, the name unchecked, like an
      engine ignoring its filter (the sweep's own guard decides);
    - `list_fails`: when True, both listings raise ContainerError;
    - `failing_names`: container names whose `stop_container` raises;
    - `volume_fails`: keys (full id or legacy prefix) whose `remove_volume` raises.

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
    foreign: set[str] = field(default_factory=set)
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
        # The current name first, then the legacy one (as DockerContainers does).
        existing = self.managed | self.unlabelled | self.foreign
        names = [n for n in container_names(workspace_id) if n in existing]
        self._stop(names[0] if names else container_name(workspace_id))
        self.running.discard(workspace_id)

    # ContainerReaper
    def list_managed(self) -> list[ManagedContainer]:
        self._record("list_managed", None)
        if self.list_fails:
            raise ContainerError("fake: cannot list containers")
        return [
            ManagedContainer(name=name, workspace_prefix=name.removeprefix("ws-"), labels=OURS)
            for name in sorted(self.managed)
        ]

    def list_workspace_containers(self) -> list[ManagedContainer]:
        self._record("list_workspace_containers", None)
        if self.list_fails:
            raise ContainerError("fake: cannot list containers")

        def labels(name: str) -> dict[str, str]:
            return OURS if name in self.managed else THEIRS if name in self.foreign else {}

        return [
            ManagedContainer(
                name=name, workspace_prefix=name.removeprefix("ws-"), labels=labels(name)
            )
            for name in sorted(self.managed | self.unlabelled | self.foreign)
            if name.startswith("ws-")
        ]

    def stop_container(self, name: str) -> None:
        self._record("stop_container", name)
        self._stop(name)
        self.running = {ws for ws in self.running if name not in container_names(ws)}

    def remove_volume(self, workspace_prefix: str) -> None:
        self._record("remove_volume", workspace_prefix)
        if workspace_prefix in self.volume_fails:
            raise ContainerError(f"fake: cannot remove {volume_names(workspace_prefix)}")
        with self._lock:
            self.removed_volumes.extend(volume_names(workspace_prefix))

    def add_managed(
        self, workspace_id: UUID | str, *, running: bool = True, legacy: bool = False
    ) -> str:
        """Pretend the platform started a container for `workspace_id`; its name
        (`ws-<id>`, or the legacy `ws-<first 12>`)."""
        name = self._name(workspace_id, legacy)
        self.managed.add(name)
        if running and isinstance(workspace_id, UUID):
            self.running.add(workspace_id)
        return name

    def add_unlabelled(self, workspace_id: UUID | str, *, legacy: bool = False) -> str:
        """A workspace-named container without the managed labels; its name."""
        name = self._name(workspace_id, legacy)
        self.unlabelled.add(name)
        return name

    def add_foreign(self, workspace_id: UUID | str, *, legacy: bool = False) -> str:
        """A container another platform instance manages on the same engine; its name."""
        name = self._name(workspace_id, legacy)
        self.foreign.add(name)
        return name

    @staticmethod
    def _name(workspace_id: UUID | str, legacy: bool) -> str:
        return legacy_container_name(workspace_id) if legacy else container_name(workspace_id)

    def _stop(self, name: str) -> None:
        if self.stop_fails or name in self.failing_names:
            raise ContainerError(f"fake: cannot stop {name}")
        with self._lock:
            self.stopped.append(name)
            self.managed.discard(name)
            self.unlabelled.discard(name)
            self.foreign.discard(name)

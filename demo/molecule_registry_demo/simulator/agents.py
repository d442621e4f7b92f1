"""Simulated agents: one class per behaviour, each talking to the registry only
through the producer client (client/molecule_registry_client/__init__.py), as a real agent would.

An agent is driven by the fleet's scheduler: `setup()` once (create the workspace
the way the platform's provisioner would, then register the way the agent would),
then `tick()` whenever it is due; `tick` returns the seconds until the next one, or
None when the agent has nothing more to do (dead, hibernated, never started).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol
from uuid import UUID

from molecule_registry_client import RegistryClient, RegistryError, RegistryRefused
from molecule_registry_client.names import REGISTER_TASK
from molecule_registry_demo.simulator.behaviours import Behaviour

log = logging.getLogger(__name__)

TASKS = (
    "triage support ticket",
    "summarise meeting notes",
    "review pull request",
    "draft release notes",
    "reconcile invoices",
    "answer customer email",
)
SAMPLE_ERRORS = (
    "upstream model API returned 503",
    "tool call timed out after 30s",
    "rate limited by the model provider (429)",
)


@dataclass(frozen=True)
class Timings:
    """The registry timings the demo configured; agents pace their behaviour on them."""

    heartbeat_interval: float = 2.0
    liveness_ttl: float = 8.0
    remote_stale_after: float = 6.0
    hibernation_idle_minutes: int = 1
    provision_timeout: float = 10.0


class Operator(Protocol):
    """What the platform's operator does to a workspace outside the registry's messages
    (the platform's API writes the shared `workspaces` table): the demo's fleet.py."""

    def pause(self, workspace_id: UUID) -> None: ...


class Containers(Protocol):
    """The simulated engine as the agents see it (demo/molecule_registry_demo/simulator/fake_engine.py)."""

    def is_stopped(self, workspace_id: UUID) -> bool: ...

    def crash(self, workspace_id: UUID) -> None: ...


@dataclass
class Stats:
    """What the fleet sent, for the live summary (thread-safe counters)."""

    heartbeats: int = 0
    registrations: int = 0
    errors: int = 0
    last_error: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, heartbeats: int = 0, registrations: int = 0) -> None:
        with self._lock:
            self.heartbeats += heartbeats
            self.registrations += registrations

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = str(exc)


class SimulatedAgent:
    behaviour: ClassVar[Behaviour]
    runtime: ClassVar[str] = "langgraph"

    def __init__(
        self,
        workspace_id: UUID,
        name: str,
        *,
        rng: random.Random,
        timings: Timings,
        stats: Stats,
        containers: Containers | None = None,
        operator: Operator | None = None,
    ) -> None:
        self.workspace_id = workspace_id
        self.operator = operator
        self.name = name
        self.rng = rng
        self.timings = timings
        self.stats = stats
        self.containers = containers
        self.token: str | None = None
        self.started_at = 0.0
        self.spend_cents = rng.randint(100, 5_000)
        self.current_task: str | None = None

    # Lifecycle.

    def setup(self, client: RegistryClient) -> None:
        """Created by the provisioner (provisioning; it injects the token), then the agent
        registers with it."""
        created = client.create_workspace(
            self.name, id=str(self.workspace_id), **self.create_fields()
        )
        self.token = created.get("auth_token")
        self.register(client)

    def create_fields(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "tier": self.rng.choice((1, 1, 2, 3))}

    def register(self, client: RegistryClient) -> None:
        self.token = client.register(
            self.workspace_id,
            self.agent_card(),
            delivery_mode="poll",  # the simulator has no URL the registry could dial
            auth_token=self.token,
        )
        self.started_at = time.monotonic()
        self.stats.add(registrations=1)

    def tick(self, client: RegistryClient, now: float) -> float | None:
        self.send_heartbeat(client, now)
        return self.interval()

    # Helpers for the behaviours.

    def interval(self) -> float:
        # ±10 % jitter, so a fleet started at once does not heartbeat in lock-step.
        return self.timings.heartbeat_interval * self.rng.uniform(0.9, 1.1)

    def agent_card(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": f"simulated {self.behaviour.value} agent",
            "version": "sim-1",
            "skills": [{"id": "chat", "name": "Chat"}],
        }

    def send_heartbeat(
        self,
        client: RegistryClient,
        now: float,
        *,
        busy: bool = True,
        error_rate: float | None = None,
        sample_error: str | None = None,
        runtime_state: str = "",
    ) -> None:
        if busy:
            if self.current_task is None or self.rng.random() < 0.2:
                self.current_task = self.rng.choice(TASKS)
            self.spend_cents += self.rng.randint(0, 3)
        else:
            self.current_task = None
        client.heartbeat(
            self.workspace_id,
            self.token,
            error_rate=self.rng.uniform(0.0, 0.04) if error_rate is None else error_rate,
            sample_error=sample_error,
            active_tasks=self.rng.randint(1, 3) if busy else 0,
            uptime_seconds=int(now - self.started_at),
            current_task=self.current_task,
            monthly_spend=self.spend_cents,
            runtime_state=runtime_state,
            runtime_metadata={"capabilities": {"streaming": True}},
        )
        self.stats.add(heartbeats=1)


class HealthyAgent(SimulatedAgent):
    behaviour = Behaviour.HEALTHY

    def create_fields(self) -> dict[str, Any]:
        fields = super().create_fields()
        fields["runtime"] = self.rng.choice(("langgraph", "langgraph", "crewai", "hermes"))
        return fields


class DyingAgent(SimulatedAgent):
    """Healthy for a while, then gone for good: half hang (their liveness key expires),
    half crash with their container (the health sweep finds it gone)."""

    behaviour = Behaviour.DYING

    def setup(self, client: RegistryClient) -> None:
        super().setup(client)
        self.dies_at = self.started_at + self.timings.liveness_ttl * self.rng.uniform(0.5, 1.5)

    def tick(self, client: RegistryClient, now: float) -> float | None:
        if now >= self.dies_at:
            if self.containers is not None and self.rng.random() < 0.5:
                self.containers.crash(self.workspace_id)
            return None
        return super().tick(client, now)


class FlakyAgent(SimulatedAgent):
    """Alternates good spells and bad ones (wedged, or a high error rate)."""

    behaviour = Behaviour.FLAKY

    def setup(self, client: RegistryClient) -> None:
        super().setup(client)
        self.troubled = False
        self.trouble_kind = "errors"
        self.spell_left = self.rng.randint(2, 4)

    def tick(self, client: RegistryClient, now: float) -> float | None:
        self.spell_left -= 1
        if self.spell_left < 0:
            self.troubled = not self.troubled
            self.trouble_kind = self.rng.choice(("wedged", "errors"))
            self.spell_left = self.rng.randint(2, 4)
        if not self.troubled:
            self.send_heartbeat(client, now, error_rate=self.rng.uniform(0.0, 0.05))
        elif self.trouble_kind == "wedged":
            self.send_heartbeat(
                client, now, runtime_state="wedged", sample_error="event loop blocked for 40s"
            )
        else:
            self.send_heartbeat(
                client,
                now,
                error_rate=self.rng.uniform(0.55, 0.95),
                sample_error=self.rng.choice(SAMPLE_ERRORS),
            )
        return self.interval()


class IdleAgent(SimulatedAgent):
    """Has no work; its workspace hibernates after `hibernation_idle_minutes`, and once
    its container is stopped it is silent."""

    behaviour = Behaviour.IDLE

    def create_fields(self) -> dict[str, Any]:
        fields = super().create_fields()
        fields["hibernation_idle_minutes"] = self.timings.hibernation_idle_minutes
        return fields

    def tick(self, client: RegistryClient, now: float) -> float | None:
        if self.containers is not None and self.containers.is_stopped(self.workspace_id):
            return None  # hibernated: the container (and so this agent) was stopped
        self.send_heartbeat(client, now, busy=False)
        return self.interval()


class LaptopAgent(SimulatedAgent):
    """An external agent on a laptop: the lid closes (no heartbeats), it opens again
    and the agent re-registers with the token it was given at creation."""

    behaviour = Behaviour.LAPTOP
    runtime = "external"

    def setup(self, client: RegistryClient) -> None:
        created = client.create_workspace(self.name, id=str(self.workspace_id), runtime="external")
        self.token = created.get("auth_token")
        self.register(client)
        self._plan_next_absence()

    def _plan_next_absence(self) -> None:
        unreachable_after = max(self.timings.remote_stale_after, self.timings.liveness_ttl)
        self.leaves_at = self.started_at + unreachable_after * self.rng.uniform(0.8, 1.6)
        self.away_for = unreachable_after * self.rng.uniform(2.2, 3.0)

    def tick(self, client: RegistryClient, now: float) -> float | None:
        if now >= self.leaves_at:
            back_at = self.leaves_at + self.away_for
            if now < back_at:
                return back_at - now  # lid closed: silent until it opens
            try:
                self.register(client)  # lid open: the agent reconnects
            except RegistryError as exc:
                self.stats.failed(exc)
                return self.interval()
            self._plan_next_absence()
        return super().tick(client, now)


class StuckAgent(SimulatedAgent):
    """Its container never comes up: the workspace is created and nothing registers."""

    behaviour = Behaviour.STUCK

    def setup(self, client: RegistryClient) -> None:
        client.create_workspace(self.name, id=str(self.workspace_id), **self.create_fields())

    def tick(self, client: RegistryClient, now: float) -> float | None:
        return None


class LateAgent(SimulatedAgent):
    """Its container boots slower than the provisioning timeout: the workspace is failed
    first, then its first heartbeats bring it online (CONTRACT §12, failed → online)."""

    behaviour = Behaviour.LATE

    def setup(self, client: RegistryClient) -> None:
        created = client.create_workspace(
            self.name, id=str(self.workspace_id), **self.create_fields()
        )
        self.token = created.get("auth_token")  # the provisioner would hand it over
        self.started_at = time.monotonic()
        # Well after the provisioning sweep gave up on it.
        self.boots_at = self.started_at + 2 * self.timings.provision_timeout + 5

    def tick(self, client: RegistryClient, now: float) -> float | None:
        if now < self.boots_at:
            return self.boots_at - now
        return super().tick(client, now)


class MisconfiguredAgent(SimulatedAgent):
    """Re-registers once with a URL the registry refuses (cloud metadata): a refusal
    after its token was accepted, so its heartbeats degrade the workspace; a few beats
    later it registers properly again and the workspace is back online (CONTRACT §12)."""

    behaviour = Behaviour.MISCONFIGURED
    BAD_URL = "http://169.254.169.254/latest/meta-data/"

    def setup(self, client: RegistryClient) -> None:
        super().setup(client)
        self.beats = 0

    def tick(self, client: RegistryClient, now: float) -> float | None:
        self.beats += 1
        if self.beats == 3:
            # Refused, as intended: the URL check says no, and the registry records it.
            with contextlib.suppress(RegistryRefused):
                client.register(
                    self.workspace_id,
                    self.agent_card(),
                    url=self.BAD_URL,
                    delivery_mode="push",
                    auth_token=self.token,
                )
        elif self.beats == 9:
            self.register(client)  # fixed: a successful registration clears the failure
        return super().tick(client, now)


class PausedAgent(SimulatedAgent):
    """The operator pauses its workspace; the agent keeps restarting and registering,
    and the registry answers with the paused status instead of waking it (§12)."""

    behaviour = Behaviour.PAUSED

    def setup(self, client: RegistryClient) -> None:
        super().setup(client)
        self.beats = 0

    def tick(self, client: RegistryClient, now: float) -> float | None:
        self.beats += 1
        if self.beats == 2 and self.operator is not None:
            self.operator.pause(self.workspace_id)
        if self.beats > 2 and self.beats % 3 == 0:
            payload = {
                "id": str(self.workspace_id),
                "agent_card": self.agent_card(),
                "delivery_mode": "poll",
                "auth_token": self.token,
            }
            answer = client.call(REGISTER_TASK, payload)
            self.stats.add(registrations=1)
            log.debug("%s registered while paused: %s", self.name, answer["workspace_status"])
        return super().tick(client, now)


AGENT_CLASSES: dict[Behaviour, type[SimulatedAgent]] = {
    cls.behaviour: cls
    for cls in (
        HealthyAgent,
        DyingAgent,
        FlakyAgent,
        IdleAgent,
        LaptopAgent,
        StuckAgent,
        LateAgent,
        MisconfiguredAgent,
        PausedAgent,
    )
}

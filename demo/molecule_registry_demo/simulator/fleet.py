"""A fleet of simulated agents: start-up with progress, then a scheduler that runs
each agent's next step when it is due.

One scheduler thread keeps a heap of (due time, agent); due agents run on a small
thread pool, so one agent's blocking call (a laptop re-registering waits for its
reply) never delays the others' heartbeats. An agent is back on the heap only once
its step is done, so its own messages keep their order.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from uuid import UUID

from sqlalchemy import Engine, text

from molecule_registry_client import RegistryClient, RegistryError
from molecule_registry_demo.simulator.agents import (
    AGENT_CLASSES,
    Containers,
    Operator,
    SimulatedAgent,
    Stats,
    Timings,
)
from molecule_registry_demo.simulator.behaviours import Behaviour
from registry.ingestion.lifecycle import remove_workspace
from registry.ingestion.payloads import RemoveWorkspacePayload
from registry.uow import unit_of_work

log = logging.getLogger(__name__)

# Idle agents first: their idle time (and so their hibernation) starts earliest.
START_ORDER = (
    Behaviour.IDLE,
    Behaviour.STUCK,
    Behaviour.LATE,
    Behaviour.MISCONFIGURED,
    Behaviour.PAUSED,
    Behaviour.LAPTOP,
    Behaviour.FLAKY,
    Behaviour.DYING,
    Behaviour.HEALTHY,
)

Progress = Callable[[int, int], None]


class Fleet:
    def __init__(
        self,
        client: RegistryClient,
        counts: dict[Behaviour, int],
        *,
        timings: Timings,
        containers: Containers | None = None,
        operator: Operator | None = None,
        run_tag: str | None = None,
        seed: int | None = None,
        threads: int = 8,
    ) -> None:
        self.client = client
        self.timings = timings
        self.stats = Stats()
        self.run_tag = run_tag or uuid.uuid4().hex[:6]
        self.threads = threads
        rng = random.Random(seed)
        self.agents: list[SimulatedAgent] = []
        for behaviour in START_ORDER:
            for number in range(1, counts.get(behaviour, 0) + 1):
                cls = AGENT_CLASSES[behaviour]
                self.agents.append(
                    cls(
                        uuid.UUID(int=rng.getrandbits(128), version=4),
                        f"demo-{self.run_tag}-{behaviour.value}-{number:03d}",
                        rng=random.Random(rng.getrandbits(64)),
                        timings=timings,
                        stats=self.stats,
                        containers=containers,
                        operator=operator,
                    )
                )
        self._heap: list[tuple[float, int, SimulatedAgent]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def behaviour_of(self) -> dict[UUID, Behaviour]:
        return {agent.workspace_id: agent.behaviour for agent in self.agents}

    @property
    def name_of(self) -> dict[UUID, str]:
        return {agent.workspace_id: agent.name for agent in self.agents}

    def start(self, progress: Progress | None = None) -> None:
        """Create and register every agent (in parallel), then start the scheduler.

        Raises RegistryError (the first one) if an agent cannot be set up: a demo
        whose broker or worker is missing should stop, not limp.
        """
        done = 0
        total = len(self.agents)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="sim-setup") as pool:
            futures = {pool.submit(agent.setup, self.client): agent for agent in self.agents}
            try:
                for future in as_completed(futures):
                    future.result()
                    done += 1
                    if progress is not None:
                        progress(done, total)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        now = time.monotonic()
        for agent in self.agents:
            # Spread first heartbeats over one interval.
            self._push(now + agent.rng.uniform(0, self.timings.heartbeat_interval), agent)
        self._thread = threading.Thread(target=self._schedule, name="sim-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _push(self, due: float, agent: SimulatedAgent) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), agent))
            self._cond.notify()

    def _schedule(self) -> None:
        with ThreadPoolExecutor(self.threads, thread_name_prefix="sim-agent") as pool:
            while True:
                with self._cond:
                    while not self._stopping.is_set():
                        wait = self._heap[0][0] - time.monotonic() if self._heap else None
                        if wait is not None and wait <= 0:
                            break
                        self._cond.wait(wait)
                    if self._stopping.is_set():
                        break
                    _, _, agent = heapq.heappop(self._heap)
                pool.submit(self._step, agent)
            pool.shutdown(wait=True, cancel_futures=True)

    def _step(self, agent: SimulatedAgent) -> None:
        if self._stopping.is_set():
            return
        now = time.monotonic()
        try:
            delay = agent.tick(self.client, now)
        except RegistryError as exc:
            # Broker trouble: count it and try again next interval, as an agent would.
            self.stats.failed(exc)
            delay = agent.interval()
        except Exception:  # a bug in one simulated agent must not stop the fleet
            log.exception("simulated agent %s failed", agent.name)
            self.stats.failed(RuntimeError(f"{agent.name} crashed"))
            delay = None
        if delay is not None:
            self._push(now + delay, agent)


class DatabaseOperator:
    """The operator's pause, as the platform's API does it: a write to the shared
    `workspaces` table (CONTRACT §3), not a registry message."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def pause(self, workspace_id: UUID) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE workspaces SET status = 'paused', updated_at = now() "
                    "WHERE id = :id AND status <> 'removed'"
                ),
                {"id": workspace_id},
            )


# Exactly the names `Fleet` gives its agents, so no other workspace can ever match.
SIMULATED_NAME_PATTERN = (
    r"^demo-[0-9a-f]{6}-(" + "|".join(b.value for b in Behaviour) + r")-[0-9]{3,}$"
)


def retire_earlier_fleets(engine: Engine) -> int:
    """Remove the simulated workspaces earlier demo runs left behind; how many.

    An earlier run's agents stopped with it but their rows stay live. Left there they
    look like a fleet that died at once, and self-preservation would rightly pause all
    automatic unreachable-marking for the new run. They are removed the way any
    workspace is (tokens revoked, keys cleared, WORKSPACE_REMOVED recorded).
    """
    with engine.connect() as conn:
        ids = (
            conn.execute(
                text("SELECT id FROM workspaces WHERE status <> 'removed' AND name ~ :pattern"),
                {"pattern": SIMULATED_NAME_PATTERN},
            )
            .scalars()
            .all()
        )
    for workspace_id in ids:
        with unit_of_work(engine) as uow:
            remove_workspace(uow, RemoveWorkspacePayload(workspace_id=workspace_id))
    return len(ids)

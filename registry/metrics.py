"""Prometheus series of the registry (served by the worker: workers/metrics_endpoint.py).

Series (see docs/OPERATIONS.md):

- `registry_heartbeats_total{outcome}`            heartbeats handled: ok, ignored, rejected, …
- `registry_heartbeats_rejected_total{reason}`    refused before they applied: invalid, unauthorized, …
- `registry_heartbeat_cards_skipped_total{reason}` heartbeat `agent_card`s not used for the
                                                  backfill: not_an_object, invalid, url_refused
- `registry_transitions_total{from,to}`           status transitions applied
- `registry_sweep_runs_total{sweep,outcome}`      sweep runs: ok or error
- `registry_sweep_duration_seconds{sweep}`        histogram of sweep run time
- `registry_sweep_rows_changed_total{sweep}`      rows a sweep changed
- `registry_task_duration_seconds{task}`        histogram of every task run (tasks/base.py)
- `registry_task_results_total{task,status}`    task runs by the `status` of their result
                                                  (ok, rejected, …; `retry`, `error` when raised)
- `registry_self_preservation_active`             1 while automatic unreachable-marking is paused
                                                  (as last evaluated: `set_self_preservation`)
- `registry_queue_length{queue}`                  messages waiting per queue, read from the broker
                                                  at scrape time (workers/metrics_endpoint.py)

Every recording helper works in one process or across a prefork worker's pool
processes (the worker sets up prometheus_client's multiprocess mode itself before the
pool forks: workers/metrics_endpoint.py). A new series is defined here, at import, so that the
worker can switch it to multiprocess values; docs/grafana-dashboard.json may chart it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram

HEARTBEATS = Counter("registry_heartbeats_total", "Heartbeats handled, by outcome", ["outcome"])
HEARTBEATS_REJECTED = Counter(
    "registry_heartbeats_rejected_total",
    "Heartbeats refused before they could apply, by reason",
    ["reason"],
)
MESSAGES_REFUSED = Counter(
    "registry_messages_refused_total",
    "Messages refused, at intake (malformed envelope, headers or body) or by their task "
    "(invalid, unauthorized, ignored, …), by task (`unknown` when the name is not a "
    "registry task) and reason",
    ["task", "reason"],
)
HEARTBEAT_CARDS_SKIPPED = Counter(
    "registry_heartbeat_cards_skipped_total",
    "Heartbeat agent cards not used to backfill a workspace's card, by reason",
    ["reason"],
)
TRANSITIONS = Counter(
    "registry_transitions_total", "Status transitions applied, by from and to", ["from", "to"]
)
SWEEP_RUNS = Counter(
    "registry_sweep_runs_total",
    "Sweep runs, by sweep and outcome (ok, error)",
    ["sweep", "outcome"],
)
SWEEP_DURATION = Histogram(
    "registry_sweep_duration_seconds",
    "Time one sweep run took, by sweep",
    ["sweep"],
    # Sweeps cost in proportion to their candidates: milliseconds normally, and the
    # orphan sweep's 30 s deadline is the ceiling.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SWEEP_ROWS_CHANGED = Counter(
    "registry_sweep_rows_changed_total", "Rows a sweep changed, by sweep", ["sweep"]
)
SELF_PRESERVATION = Gauge(
    "registry_self_preservation_active",
    "1 while automatic unreachable-marking is paused (self-preservation), else 0",
    # Across pool processes: the value most recently set by a live process wins.
    multiprocess_mode="livemostrecent",
)

TASK_DURATION = Histogram(
    "registry_task_duration_seconds",
    "Time one task run took, by task name (every task; observed by tasks/base.py)",
    ["task"],
    # Heartbeats take milliseconds; the hard time limit (120 s at most) is the ceiling.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0),
)
TASK_RESULTS = Counter(
    "registry_task_results_total",
    "Task runs, by task name and the status of the result (retry, error when raised)",
    ["task", "status"],
)

# The heartbeat tasks' refusals are also counted in their own series (dashboards).
_HEARTBEAT_TASKS = frozenset({"registry.heartbeat", "registry.heartbeat_batch"})


def count_refusal(task: str, reason: str) -> None:
    """The one place a refusal is counted, for every message type; `reason` is the label
    decided where the message was refused (registry.outcomes.Refusal)."""
    MESSAGES_REFUSED.labels(task, reason).inc()
    if task in _HEARTBEAT_TASKS:
        HEARTBEATS_REJECTED.labels(reason).inc()


F = TypeVar("F", bound=Callable[..., Any])


def observe_task(task: str, status: str, seconds: float) -> None:
    """Record one finished task run (after its unit of work committed or rolled back)."""
    TASK_DURATION.labels(task).observe(seconds)
    TASK_RESULTS.labels(task, status).inc()


def set_self_preservation(active: bool) -> None:
    """Record the self-preservation state this process last evaluated."""
    SELF_PRESERVATION.set(1 if active else 0)


def record_transition(from_status: str, to_status: str, count: int = 1) -> None:
    """Count `count` workspaces moved from one status to another."""
    if count > 0:
        TRANSITIONS.labels(str(from_status), str(to_status)).inc(count)


class observe_sweep:  # lower case: used like a function, `with observe_sweep("x") as run:`
    """Time a sweep run and count the rows it changed; a context manager or a decorator.

    As a context manager, set `run.changed` to the number of rows changed:

        with observe_sweep("health") as run:
            run.changed = mark_stale(...)

    As a decorator, the function's result supplies it when it is a dict with an
    integer `changed` (what every sweep task returns):

        @observe_sweep("provisioning")
        def sweep_provisioning() -> dict: ... return {"status": "ok", "changed": n}

    An exception counts the run as `error` (and still records its duration); it is
    never swallowed.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.changed = 0
        self._started = 0.0

    def __enter__(self) -> observe_sweep:
        self.changed = 0
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        SWEEP_DURATION.labels(self.name).observe(time.perf_counter() - self._started)
        SWEEP_RUNS.labels(self.name, "ok" if exc_type is None else "error").inc()
        if self.changed > 0:
            SWEEP_ROWS_CHANGED.labels(self.name).inc(self.changed)

    def __call__(self, func: F) -> F:
        name = self.name

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # A fresh observation per call: the decorated sweep may run in parallel threads.
            with observe_sweep(name) as run:
                result = func(*args, **kwargs)
                if isinstance(result, dict) and isinstance(result.get("changed"), int):
                    run.changed = result["changed"]
                return result

        return wrapper  # type: ignore[return-value]

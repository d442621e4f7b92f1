"""Sweeps have bounds: one health sweep at a time cluster-wide, deadlines from intervals.

- A health sweep started while another runs reports `skipped` and changes nothing.
- The health sweep's container pass stops at a deadline below its interval; each
  sweep starts at a random point of the id space and wraps, so a fleet too big for
  one deadline is still covered by the next sweeps.
- The hibernation sweep's deadline follows HIBERNATION_SWEEP_INTERVAL.
- SELF_PRESERVATION_THRESHOLD outside (0, 1] falls back loudly to 0.5.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any
from uuid import UUID

import pytest
from fakes import FakeContainers
from liveness_helpers import add_fleet, fresh_liveness_state, statuses
from sqlalchemy import Engine

from registry import config
from registry.config import get_settings, load
from registry.sweeps.clusterlock import cluster_lock
from registry.sweeps.health import HEALTH_LOCK_KEY, sweep_containers, sweep_health
from registry.sweeps.hibernation import deadline_for

pytestmark = pytest.mark.integration


@pytest.fixture
def liveness_db(db: Engine) -> Any:
    yield from fresh_liveness_state(db)


def test_a_second_health_sweep_is_skipped_while_one_runs(liveness_db: Engine) -> None:
    gone = add_fleet(liveness_db, 3)
    with cluster_lock(HEALTH_LOCK_KEY) as held:  # another process is sweeping
        assert held
        result = sweep_health(get_settings(), FakeContainers())
    assert result == {"status": "ok", "changed": 0, "skipped": "another health sweep is running"}
    assert set(statuses(liveness_db, gone).values()) == {"online"}
    # Released: the next sweep runs.
    assert sweep_health(get_settings(), FakeContainers())["changed"] == 3


class SlowChecker(FakeContainers):
    delay = 0.05

    def is_running(self, workspace_id: UUID) -> bool:
        time.sleep(self.delay)
        return super().is_running(workspace_id)


class VerySlowChecker(SlowChecker):
    delay = 0.5


def test_the_container_pass_stops_at_a_deadline_below_the_interval(liveness_db: Engine) -> None:
    fleet = add_fleet(liveness_db, 30)
    running = set(fleet)
    settings = dataclasses.replace(get_settings(), health_sweep_interval=1)
    started = time.monotonic()

    result = sweep_health(settings, VerySlowChecker(running=running))

    assert time.monotonic() - started < settings.health_sweep_interval + 1
    assert result["containers"].get("deadline_exceeded") == 1
    assert 0 < result["containers"]["checked"] < len(fleet)
    assert result["containers"]["errors"] == 0  # not asked is not an error


def test_a_pass_starting_mid_range_wraps_and_covers_everyone(liveness_db: Engine) -> None:
    fleet = sorted(add_fleet(liveness_db, 12))
    middle = fleet[5]
    checker = FakeContainers()

    result = sweep_containers(checker, batch_size=4, start=middle)

    assert result.checked == 12
    assert set(statuses(liveness_db, fleet).values()) == {"offline"}


def test_two_concurrent_sweeps_do_not_both_run(liveness_db: Engine) -> None:
    add_fleet(liveness_db, 20)
    from maintenance_helpers import run_concurrently

    results = run_concurrently(3, lambda: sweep_health(get_settings(), SlowChecker()))
    ran = [r for r in results if "skipped" not in r]
    assert sum(r["changed"] for r in results) == 20
    assert len(ran) >= 1


def test_the_hibernation_deadline_follows_its_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    assert deadline_for(load({"HIBERNATION_SWEEP_INTERVAL": "20"})) == 10
    assert deadline_for(load({})) == 60

    from tasks import maintenance

    seen: dict[str, Any] = {}

    def record(stopper: Any, **kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        return {"status": "ok", "changed": 0}

    monkeypatch.setattr(maintenance, "sweep_hibernation", record)
    monkeypatch.setattr(
        maintenance, "get_settings", lambda: load({"HIBERNATION_SWEEP_INTERVAL": "8"})
    )
    maintenance.sweep_hibernation_task.apply().get()
    assert seen["deadline_seconds"] == 4


@pytest.mark.parametrize("raw", ["5", "1.5", "0", "-0.2", "nan", "inf", "half"])
def test_self_preservation_threshold_outside_0_1_falls_back_loudly(
    raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    config._warned.discard("SELF_PRESERVATION_THRESHOLD")
    with caplog.at_level(logging.WARNING, logger="registry.config"):
        settings = load({"SELF_PRESERVATION_THRESHOLD": raw})
    assert settings.self_preservation_threshold == 0.5
    assert "SELF_PRESERVATION_THRESHOLD" in caplog.text and "using the default 0.5" in caplog.text


@pytest.mark.parametrize("raw", ["1", "0.01", "0.75"])
def test_self_preservation_threshold_inside_0_1_is_kept(raw: str) -> None:
    assert load({"SELF_PRESERVATION_THRESHOLD": raw}).self_preservation_threshold == float(raw)

"""The beat schedule (CONTRACT §2, §5): every sweep, its interval, `expires` below it."""

from __future__ import annotations

import logging

import pytest

import celeryconfig
from molecule_registry_client.names import SWEEP_QUEUE, SWEEP_TASKS
from registry import config
from tasks.schedule import beat_schedule

INTERVALS = {
    "BACKSTOP_SWEEP_INTERVAL": ("registry.sweep_backstop", 30),
    "HEALTH_SWEEP_INTERVAL": ("registry.sweep_health", 15),
    "PROVISION_SWEEP_INTERVAL": ("registry.sweep_provisioning", 30),
    "HIBERNATION_SWEEP_INTERVAL": ("registry.sweep_hibernation", 120),
    "ORPHAN_SWEEP_INTERVAL": ("registry.sweep_orphans", 60),
}


def _by_task(schedule: dict) -> dict[str, dict]:
    return {entry["task"]: entry for entry in schedule.values()}


def test_every_sweep_is_scheduled_on_the_sweeps_queue_expiring_before_its_next_run():
    schedule = beat_schedule(config.load({}))
    entries = _by_task(schedule)
    assert sorted(entries) == sorted(SWEEP_TASKS)
    assert len(schedule) == len(SWEEP_TASKS)
    for entry in entries.values():
        assert entry["options"]["queue"] == SWEEP_QUEUE
        assert 0 < entry["options"]["expires"] < entry["schedule"]


def test_spec_default_intervals():
    entries = _by_task(beat_schedule(config.load({})))
    for task, default in INTERVALS.values():
        assert entries[task]["schedule"] == default


def test_celeryconfig_carries_the_schedule():
    assert celeryconfig.beat_schedule == beat_schedule(config.get_settings())


@pytest.mark.parametrize("variable", sorted(INTERVALS))
def test_each_interval_is_overridable(variable):
    task, _default = INTERVALS[variable]
    entry = _by_task(beat_schedule(config.load({variable: "1"})))[task]
    assert entry["schedule"] == 1
    assert entry["options"]["expires"] < 1


@pytest.mark.parametrize("raw", ["soon", "0", "-5", "2.5"])
@pytest.mark.parametrize("variable", sorted(INTERVALS))
def test_invalid_intervals_fall_back_with_one_warning(variable, raw, caplog, monkeypatch):
    task, default = INTERVALS[variable]
    monkeypatch.setattr(config, "_warned", set())  # "once" is per process; start afresh
    with caplog.at_level(logging.WARNING, logger="registry.config"):
        schedules = [beat_schedule(config.load({variable: raw})) for _ in range(3)]
    assert {_by_task(s)[task]["schedule"] for s in schedules} == {default}
    warnings = [r.getMessage() for r in caplog.records if variable in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "default" in warnings[0]

"""Sweeps reuse a recent self-preservation evaluation (CONTRACT §5: a tick never counts).

The reuse is for large fleets (REUSE_MIN_FLEET, 10,000); these tests lower it to 20
so a small fleet shows every rule. SELF_PRESERVATION_THRESHOLD is 0.5: a kept
evaluation allowing marking is reused only while its share is at most 0.25.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from liveness_helpers import (
    add_fleet,
    age_heartbeats,
    fresh_liveness_state,
    self_preservation_events,
    statuses,
)
from sqlalchemy import text

from registry.config import get_settings
from registry.db import get_redis
from registry.liveness.keys import SELF_PRESERVATION_LAST_KEY
from registry.liveness.selfpreservation import evaluate_now, evaluate_recent, reuse
from registry.sweeps.backstop import sweep_backstop

pytestmark = pytest.mark.integration


@pytest.fixture
def liveness_db(db):
    yield from fresh_liveness_state(db)


@pytest.fixture
def reuse_small_fleets(monkeypatch):
    monkeypatch.setattr(reuse, "REUSE_MIN_FLEET", 20)


def _kept() -> dict | None:
    raw = get_redis().get(SELF_PRESERVATION_LAST_KEY)
    return None if raw is None else json.loads(raw)


def test_an_evaluation_is_kept_with_its_figures_for_the_reuse_age(liveness_db):
    add_fleet(liveness_db, 30)
    assessment = evaluate_now(get_settings())
    kept = _kept()
    assert kept is not None
    assert kept["reason"] is None
    assert kept["figures"] == assessment.figures
    ttl_ms = get_redis().pttl(SELF_PRESERVATION_LAST_KEY)
    assert 0 < ttl_ms <= get_settings().self_preservation_reuse_seconds * 1000


def test_a_recent_evaluation_is_reused_within_its_age_then_measured_again(
    liveness_db, reuse_small_fleets
):
    quiet = add_fleet(liveness_db, 5)
    add_fleet(liveness_db, 25)
    assert not evaluate_now(get_settings()).paused  # share 0: reusable

    # Most of the fleet goes quiet: within the reuse age the kept answer still stands
    # (the documented error bound) ...
    age_heartbeats(liveness_db, quiet, "10 minutes")
    more = add_fleet(liveness_db, 40, heartbeat_age="10 minutes")
    assert not evaluate_recent(get_settings()).paused
    assert self_preservation_events(liveness_db) == []

    # ... and once it has expired, the next tick measures: one start, nothing marked.
    get_redis().delete(SELF_PRESERVATION_LAST_KEY)
    result = sweep_backstop(get_settings())
    assert (result["changed"], result.get("paused")) == (0, "self_preservation")
    assert statuses(liveness_db, more) == dict.fromkeys(more, "online")
    assert [e["active"] for e in self_preservation_events(liveness_db)] == [True]
    # The pause is kept too, and reused: still one start.
    assert evaluate_recent(get_settings()).reason == "fleet_share"
    assert sweep_backstop(get_settings())["changed"] == 0
    assert [e["active"] for e in self_preservation_events(liveness_db)] == [True]


def test_a_start_recorded_by_another_evaluator_stops_the_reuse_at_once(
    liveness_db, reuse_small_fleets
):
    add_fleet(liveness_db, 30)
    assert not evaluate_now(get_settings()).paused
    quiet = add_fleet(liveness_db, 40, heartbeat_age="10 minutes")
    # Another evaluator (a listener, another beat) started self-preservation meanwhile.
    with liveness_db.begin() as conn:
        conn.execute(
            text(
                "UPDATE registry_self_preservation "
                "SET active = true, reason = 'fleet_share', since = now()"
            )
        )
    assert evaluate_recent(get_settings()).reason == "fleet_share"
    assert sweep_backstop(get_settings())["changed"] == 0
    assert statuses(liveness_db, quiet) == dict.fromkeys(quiet, "online")


def test_a_share_above_half_the_threshold_is_measured_every_tick(liveness_db, reuse_small_fleets):
    quiet = add_fleet(liveness_db, 10, heartbeat_age="100 seconds")  # at risk, not stale
    add_fleet(liveness_db, 20)
    assessment = evaluate_now(get_settings())
    assert not assessment.paused
    assert assessment.figures["share_at_most"] > 0.25
    age_heartbeats(liveness_db, quiet, "10 minutes")
    add_fleet(liveness_db, 20, heartbeat_age="10 minutes")  # 30 of 50 at risk
    assert evaluate_recent(get_settings()).reason == "fleet_share"


def test_small_fleets_are_always_measured(liveness_db):
    add_fleet(liveness_db, 30)
    assert not evaluate_now(get_settings()).paused
    add_fleet(liveness_db, 40, heartbeat_age="10 minutes")
    assert evaluate_recent(get_settings()).reason == "fleet_share"


def test_reuse_zero_keeps_nothing_and_always_measures(liveness_db, reuse_small_fleets):
    settings = dataclasses.replace(get_settings(), self_preservation_reuse_seconds=0)
    add_fleet(liveness_db, 30)
    assert not evaluate_now(settings).paused
    assert _kept() is None
    add_fleet(liveness_db, 40, heartbeat_age="10 minutes")
    assert evaluate_recent(settings).reason == "fleet_share"


def test_an_unreadable_kept_evaluation_is_ignored(liveness_db, reuse_small_fleets):
    add_fleet(liveness_db, 30)
    get_redis().set(SELF_PRESERVATION_LAST_KEY, "not json", px=5000)
    add_fleet(liveness_db, 40, heartbeat_age="10 minutes")
    assert evaluate_recent(get_settings()).reason == "fleet_share"
    assert _kept()["reason"] == "fleet_share"  # replaced by the fresh evaluation

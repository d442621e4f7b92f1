"""History retention (CONTRACT §3): `registry.prune_events` keeps EVENTS_RETENTION_DAYS.

It deletes only rows older than the window, never an event still in the outbox
(unpublished), does nothing when the setting is 0, works in bounded batches that
re-queue the task while more is due, and two runs at once split the work harmlessly.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import pytest
from maintenance_helpers import environment, run_concurrently
from sqlalchemy import Engine, text

from registry import config
from registry.config import get_settings
from registry.events.retention import prune_events, retention_horizon

pytestmark = pytest.mark.integration


def add_events(engine: Engine, count: int, age: str, *, unpublished: bool = False) -> list[int]:
    """`count` recorded events created `age` ago (an SQL interval); maybe still in the outbox."""
    with engine.begin() as conn:
        ids = list(
            conn.execute(
                text(
                    """
                    INSERT INTO structure_events (event_type, workspace_id, payload, created_at)
                    SELECT 'WORKSPACE_ONLINE', gen_random_uuid(), '{}'::jsonb,
                           now() - CAST(:age AS interval) - g * interval '1 millisecond'
                    FROM generate_series(1, :count) AS g
                    RETURNING id
                    """
                ),
                {"age": age, "count": count},
            ).scalars()
        )
        if unpublished:
            conn.execute(
                text(
                    "INSERT INTO event_outbox (event_id, created_at) "
                    "SELECT id, created_at FROM structure_events WHERE id = ANY(:ids)"
                ),
                {"ids": ids},
            )
    return ids


def remaining(engine: Engine, ids: list[int]) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM structure_events WHERE id = ANY(:ids)"), {"ids": ids}
            ).scalar_one()
        )


def test_deletes_only_what_is_older_than_the_window(db: Engine) -> None:
    old = add_events(db, 30, "91 days")
    young = add_events(db, 20, "89 days")
    fresh = add_events(db, 5, "1 minute")
    run = prune_events(get_settings())
    assert (run.deleted, run.more) == (30, False)
    assert remaining(db, old) == 0
    assert remaining(db, young) == 20
    assert remaining(db, fresh) == 5
    assert prune_events(get_settings()).deleted == 0  # twice: nothing more


def test_never_deletes_an_unpublished_event(db: Engine) -> None:
    unpublished = add_events(db, 10, "200 days", unpublished=True)
    published = add_events(db, 10, "200 days")
    assert prune_events(get_settings()).deleted == 10
    assert remaining(db, unpublished) == 10
    assert remaining(db, published) == 0
    with db.connect() as conn:
        outbox = conn.execute(text("SELECT count(*) FROM event_outbox")).scalar_one()
    assert outbox == 10  # the relay still finds them


def test_the_window_follows_the_setting_and_zero_keeps_everything(db: Engine) -> None:
    week_old = add_events(db, 4, "8 days")
    with environment(EVENTS_RETENTION_DAYS="0"):
        assert prune_events(get_settings()).deleted == 0
        with db.connect() as conn:
            assert retention_horizon(conn) is None
    assert remaining(db, week_old) == 4
    with environment(EVENTS_RETENTION_DAYS="7"):
        with db.connect() as conn:
            horizon = retention_horizon(conn)
            now = conn.execute(text("SELECT now()")).scalar_one()
        assert horizon is not None
        assert abs((now - horizon) - timedelta(days=7)) < timedelta(seconds=5)
        assert prune_events(get_settings()).deleted == 4


@pytest.mark.parametrize("raw", ["forever", "-1", "2.5"])
def test_an_invalid_setting_falls_back_to_90_days_loudly(raw, caplog, monkeypatch) -> None:
    monkeypatch.setattr(config, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="registry.config"):
        settings = config.load({"EVENTS_RETENTION_DAYS": raw})
    assert settings.events_retention_days == 90
    assert "EVENTS_RETENTION_DAYS" in caplog.text


def test_bounded_batches_say_when_more_is_due(db: Engine) -> None:
    add_events(db, 25, "120 days")
    first = prune_events(get_settings(), batch_size=10, max_batches=2)
    assert (first.deleted, first.batches, first.more) == (20, 2, True)
    rest = prune_events(get_settings(), batch_size=10, max_batches=2)
    assert (rest.deleted, rest.more) == (5, False)


def test_two_pruners_at_once_split_the_work(db: Engine) -> None:
    old = add_events(db, 3000, "100 days")
    keep = add_events(db, 50, "100 days", unpublished=True)
    runs = run_concurrently(
        3, lambda: prune_events(get_settings(), batch_size=100, max_batches=1000)
    )
    assert sum(r.deleted for r in runs) == 3000  # each row deleted once, none twice
    assert remaining(db, old) == 0
    assert remaining(db, keep) == 50


def test_a_pruner_never_waits_on_rows_another_holds(db: Engine) -> None:
    add_events(db, 20, "100 days")
    held = threading.Event()
    release = threading.Event()

    def hold_oldest() -> None:
        with db.begin() as conn:
            conn.execute(
                text("SELECT id FROM structure_events ORDER BY created_at LIMIT 5 FOR UPDATE")
            )
            held.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold_oldest)
    holder.start()
    try:
        assert held.wait(timeout=10)
        started = time.monotonic()
        run = prune_events(get_settings())
        assert time.monotonic() - started < 5
        assert run.deleted == 15  # the 5 held rows are skipped, not waited for
    finally:
        release.set()
        holder.join(timeout=10)
    assert prune_events(get_settings()).deleted == 5


def test_the_task_on_the_sweeps_queue(db: Engine, worker, celery_app) -> None:
    old = add_events(db, 12, "95 days")
    result = celery_app.send_task("registry.prune_events", queue="registry.sweeps").get(timeout=20)
    assert result["status"] == "ok"
    assert (result["changed"], result["more"]) == (12, False)
    assert remaining(db, old) == 0


def test_the_task_re_queues_itself_while_more_is_due(db: Engine, worker, celery_app, monkeypatch):
    from registry.events import retention

    monkeypatch.setattr(retention, "BATCH_SIZE", 10)
    monkeypatch.setattr(retention, "MAX_BATCHES", 2)
    old = add_events(db, 65, "95 days")
    first = celery_app.send_task("registry.prune_events", queue="registry.sweeps").get(timeout=20)
    assert (first["changed"], first["more"]) == (20, True)
    deadline = time.monotonic() + 20  # the rest follows without waiting for beat
    while time.monotonic() < deadline and remaining(db, old):
        time.sleep(0.05)
    assert remaining(db, old) == 0

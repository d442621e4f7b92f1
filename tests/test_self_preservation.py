"""Self-preservation (CONTRACT §5): no mass "unreachable" caused by the registry's own trouble.

Defaults: HEARTBEAT_BACKLOG_SECONDS 60, SELF_PRESERVATION_THRESHOLD 0.5 (fleets of
20 or more), LIVENESS_TTL_SECONDS 180 (at risk after 90 s), REMOTE_LIVENESS_STALE_AFTER
180 (external at risk after 90 s).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from click.testing import CliRunner
from fakes import FakeContainers
from liveness_helpers import (
    PrivateRedis,
    add_fleet,
    age_heartbeats,
    fresh_liveness_state,
    private_rabbitmq_vhost,
    self_preservation_events,
    statuses,
    unreachable_events,
    wait_until,
)
from sqlalchemy import text
from workerproc import WORKER_READY, celery_worker_argv, managed_process, process_env

from cli import main as cli
from molecule_registry_client.names import HEARTBEAT_QUEUE, SWEEP_QUEUE
from registry.config import get_settings
from registry.liveness.keys import liveness_key
from registry.liveness.selfpreservation import (
    HeartbeatProbePayload,
    evaluate_now,
    measure_backlog,
    record_probe,
    send_probe_if_due,
)
from registry.sweeps.backstop import sweep_backstop
from registry.sweeps.health import sweep_health
from workers.liveness import LivenessListener

pytestmark = pytest.mark.integration


@pytest.fixture
def liveness_db(db):
    yield from fresh_liveness_state(db)


def _probe(engine, *, sent_ago: str, consumed: bool = False) -> int:
    """A probe row as if enqueued `sent_ago` (an SQL interval) and maybe consumed now."""
    with engine.begin() as conn:
        probe_id = conn.execute(
            text(
                "INSERT INTO heartbeat_probes (sent_at) "
                "VALUES (now() - CAST(:ago AS interval)) RETURNING id"
            ),
            {"ago": sent_ago},
        ).scalar_one()
        if consumed:
            record_probe(conn, HeartbeatProbePayload(probe_id=probe_id))
    return probe_id


def _state(engine) -> tuple[bool, str | None]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT active, reason FROM registry_self_preservation")).one()
    return row.active, row.reason


# --- the backlog signal --------------------------------------------------------------


def test_a_waiting_probe_older_than_the_threshold_pauses_marking_until_the_queue_moves(
    liveness_db,
):
    dead = add_fleet(liveness_db, 2, heartbeat_age="10 minutes")
    _probe(liveness_db, sent_ago="5 minutes")  # enqueued 5 min ago, nobody ran it yet

    paused = sweep_backstop(get_settings())
    assert paused["paused"] == "self_preservation"
    assert paused["reason"] == "heartbeat_backlog"
    assert paused["changed"] == 0
    assert statuses(liveness_db, dead) == dict.fromkeys(dead, "online")
    (start,) = self_preservation_events(liveness_db)
    assert start["active"] is True
    assert start["reason"] == "heartbeat_backlog"
    assert start["figures"]["backlog_seconds"] >= 299
    assert _state(liveness_db) == (True, "heartbeat_backlog")

    # Still paused on the next tick: no second start event.
    assert sweep_backstop(get_settings())["paused"] == "self_preservation"
    assert len(self_preservation_events(liveness_db)) == 1

    # The consumer caught up: a fresh probe ran at once.
    _probe(liveness_db, sent_ago="1 second", consumed=True)
    resumed = sweep_backstop(get_settings())
    assert "paused" not in resumed
    assert resumed["changed"] == 2
    start, end = self_preservation_events(liveness_db)
    assert end["active"] is False
    assert _state(liveness_db)[0] is False


def test_backlog_is_the_older_of_waiting_age_and_last_lag(liveness_db):
    with liveness_db.connect() as conn:
        assert measure_backlog(conn).seconds == 0
    # A probe that waited 2 minutes before it ran: the last lag says backlogged.
    _probe(liveness_db, sent_ago="2 minutes", consumed=True)
    with liveness_db.connect() as conn:
        assert 119 <= measure_backlog(conn).seconds <= 125
    # A newer one, still waiting for 30 s: the last lag still dominates.
    waiting = _probe(liveness_db, sent_ago="30 seconds")
    with liveness_db.connect() as conn:
        assert measure_backlog(conn).seconds >= 119
    # It ran: lag 30 s, and the older probe is superseded (deleted).
    with liveness_db.begin() as conn:
        assert 29 <= record_probe(conn, HeartbeatProbePayload(probe_id=waiting)) <= 35
    with liveness_db.connect() as conn:
        backlog = measure_backlog(conn)
        assert conn.execute(text("SELECT count(*) FROM heartbeat_probes")).scalar_one() == 1
    assert 29 <= backlog.seconds <= 35


def test_a_lost_probe_is_superseded_by_a_newer_one(liveness_db):
    _probe(liveness_db, sent_ago="10 minutes")  # lost with a purged queue: never consumed
    _probe(liveness_db, sent_ago="2 seconds", consumed=True)
    with liveness_db.connect() as conn:
        assert measure_backlog(conn).seconds < 10


def test_probes_are_sent_when_none_is_waiting_or_the_waiting_one_is_old(liveness_db):
    sent: list[dict] = []
    settings = get_settings()
    first = send_probe_if_due(settings, sent.append)
    assert first is not None
    assert sent == [{"probe_id": first, "sent_at": pytest.approx(sent[0]["sent_at"])}]
    assert send_probe_if_due(settings, sent.append) is None  # one is waiting, fresh
    with liveness_db.begin() as conn:
        conn.execute(text("UPDATE heartbeat_probes SET sent_at = now() - interval '61 seconds'"))
    assert send_probe_if_due(settings, sent.append) is not None  # maybe lost: another
    assert len(sent) == 2


def test_a_probe_the_broker_refused_is_forgotten(liveness_db):
    def refuse(_payload: dict) -> None:
        raise ConnectionError("broker down")

    assert send_probe_if_due(get_settings(), refuse) is None
    with liveness_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM heartbeat_probes")).scalar_one() == 0


# --- the fleet-share signal ------------------------------------------------------------


def test_most_of_the_fleet_going_quiet_at_once_pauses_then_resumes(liveness_db):
    quiet = add_fleet(liveness_db, 13, heartbeat_age="10 minutes")
    alive = add_fleet(liveness_db, 11, heartbeat_age="10 seconds")

    result = sweep_backstop(get_settings())
    assert (result["paused"], result["reason"]) == ("self_preservation", "fleet_share")
    assert statuses(liveness_db, quiet) == dict.fromkeys(quiet, "online")
    (start,) = self_preservation_events(liveness_db)
    figures = start["figures"]
    assert (figures["at_risk"], figures["fleet"]) == (13, 24)
    assert figures["share"] == pytest.approx(13 / 24, abs=0.001)

    # The same trouble seen by the remote-agent pass and the listener: still paused.
    assert sweep_health(get_settings(), None)["remote"]["paused"] == "self_preservation"
    assert LivenessListener(get_settings()).handle([liveness_key(quiet[0])]) == 0
    assert len(self_preservation_events(liveness_db)) == 1

    # They were alive after all, except one: the pause ends, marking resumes on its own.
    age_heartbeats(liveness_db, quiet[1:], "1 second")
    result = sweep_backstop(get_settings())
    assert result["changed"] == 1
    assert statuses(liveness_db, [quiet[0]]) == {quiet[0]: "offline"}
    assert [e["active"] for e in self_preservation_events(liveness_db)] == [True, False]
    assert statuses(liveness_db, alive) == dict.fromkeys(alive, "online")


def test_workspaces_already_marked_in_the_window_count_toward_the_share(liveness_db):
    lost = add_fleet(liveness_db, 8, heartbeat_age="10 minutes")
    assert LivenessListener(get_settings()).handle([liveness_key(ws) for ws in lost]) == 8
    add_fleet(liveness_db, 5, heartbeat_age="100 seconds")  # at risk, not yet stale
    add_fleet(liveness_db, 11, heartbeat_age="10 seconds")

    assessment = evaluate_now(get_settings())
    assert assessment.reason == "fleet_share"
    assert assessment.figures["recently_unreachable"] == 8
    assert assessment.figures["fleet"] == 24  # 16 live + 8 recently lost


def test_small_fleets_are_not_protected(liveness_db):
    quiet = add_fleet(liveness_db, 19, heartbeat_age="10 minutes")
    assert sweep_backstop(get_settings())["changed"] == 19
    assert statuses(liveness_db, quiet) == dict.fromkeys(quiet, "offline")
    assert self_preservation_events(liveness_db) == []


def test_the_threshold_is_the_settings(liveness_db):
    add_fleet(liveness_db, 13, heartbeat_age="10 minutes")
    add_fleet(liveness_db, 11, heartbeat_age="10 seconds")
    lenient = dataclasses.replace(get_settings(), self_preservation_threshold=0.6)
    assert sweep_backstop(lenient)["changed"] == 13
    assert self_preservation_events(liveness_db) == []


def test_explicit_signals_are_not_paused(liveness_db):
    quiet = add_fleet(liveness_db, 20, runtime="external", heartbeat_age="10 minutes")
    (gone,) = add_fleet(liveness_db, 1)
    result = sweep_health(get_settings(), FakeContainers(running=set()))
    assert result["remote"]["paused"] == "self_preservation"
    assert statuses(liveness_db, quiet) == dict.fromkeys(quiet, "online")
    assert statuses(liveness_db, [gone]) == {gone: "offline"}  # container gone: acted on


def test_the_cli_shows_the_state(liveness_db):
    add_fleet(liveness_db, 20, heartbeat_age="10 minutes")
    evaluate_now(get_settings())
    shown = CliRunner().invoke(cli, ["self-preservation"])
    assert shown.exit_code == 0, shown.output
    state = json.loads(shown.output)
    assert (state["active"], state["reason"]) == (True, "fleet_share")
    assert state["figures"]["at_risk"] == 20


# --- end to end: a real broker, the heartbeat consumer stopped -------------------------


@pytest.fixture(params=["redis", "rabbitmq"])
def private_broker(request, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(broker URL, result backend URL) that no other worker of the test run consumes."""
    with PrivateRedis(tmp_path) as redis_server:
        if request.param == "redis":
            yield redis_server.url(0), redis_server.url(1)
        else:
            with private_rabbitmq_vhost() as amqp_url:
                yield amqp_url, redis_server.url(1)


def test_stalled_heartbeat_consumer_gives_no_mass_offline_one_start_one_end(
    liveness_db, test_env, tmp_path: Path, monkeypatch, private_broker
):
    """24 agents keep sending while no process consumes registry.heartbeats.

    On a broker of its own (Redis, then RabbitMQ) a worker consumes registry.sweeps
    only; the heartbeat consumer starts later. The probe is real: the backstop enqueues
    it and it waits in the queue.
    """
    broker_url, backend_url = private_broker
    internal = add_fleet(liveness_db, 20, heartbeat_age="20 seconds")
    external = add_fleet(liveness_db, 4, runtime="external", heartbeat_age="20 seconds")
    fleet = internal + external
    env = process_env(
        test_env, CELERY_BROKER_URL=broker_url, CELERY_RESULT_BACKEND=backend_url, METRICS_PORT="0"
    )
    # The project's Celery settings (queues, exchanges, JSON) on that broker (Celery
    # reads these two from the environment before its configuration).
    monkeypatch.setenv("CELERY_BROKER_URL", broker_url)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", backend_url)
    producer = Celery("test-producer")
    producer.config_from_object("celeryconfig")

    def run(task: str) -> dict:
        return producer.send_task(task, queue=SWEEP_QUEUE).get(timeout=30)

    try:
        with managed_process(
            celery_worker_argv([SWEEP_QUEUE], pool="threads"),
            env=env,
            log_dir=tmp_path,
            ready=WORKER_READY,
            name="sweeps-worker",
        ):
            first = run("registry.sweep_backstop")  # healthy so far; sends a probe
            assert first == {"status": "ok", "changed": 0, "more": False}
            for ws in fleet:  # the fleet keeps sending
                producer.send_task(
                    "registry.heartbeat", args=[{"workspace_id": str(ws)}], queue=HEARTBEAT_QUEUE
                )
            # Five minutes pass with the consumer stopped: the probe still waits, and the
            # last applied heartbeats are five minutes old.
            with liveness_db.begin() as conn:
                conn.execute(
                    text("UPDATE heartbeat_probes SET sent_at = sent_at - interval '5 minutes'")
                )
            age_heartbeats(liveness_db, fleet, "5 minutes")

            backstop = run("registry.sweep_backstop")
            assert (backstop["paused"], backstop["reason"]) == (
                "self_preservation",
                "heartbeat_backlog",
            )
            assert run("registry.sweep_health")["remote"]["paused"] == "self_preservation"
            assert run("registry.sweep_backstop")["changed"] == 0
            assert unreachable_events(liveness_db) == []
            (start,) = self_preservation_events(liveness_db)
            assert start["active"] is True
            assert start["figures"]["backlog_seconds"] >= 299

            # The heartbeat consumer comes back and drains the queue.
            with managed_process(
                celery_worker_argv([HEARTBEAT_QUEUE], pool="threads"),
                env=env,
                log_dir=tmp_path,
                ready=WORKER_READY,
                name="heartbeat-worker",
            ):
                wait_until(
                    lambda: _fresh_count(liveness_db) == len(fleet),
                    timeout=30,
                    what="the queued heartbeats applied",
                )
                ended = False
                for _ in range(40):
                    if "paused" not in run("registry.sweep_backstop"):
                        ended = True
                        break
                    wait_until(lambda: not _waiting_probes(liveness_db), timeout=10)
                assert ended, self_preservation_events(liveness_db)
    finally:
        producer.close()

    assert [e["active"] for e in self_preservation_events(liveness_db)] == [True, False]
    assert unreachable_events(liveness_db) == []
    assert statuses(liveness_db, fleet) == dict.fromkeys(fleet, "online")


def _fresh_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT count(*) FROM workspaces "
                "WHERE last_heartbeat_at > now() - interval '30 seconds'"
            )
        ).scalar_one()


def _waiting_probes(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM heartbeat_probes WHERE consumed_at IS NULL")
        ).scalar_one()

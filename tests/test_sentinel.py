"""Redis behind Sentinel (REDIS_SENTINELS, REDIS_SENTINEL_MASTER; CONTRACT §1).

Real processes against a private Sentinel group (scripts/redis-sentinel.sh): a worker
whose broker, result backend and liveness keys follow the primary through a kill -9,
a liveness listener that re-subscribes on the new primary, and every process refusing
a Sentinel configuration that cannot work, in one line.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from liveness_helpers import (
    LISTENER_READY,
    add_fleet,
    fresh_liveness_state,
    listener_argv,
    statuses,
    wait_until,
)
from sentinel_helpers import MASTER, SentinelGroup
from sqlalchemy import text
from workerproc import (
    WORKER_READY,
    celery_beat_argv,
    celery_worker_argv,
    managed_process,
    process_env,
)

from molecule_registry_client import RegistryClient, RegistryError
from registry import config
from registry.liveness.keys import liveness_key
from registry.redisconn import sentinel_transport_options

pytestmark = pytest.mark.integration


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    with SentinelGroup(tmp_path / "sentinel") as started:
        yield started


@pytest.fixture
def liveness_db(db):
    yield from fresh_liveness_state(db)


# -- settings ------------------------------------------------------------------------


def test_sentinel_settings_parse_and_bad_values_fall_back_loudly(caplog):
    good = config.load(
        {
            "REDIS_SENTINELS": " 10.0.0.1:26379, [::1]:26380 ,s3:1",
            "REDIS_SENTINEL_MASTER": "mymaster",
            "REDIS_URL": "redis://:s%40cret@ignored:6379/5",
        }
    )
    assert good.redis_sentinels == (("10.0.0.1", 26379), ("::1", 26380), ("s3", 1))
    assert good.sentinel
    # Celery's own Sentinel transport, with REDIS_URL's database and password.
    expected = ";".join(
        f"sentinel://:s%40cret@{host}/5" for host in ("10.0.0.1:26379", "[::1]:26380", "s3:1")
    )
    assert good.effective_broker_url == expected
    assert good.effective_result_backend == expected
    # Given explicitly, the broker and backend are left alone.
    explicit = config.load(
        {
            **{"REDIS_SENTINELS": "h:1", "REDIS_SENTINEL_MASTER": "m"},
            "CELERY_BROKER_URL": "amqp://x//",
        }
    )
    assert explicit.effective_broker_url == "amqp://x//"

    config._warned.clear()
    with caplog.at_level(logging.WARNING, logger="registry.config"):
        bad = config.load({"REDIS_SENTINELS": "h1:26379,h2", "REDIS_SENTINEL_MASTER": "a b"})
    assert bad.redis_sentinels == () and bad.redis_sentinel_master == ""
    assert "REDIS_SENTINELS='h1:26379,h2' is not valid" in caplog.text
    assert "REDIS_SENTINEL_MASTER='a b' is not valid" in caplog.text
    for raw in ("h:0", "h:65536", ":1", "h:x", "h:1,,h:2"):
        with pytest.raises(ValueError):
            config.host_ports(raw)


# -- a worker through a failover -----------------------------------------------------


def _uptime(engine, ws: str) -> int | None:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT uptime_seconds FROM workspaces WHERE id = :id"), {"id": ws}
        ).scalar()


def _until_sent(send, timeout: float = 30) -> float:
    """Send (a producer retrying while the failover lasts); seconds it took."""
    start = time.monotonic()
    while True:
        try:
            send()
            return time.monotonic() - start
        except RegistryError:
            if time.monotonic() - start > timeout:
                raise
            time.sleep(0.2)


def test_worker_broker_backend_and_liveness_keys_follow_the_primary_through_a_kill(
    db, test_env, group: SentinelGroup, tmp_path: Path
):
    settings = config.load(group.env())
    broker = settings.effective_broker_url
    env = process_env(test_env, **group.env())
    with (
        managed_process(
            celery_worker_argv(concurrency=1),
            env=env,
            log_dir=tmp_path,
            ready=WORKER_READY,
            name="worker",
        ) as worker,
        RegistryClient(
            broker,
            result_backend=broker,
            transport_options=sentinel_transport_options(settings),
            result_timeout=20,
        ) as client,
    ):
        ws = str(uuid.uuid4())
        token = client.register(ws, {"name": "sentinel-agent"}, delivery_mode="poll")
        client.heartbeat(ws, token, uptime_seconds=1)
        wait_until(lambda: _uptime(db, ws) == 1, what="heartbeat 1 applied")
        first = group.primary_port()
        assert group.node(first).exists(liveness_key(ws))

        killed = group.kill_primary()
        _until_sent(lambda: client.heartbeat(ws, token, uptime_seconds=2))
        wait_until(lambda: _uptime(db, ws) == 2, timeout=40, what="heartbeat 2 applied")
        new = group.wait_for_new_primary(killed)
        # The liveness key was written on the new primary, REDIS_URL's database.
        assert group.node(new).exists(liveness_key(ws))
        # A call that needs the result backend works after the failover too.
        reply = client.update_card(ws, {"name": "after-failover"}, auth_token=token)
        assert reply.get("status") != "error", reply
        assert worker.alive
        assert "127.0.0.1:1" not in worker.log()  # never REDIS_URL's own host


# -- the liveness listener through a failover ----------------------------------------


def _expire_on_primary(group: SentinelGroup, ids) -> None:
    primary = group.node(group.primary_port())
    pipe = primary.pipeline()
    for ws in ids:
        pipe.set(liveness_key(ws), "online", px=300)
    pipe.execute()


def _notify_flags(group: SentinelGroup, port: int) -> str:
    return group.node(port).config_get("notify-keyspace-events")["notify-keyspace-events"]


@pytest.mark.parametrize("how", ["demoted", "killed"])
def test_listener_resubscribes_on_the_new_primary(
    liveness_db, test_env, group: SentinelGroup, tmp_path: Path, how: str
):
    first = group.primary_port()
    # Notifications off everywhere: the listener must turn them on where it listens.
    for port in (first, group.base + 1):
        group.node(port).config_set("notify-keyspace-events", "")
    env = process_env(test_env, **group.env())
    with managed_process(
        listener_argv(), env=env, log_dir=tmp_path, ready=LISTENER_READY, name="listener"
    ) as listener:
        assert f"node 127.0.0.1:{first}" in listener.log()
        before = add_fleet(liveness_db, 3, heartbeat_age="10 minutes")
        _expire_on_primary(group, before)
        wait_until(
            lambda: set(statuses(liveness_db, before).values()) == {"offline"},
            what="expiries on the first primary applied",
        )

        if how == "demoted":  # the old primary lives on as a replica (no events there)
            with group.node(group.sentinel_ports[0]) as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", MASTER)
        else:
            group.kill_primary()
        second = group.wait_for_new_primary(first)
        listener.wait_for_log(rf"{LISTENER_READY} again: .* node 127.0.0.1:{second}", timeout=30)
        assert {"E", "x"} <= set(_notify_flags(group, second))

        after = add_fleet(liveness_db, 3, heartbeat_age="10 minutes")
        _expire_on_primary(group, after)
        wait_until(
            lambda: set(statuses(liveness_db, after).values()) == {"offline"},
            what="expiries on the new primary applied",
        )
        assert listener.alive


# -- bad configuration: one line at start, never a fallback ---------------------------


def _bad_settings(group: SentinelGroup, case: str) -> tuple[dict[str, str], str]:
    env = group.env()
    if case == "unknown master":
        env["REDIS_SENTINEL_MASTER"] = "no-such-master"
        return env, "know no master named 'no-such-master'"
    if case == "no sentinel answers":
        env["REDIS_SENTINELS"] = "127.0.0.1:1,127.0.0.1:2"
        return env, "no Redis Sentinel answers at 127.0.0.1:1, 127.0.0.1:2"
    env["REDIS_SENTINELS"] = "127.0.0.1"  # not host:port: the setting falls back to unset
    return env, "REDIS_SENTINEL_MASTER is set but REDIS_SENTINELS is not"


def _cli(name: str) -> list[str]:
    import sys

    return [str(Path(sys.executable).with_name("molecule-registry")), name]


@pytest.mark.parametrize("case", ["unknown master", "no sentinel answers", "master alone"])
def test_every_process_refuses_a_sentinel_configuration_that_cannot_work(
    db, test_env, group: SentinelGroup, tmp_path: Path, case: str
):
    bad, message = _bad_settings(group, case)
    env = process_env(test_env, **bad)
    processes = {
        "listener": (listener_argv(), 2),
        "worker": (celery_worker_argv(concurrency=1), 78),
        "beat": (celery_beat_argv(tmp_path / "beat-schedule"), 78),
        "gateway": ([*_cli("gateway"), "--port", "0"], 1),
        "doctor": (_cli("doctor"), 1),
    }
    if case != "unknown master":  # the same code path; the Celery ones cost seconds each
        processes = {k: v for k, v in processes.items() if k in ("listener", "doctor")}
    for name, (argv, status) in processes.items():
        with managed_process(argv, env=env, log_dir=tmp_path, name=name) as proc:
            assert proc.proc.wait(timeout=60) == status, f"{name}:\n{proc.tail()}"
            output = proc.log()
            assert message in output, f"{name}:\n{output}"
            assert "Traceback" not in output, f"{name}:\n{output}"
            if name in READY_MARKS:
                assert READY_MARKS[name] not in output
    # Nothing was written to REDIS_URL's fallback node or the Sentinels' primary.
    assert group.node(group.primary_port()).dbsize() == 0


READY_MARKS = {
    "listener": "liveness listener ready",
    "worker": " ready.",
    "gateway": "Uvicorn running",
}


# -- recorded events survive a failover: they leave the outbox once a replica has them --


@pytest.fixture
def behind_sentinel(group: SentinelGroup, monkeypatch) -> Iterator[SentinelGroup]:
    """This process's own settings pointed at the group (restored afterwards)."""
    from registry.config import reload_settings
    from registry.db import reset_redis_clients

    for key, value in group.env().items():
        monkeypatch.setenv(key, value)
    reload_settings()
    # Only Redis moves: the session's engine, which other tests listen on, stays.
    reset_redis_clients()
    yield group
    monkeypatch.undo()
    reload_settings()
    reset_redis_clients()


def _outbox(engine) -> list[int]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(text("SELECT event_id FROM event_outbox"))]


def test_recorded_events_leave_the_outbox_only_once_a_replica_has_them(db, behind_sentinel):
    import os
    import signal

    from registry.db import get_redis
    from registry.events.outbox import relay_unpublished_events
    from registry.statuses import EventType
    from registry.uow import record_event_on_commit, unit_of_work

    group = behind_sentinel
    primary = group.node(group.primary_port())
    wait_until(
        lambda: primary.info("replication").get("slave0", {}).get("state") == "online",
        what="the replica in sync",
    )
    with unit_of_work() as uow:
        record_event_on_commit(uow, EventType.WORKSPACE_REMOVED, None, {"n": 1})
    assert _outbox(db) == []  # the replica confirmed it: published for good

    replica_port = group.base + 1 if group.primary_port() == group.base else group.base
    replica_pid = int((group.dir / str(replica_port) / "redis.pid").read_text())
    os.kill(replica_pid, signal.SIGSTOP)  # connected, but acknowledging nothing
    try:
        with unit_of_work() as uow:
            event = record_event_on_commit(uow, EventType.WORKSPACE_REMOVED, None, {"n": 2})
        # On the primary only: a failover now could lose it, so the relay keeps it.
        assert _outbox(db) == [event.event_id]
    finally:
        os.kill(replica_pid, signal.SIGCONT)
    wait_until(lambda: group.node(replica_port).xlen("events:stream") == 2, what="replicated")
    with db.begin() as conn:
        relayed = relay_unpublished_events(conn, get_redis(), grace_seconds=0, stream_maxlen=1000)
    assert relayed == 1
    assert _outbox(db) == []

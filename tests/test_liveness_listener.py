"""The liveness listener as a real process (CONTRACT §1, §5): real keys expiring in Redis.

Each listener here talks to a private redis-server (its REDIS_URL), so restarting it
or refusing CONFIG never disturbs the shared one; PostgreSQL is the test run's.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from liveness_helpers import (
    LISTENER_READY,
    PrivateRedis,
    add_fleet,
    fresh_liveness_state,
    listener_argv,
    statuses,
    unreachable_events,
    wait_until,
)
from workerproc import PROJECT_ROOT, managed_process, process_env

from registry.liveness.keys import liveness_key, url_key

pytestmark = pytest.mark.integration


@pytest.fixture
def liveness_db(db):
    yield from fresh_liveness_state(db)


CHANGE_LINE = r"workspace \S+ \w+ -> \w+ \(liveness_expired\)"


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def _env(test_env: dict[str, str], redis_url: str) -> dict[str, str]:
    return process_env(test_env, REDIS_URL=redis_url, METRICS_PORT="0")


def test_two_listeners_turn_expiring_keys_into_one_change_each(
    liveness_db, test_env, private_redis, tmp_path: Path
):
    private_redis.client().flushdb()
    env = _env(test_env, private_redis.url())
    with (
        managed_process(
            listener_argv(), env=env, log_dir=tmp_path, ready=LISTENER_READY, name="listener-a"
        ) as first,
        managed_process(
            listener_argv(cli=True),  # the CLI alias: `molecule-registry liveness`
            env=env,
            log_dir=tmp_path,
            ready=LISTENER_READY,
            name="listener-b",
        ) as second,
    ):
        internal = add_fleet(liveness_db, 6, heartbeat_age="10 minutes")
        external = add_fleet(liveness_db, 2, runtime="external", heartbeat_age="10 minutes")
        (bystander,) = add_fleet(liveness_db, 1, heartbeat_age="10 minutes")
        client = private_redis.client()
        pipe = client.pipeline()
        for ws in internal + external:
            pipe.set(liveness_key(ws), "online", px=1000)
        pipe.set(url_key(bystander), "http://agent.example", px=1000)  # not a liveness key
        pipe.execute()

        wait_until(
            lambda: len(unreachable_events(liveness_db)) >= 8,
            timeout=15,
            what="8 expiries applied",
        )
        time.sleep(1.0)  # room for a duplicate to show up, if there were one

        events = unreachable_events(liveness_db)
        assert sorted(str(ws) for _, ws, _ in events) == sorted(
            str(ws) for ws in internal + external
        )
        assert {kind for kind, ws, _ in events if ws in internal} == {"WORKSPACE_OFFLINE"}
        assert {kind for kind, ws, _ in events if ws in external} == {"WORKSPACE_AWAITING_AGENT"}
        assert {payload["reason"] for _, _, payload in events} == {"liveness_expired"}
        assert statuses(liveness_db, [bystander]) == {bystander: "online"}
        # Both listeners got the notifications; between them each change happened once.
        assert first.count(CHANGE_LINE) + second.count(CHANGE_LINE) == 8

        # Graceful stop on SIGTERM: exit 0, said so.
        for listener in (first, second):
            listener.signal_group(signal.SIGTERM)
        for listener in (first, second):
            assert listener.proc.wait(timeout=10) == 0
            assert "liveness listener stopped" in listener.log()


def test_listener_reconnects_after_a_redis_restart(liveness_db, test_env, tmp_path: Path):
    server = PrivateRedis(tmp_path).start()
    try:
        env = _env(test_env, server.url(0))
        with managed_process(
            listener_argv(), env=env, log_dir=tmp_path, ready=LISTENER_READY, name="listener"
        ) as listener:
            server.kill()  # a crash: keys and the notification config are gone
            listener.wait_for_log(r"lost Redis at", timeout=10)
            time.sleep(1.5)
            # Backoff, not a busy loop: a handful of attempts while it is down.
            assert 1 <= listener.count(r"reconnecting in") <= 4
            server.start()
            listener.wait_for_log(rf"{LISTENER_READY} again", timeout=30)
            flags = server.client().config_get("notify-keyspace-events")["notify-keyspace-events"]
            assert {"E", "x"} <= set(flags), flags  # re-enabled on the fresh server

            (ws,) = add_fleet(liveness_db, 1, heartbeat_age="10 minutes")
            server.client().set(liveness_key(ws), "online", px=500)
            wait_until(
                lambda: statuses(liveness_db, [ws]) == {ws: "offline"},
                timeout=10,
                what="expiry after the restart applied",
            )
            assert listener.alive
    finally:
        server.kill()


def test_listener_will_not_start_when_redis_cannot_notify(liveness_db, test_env, tmp_path: Path):
    with PrivateRedis(tmp_path, "--rename-command", "CONFIG", "") as server:
        done = subprocess.run(
            listener_argv(),
            env=_env(test_env, server.url()),
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    assert "cannot start" in done.stderr
    assert "notify-keyspace-events" in done.stderr

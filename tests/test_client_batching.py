"""The client's batching heartbeat publisher against the real broker and worker."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from demo_helpers import closed_port
from ingest_helpers import RECORDER, new_id, register_now, wait_until, workspace
from sqlalchemy import Engine, text

from molecule_registry_client import (
    BatchingHeartbeatPublisher,
    RegistryClient,
    RegistryUnavailable,
)
from molecule_registry_client.names import HEARTBEAT_BATCH_TASK

pytestmark = pytest.mark.integration


@pytest.fixture
def client(test_env: dict[str, str]) -> Any:
    with RegistryClient(test_env["CELERY_BROKER_URL"]) as registry_client:
        yield registry_client


def _batch_runs_since(count_before: int) -> list[Any]:
    runs = [r for r in RECORDER.runs if r.name == HEARTBEAT_BATCH_TASK]
    return runs[count_before:]


def _batch_runs() -> int:
    return len([r for r in RECORDER.runs if r.name == HEARTBEAT_BATCH_TASK])


def _marked(engine: Engine, ids: list[str], marker: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT count(*) FROM workspaces "
                "WHERE id = ANY(CAST(:ids AS uuid[])) AND current_task = :m"
            ),
            {"ids": ids, "m": marker},
        ).scalar_one()


def test_sends_one_message_per_max_items_and_the_rest_after_max_delay(
    db: Engine, worker: Any, client: RegistryClient
) -> None:
    tokens = {ws: register_now(ws)["auth_token"] for ws in (new_id() for _ in range(12))}
    before = _batch_runs()
    with BatchingHeartbeatPublisher(client, max_items=5, max_delay=0.3) as publisher:
        for ws, token in tokens.items():
            publisher.heartbeat(ws, token, current_task="batched")
        # Two full batches left at once; the last two heartbeats wait for max_delay.
        wait_until(lambda: _marked(db, list(tokens), "batched") == len(tokens), timeout=15)
        assert publisher.sent_batches == 3
    runs = wait_until(lambda: len(_batch_runs_since(before)) >= 3 and _batch_runs_since(before))
    assert sorted(r.retval["applied"] for r in runs) == [2, 5, 5]


def test_close_sends_what_is_left(db: Engine, worker: Any, client: RegistryClient) -> None:
    tokens = {ws: register_now(ws)["auth_token"] for ws in (new_id() for _ in range(3))}
    publisher = BatchingHeartbeatPublisher(client, max_items=100, max_delay=60)
    for ws, token in tokens.items():
        publisher.heartbeat(ws, token, current_task="closing")
    publisher.close()
    assert publisher.sent_batches == 1
    wait_until(lambda: _marked(db, list(tokens), "closing") == len(tokens))
    with pytest.raises(RuntimeError):
        publisher.heartbeat(next(iter(tokens)))


def test_many_threads_lose_nothing_and_keep_each_agents_order(
    db: Engine, worker: Any, client: RegistryClient
) -> None:
    tokens = {ws: register_now(ws)["auth_token"] for ws in (new_id() for _ in range(8))}
    rounds = 25
    with BatchingHeartbeatPublisher(client, max_items=40, max_delay=0.05) as publisher:

        def agent(ws: str) -> None:
            for n in range(rounds):
                publisher.heartbeat(ws, tokens[ws], uptime_seconds=n, current_task=f"n{n}")

        threads = [threading.Thread(target=agent, args=(ws,)) for ws in tokens]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # Every agent's last heartbeat is what remains: nothing lost, nothing rolled back.
    last = f"n{rounds - 1}"
    wait_until(lambda: _marked(db, list(tokens), last) == len(tokens), timeout=20)
    for ws in tokens:
        assert workspace(db, ws).uptime_seconds == rounds - 1


def test_an_unreachable_broker_keeps_the_batch_and_close_says_so() -> None:
    unreachable = RegistryClient(
        f"redis://127.0.0.1:{closed_port()}/0", publish_retries=0, retry_interval_max=0.1
    )
    publisher = BatchingHeartbeatPublisher(unreachable, max_items=10, max_delay=0.05)
    publisher.heartbeat(new_id(), "token")
    time.sleep(0.3)  # the background send failed and kept the heartbeat
    assert publisher.sent_batches == 0
    with pytest.raises(RegistryUnavailable):
        publisher.close()
    unreachable.close()


def test_bad_settings_are_refused(client: RegistryClient) -> None:
    for kwargs in ({"max_items": 0}, {"max_items": 1001}, {"max_delay": 0}):
        with pytest.raises(ValueError):
            BatchingHeartbeatPublisher(client, **kwargs)
    with pytest.raises(ValueError):
        client.heartbeat_batch([])

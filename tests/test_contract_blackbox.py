"""Black-box checks of the contract (CONTRACT §2-§9), the way an outside test drives it.

Every message is sent by task name through the broker to a real worker (`send_task`),
and only the public surface is observed: the tables, the Redis keys `ws:<id>*`, the
channel `events:broadcast` and the stream `events:stream`. Nothing here imports the
registry's internals, except to read a setting's documented default.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, text

pytestmark = pytest.mark.integration

CHANNEL = "events:broadcast"
STREAM = "events:stream"
# RFC 3339, UTC: a `Z` or `+00:00` offset.
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")
CARD = {"name": "agent", "skills": []}
# What a registration stores and announces: an empty description is the name (§12).
STORED_CARD = {**CARD, "description": "agent"}


def send(celery_app: Celery, name: str, payload: Any = None, queue: str = "registry") -> Any:
    """Send a task by name, as any producer would; a sweep takes no argument."""
    args = [] if payload is None else [payload]
    return celery_app.send_task(name, args=args, queue=queue)


def call(celery_app: Celery, name: str, payload: Any = None, queue: str = "registry") -> dict:
    return send(celery_app, name, payload, queue).get(timeout=30)


def heartbeat(celery_app: Celery, name: str, payload: Any) -> None:
    send(celery_app, name, payload, queue="registry.heartbeats")


def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def row(engine: Engine, ws: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        found = conn.execute(text("SELECT * FROM workspaces WHERE id = :id"), {"id": ws})
        r = found.mappings().first()
    return dict(r) if r else None


def events(engine: Engine, ws: str | None = None) -> list[tuple[str, dict]]:
    sql = "SELECT event_type, payload FROM structure_events"
    sql += " WHERE workspace_id = :id ORDER BY id" if ws else " ORDER BY id"
    with engine.connect() as conn:
        return [(r[0], r[1]) for r in conn.execute(text(sql), {"id": ws})]


def table_counts(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("workspaces", "workspace_auth_tokens", "structure_events")
        )


def snapshot(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM workspaces ORDER BY id")).all()
        evs = conn.execute(text("SELECT id FROM structure_events ORDER BY id")).all()
        toks = conn.execute(text("SELECT * FROM workspace_auth_tokens ORDER BY id")).all()
    return [rows, evs, toks]


def stream_events(r: redis.Redis) -> list[dict]:
    return [json.loads(fields["data"]) for _, fields in r.xrange(STREAM)]


@pytest.fixture
def channel(redis_client: redis.Redis) -> Iterator[Callable[[], list[dict]]]:
    """Everything published on events:broadcast from now on."""
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    seen: list[dict] = []

    def drain() -> list[dict]:
        while (message := pubsub.get_message(timeout=0.05)) is not None:
            seen.append(json.loads(message["data"]))
        return seen

    yield drain
    pubsub.close()


def register(celery_app: Celery, ws: str, **extra: Any) -> dict:
    payload = {"id": ws, "agent_card": CARD, "delivery_mode": "poll", **extra}
    return call(celery_app, "registry.register", payload)


def new_ws() -> str:
    return str(uuid.uuid4())


# --- §4.2a registry.heartbeat_batch -----------------------------------------------------


def test_heartbeat_batch_result_counts_each_outcome(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    good, removed, guarded = new_ws(), new_ws(), new_ws()
    token = register(celery_app, good)["auth_token"]
    register(celery_app, removed)
    gone = call(celery_app, "registry.remove_workspace", {"workspace_id": removed})
    assert gone["status"] == "removed"
    register(celery_app, guarded)
    items = [
        {"workspace_id": good, "auth_token": token, "active_tasks": 3, "current_task": "x"},
        {"workspace_id": removed},  # removed → ignored
        {"workspace_id": new_ws()},  # unknown → rejected
        {"workspace_id": good, "auth_token": token, "error_rate": 7},  # invalid → rejected
        {"workspace_id": guarded, "auth_token": "wrong"},  # bad token → unauthorized
        {"workspace_id": guarded},  # no token → unauthorized
    ]
    # The result itself (fire-and-forget: the worker keeps none), from the task by name.
    result = celery_app.tasks["registry.heartbeat_batch"].apply(args=[{"heartbeats": items}]).get()
    assert result == {
        "status": "ok",
        "applied": 1,
        "ignored": 1,
        "rejected": 2,
        "unauthorized": 2,
    }
    assert row(db, good)["active_tasks"] == 3
    # Through the broker, in list order: the later item of the same workspace wins.
    heartbeat(
        celery_app,
        "registry.heartbeat_batch",
        {
            "heartbeats": [
                {"workspace_id": good, "auth_token": token, "active_tasks": 5},
                {"workspace_id": good, "auth_token": token, "active_tasks": 6},
            ]
        },
    )
    wait_for(lambda: row(db, good)["active_tasks"] == 6)
    assert row(db, removed)["status"] == "removed"


@pytest.mark.parametrize(
    "envelope",
    [
        [{"workspace_id": "x"}],
        "heartbeats",
        {},
        {"heartbeats": {"workspace_id": "x"}},
        {"heartbeats": []},
        {"heartbeats": None},
    ],
    ids=["list", "string", "no-list", "not-a-list", "empty", "null"],
)
def test_heartbeat_batch_bad_envelope_rejected_whole(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any, envelope: Any
) -> None:
    result = celery_app.tasks["registry.heartbeat_batch"].apply(args=[envelope]).get()
    assert result["status"] == "rejected"
    assert result["error"]


def test_heartbeat_batch_of_1001_rejected_whole_and_changes_nothing(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    ws = new_ws()
    token = register(celery_app, ws)["auth_token"]
    before, keys = snapshot(db), sorted(redis_client.keys("ws:*"))
    ttl_before = redis_client.ttl(f"ws:{ws}")
    item = {"workspace_id": ws, "auth_token": token, "active_tasks": 9}
    result = (
        celery_app.tasks["registry.heartbeat_batch"]
        .apply(args=[{"heartbeats": [item] * 1001}])
        .get()
    )
    assert result["status"] == "rejected"
    assert "heartbeats" in result["error"]
    assert snapshot(db) == before
    assert sorted(redis_client.keys("ws:*")) == keys
    assert redis_client.ttl(f"ws:{ws}") <= ttl_before
    # The same through the broker: nothing applied; 1,000 is the largest accepted.
    heartbeat(celery_app, "registry.heartbeat_batch", {"heartbeats": [item] * 1001})
    heartbeat(
        celery_app,
        "registry.heartbeat_batch",
        {"heartbeats": [{**item, "active_tasks": 2}] * 1000},
    )
    wait_for(lambda: row(db, ws)["active_tasks"] == 2)


# --- §7 broadcast-only events and the event format --------------------------------------


def test_broadcast_only_events_on_the_channel_not_the_stream(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any, channel: Any
) -> None:
    ws = new_ws()
    token = register(celery_app, ws)["auth_token"]
    heartbeat(
        celery_app,
        "registry.heartbeat",
        {"workspace_id": ws, "auth_token": token, "current_task": "t1", "active_tasks": 1},
    )
    # Pub/sub ignores Redis databases: keep only this workspace's events.
    mine = lambda: [e for e in channel() if e.get("workspace_id") == ws]  # noqa: E731
    seen = wait_for(
        lambda: {e["event"] for e in mine()} >= {"WORKSPACE_HEARTBEAT", "TASK_UPDATED"} and mine()
    )
    by_type = {e["event"]: e for e in seen}
    for kind in ("TASK_UPDATED", "WORKSPACE_HEARTBEAT"):
        event = by_type[kind]
        assert {"event", "workspace_id", "timestamp", "payload"} <= set(event)
        assert event["workspace_id"] == ws and RFC3339_UTC.match(event["timestamp"])
    assert by_type["TASK_UPDATED"]["payload"] == {"current_task": "t1", "active_tasks": 1}
    assert by_type["WORKSPACE_HEARTBEAT"]["payload"]["active_tasks"] == 1
    assert "uptime_seconds" in by_type["WORKSPACE_HEARTBEAT"]["payload"]
    in_stream = {e["event"] for e in stream_events(redis_client)}
    assert "WORKSPACE_ONLINE" in in_stream
    assert not in_stream & {"WORKSPACE_HEARTBEAT", "TASK_UPDATED"}
    recorded = {t for t, _ in events(db)}
    assert not recorded & {"WORKSPACE_HEARTBEAT", "TASK_UPDATED"}


def test_event_json_format_on_channel_and_stream(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any, channel: Any
) -> None:
    ws = new_ws()
    register(celery_app, ws)
    online = wait_for(
        lambda: [
            e for e in channel() if e["event"] == "WORKSPACE_ONLINE" and e["workspace_id"] == ws
        ]
    )[0]
    streamed = wait_for(lambda: stream_events(redis_client))
    for event in (online, streamed[0]):
        # The four contract fields; `event_id` (structure_events.id) is the documented
        # extension that lets an at-least-once reader drop a duplicate.
        assert set(event) - {"event_id"} == {"event", "workspace_id", "timestamp", "payload"}
        assert event["event"] == "WORKSPACE_ONLINE"
        assert event["workspace_id"] == ws
        assert RFC3339_UTC.match(event["timestamp"]), event["timestamp"]
        assert datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).tzinfo
        assert event["payload"] == {
            "url": None,
            "agent_card": STORED_CARD,
            "delivery_mode": "poll",
        } or (
            event["payload"]["agent_card"] == STORED_CARD
            and event["payload"]["delivery_mode"] == "poll"
            and set(event["payload"]) == {"url", "agent_card", "delivery_mode"}
        )
    assert [t for t, _ in events(db, ws)] == ["WORKSPACE_ONLINE"]


# --- §4.1 registration ------------------------------------------------------------------


def test_register_resent_with_same_id_and_payload_is_no_redelivery(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    # Task id (worker logs) and payload (the WORKSPACE_ONLINE event) are public: a copy
    # re-sent by a producer is not a broker redelivery and gets no token (§4.1 step 7).
    ws, task_id = new_ws(), str(uuid.uuid4())
    payload = {"id": ws, "agent_card": CARD, "delivery_mode": "poll"}
    sent = celery_app.send_task(
        "registry.register", args=[payload], queue="registry", task_id=task_id
    )
    first = sent.get(timeout=30)
    sent.forget()  # the next answer under this id must be the worker's new one
    assert first["status"] == "registered" and first["auth_token"]
    resent = celery_app.send_task(
        "registry.register", args=[payload], queue="registry", task_id=task_id
    )
    again = resent.get(timeout=30)
    resent.forget()
    assert again["status"] == "unauthorized" and "auth_token" not in again
    with db.connect() as conn:
        stored = conn.execute(text("SELECT token_hash, prefix FROM workspace_auth_tokens")).all()
    assert len(stored) == 1 and first["auth_token"] not in {stored[0][0], stored[0][1]}
    assert stored[0][1] == first["auth_token"][:8]
    assert first["auth_token"] not in json.dumps(again)
    assert row(db, ws)["agent_card"] == STORED_CARD
    # A fresh message without the token is refused; with it, accepted (no new token).
    assert register(celery_app, ws)["status"] == "unauthorized"
    ok = register(celery_app, ws, auth_token=first["auth_token"])
    assert ok["status"] == "registered" and "auth_token" not in ok


def test_register_sets_keys_and_refuses_removed(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    ws = new_ws()
    result = call(
        celery_app,
        "registry.register",
        {"id": ws, "agent_card": CARD, "url": "http://localhost:8000"},
    )
    assert result["status"] == "registered" and result["delivery_mode"] == "push"
    assert redis_client.get(f"ws:{ws}") == "online"
    assert 0 < redis_client.ttl(f"ws:{ws}") <= 180
    assert redis_client.get(f"ws:{ws}:url") == "http://localhost:8000"
    assert 0 < redis_client.ttl(f"ws:{ws}:url") <= 300
    assert redis_client.get(f"ws:{ws}:internal_url") is not None
    assert call(celery_app, "registry.remove_workspace", {"workspace_id": ws})["status"] == (
        "removed"
    )
    assert redis_client.keys(f"ws:{ws}*") == []
    before = snapshot(db)
    refused = register(celery_app, ws, auth_token=result["auth_token"])
    assert refused["status"] == "rejected" and "removed" in refused["error"]
    assert snapshot(db) == before


def test_register_push_needs_a_safe_url(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    ws = new_ws()
    for url in (None, "http://169.254.169.254/", "ftp://localhost/"):
        payload = {"id": ws, "agent_card": CARD, "delivery_mode": "push"}
        if url is not None:
            payload["url"] = url
        result = call(celery_app, "registry.register", payload)
        assert result["status"] == "rejected" and "url" in result["error"]
    assert table_counts(db) == (0, 0, 0)
    assert redis_client.keys("ws:*") == []


# --- §4.3 update_card -------------------------------------------------------------------


def test_update_card_with_blocked_url_changes_nothing(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    ws = new_ws()
    token = register(celery_app, ws)["auth_token"]
    before = snapshot(db)
    for url in ("http://169.254.169.254/latest", "http://127.0.0.1:9/", "gopher://localhost/"):
        card = {"name": "agent", "url": url}
        result = call(
            celery_app,
            "registry.update_card",
            {"workspace_id": ws, "agent_card": card, "auth_token": token},
        )
        assert result["status"] == "rejected", result
        assert "url" in result["error"]
    assert snapshot(db) == before
    good = {"name": "agent", "url": "http://localhost:9000"}
    ok = call(
        celery_app,
        "registry.update_card",
        {"workspace_id": ws, "agent_card": good, "auth_token": token},
    )
    assert ok["status"] != "rejected"
    assert row(db, ws)["agent_card"] == good
    assert events(db, ws)[-1] == ("AGENT_CARD_UPDATED", {"agent_card": good})
    bad_token = call(
        celery_app,
        "registry.update_card",
        {"workspace_id": ws, "agent_card": CARD, "auth_token": "nope"},
    )
    assert bad_token["status"] == "unauthorized"
    assert row(db, ws)["agent_card"] == good


# --- §3 prune_events --------------------------------------------------------------------


def test_prune_events_deletes_rows_older_than_retention(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    ws = new_ws()
    register(celery_app, ws)
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO structure_events (event_type, workspace_id, payload, created_at) "
                "SELECT 'WORKSPACE_ONLINE', :id, '{}'::jsonb, now() - make_interval(days => d) "
                "FROM generate_series(91, 95) AS d"
            ),
            {"id": ws},
        )
        conn.execute(
            text(
                "INSERT INTO structure_events (event_type, workspace_id, payload, created_at) "
                "VALUES ('WORKSPACE_ONLINE', :id, '{}'::jsonb, now() - interval '89 days')"
            ),
            {"id": ws},
        )
    assert len(events(db, ws)) == 7
    result = call(celery_app, "registry.prune_events", queue="registry.sweeps")
    assert result["status"] == "ok"
    assert result["changed"] == 5
    assert len(events(db, ws)) == 2
    again = call(celery_app, "registry.prune_events", queue="registry.sweeps")
    assert again["changed"] == 0


# --- §5 sweeps sent by name -------------------------------------------------------------

SWEEPS = [
    "registry.sweep_backstop",
    "registry.sweep_health",
    "registry.sweep_provisioning",
    "registry.sweep_hibernation",
    "registry.sweep_orphans",
    "registry.relay_events",
    "registry.prune_events",
]


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_sent_by_name_says_how_many_rows_it_changed(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any, name: str
) -> None:
    result = call(celery_app, name, queue="registry.sweeps")
    assert isinstance(result, dict) and "status" in result
    assert isinstance(result.get("changed"), int), result


def test_backstop_and_provisioning_sweeps_count_their_changes(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any, channel: Any
) -> None:
    stale, ext, prov = new_ws(), new_ws(), new_ws()
    register(celery_app, stale)
    created = call(
        celery_app,
        "registry.create_workspace",
        {"name": "ext", "id": ext, "runtime": "external"},
    )
    assert created["workspace_status"] == "awaiting_agent" and created["auth_token"]
    register(celery_app, ext, auth_token=created["auth_token"])
    created = call(celery_app, "registry.create_workspace", {"name": "p", "id": prov})
    assert created.pop("auth_token")  # every runtime gets its token at creation (§4.4)
    assert created == {
        "status": "created",
        "workspace_id": prov,
        "workspace_status": "provisioning",
    }
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE workspaces SET last_heartbeat_at = now() - interval '1 hour' "
                "WHERE id IN (:a, :b)"
            ),
            {"a": stale, "b": ext},
        )
        conn.execute(
            text(
                "UPDATE workspaces SET created_at = now() - interval '1 hour', "
                "updated_at = now() - interval '1 hour' WHERE id = :id"
            ),
            {"id": prov},
        )
    backstop = call(celery_app, "registry.sweep_backstop", queue="registry.sweeps")
    assert backstop["changed"] == 2, backstop
    assert row(db, stale)["status"] == "offline"
    assert row(db, ext)["status"] == "awaiting_agent"
    assert redis_client.keys(f"ws:{stale}*") == []
    assert ("WORKSPACE_OFFLINE", {"reason": "liveness_expired", "previous_status": "online"}) in (
        events(db, stale)
    )
    again = call(celery_app, "registry.sweep_backstop", queue="registry.sweeps")
    assert again["changed"] == 0
    provisioning = call(celery_app, "registry.sweep_provisioning", queue="registry.sweeps")
    assert provisioning["changed"] == 1, provisioning
    assert row(db, prov)["status"] == "failed"
    assert row(db, prov)["last_sample_error"]
    failed = [p for t, p in events(db, prov) if t == "WORKSPACE_PROVISION_FAILED"]
    assert failed and failed[0]["source"] == "provision_timeout_sweep"
    assert failed[0]["timeout_secs"] == 720 and failed[0]["runtime"] == "langgraph"


# --- §9 can_communicate -----------------------------------------------------------------


def test_can_communicate_by_name(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    root, child, grandchild, other_root, cousin = (new_ws() for _ in range(5))
    with db.begin() as conn:
        for ws, parent in (
            (root, None),
            (child, root),
            (grandchild, child),
            (other_root, None),
            (cousin, other_root),
        ):
            conn.execute(
                text(
                    "INSERT INTO workspaces (id, name, status, parent_id) "
                    "VALUES (:id, :id, 'online', :p)"
                ),
                {"id": ws, "p": parent},
            )

    def allowed(caller: str, target: str) -> bool:
        result = call(
            celery_app,
            "registry.can_communicate",
            {"caller_id": caller, "target_id": target},
        )
        assert result["status"] == "ok"
        return result["allowed"]

    assert allowed(child, child)
    assert not allowed(root, other_root)  # two roots are not siblings (§12)
    assert allowed(root, grandchild)  # ancestor
    assert allowed(grandchild, root)  # descendant
    assert not allowed(grandchild, cousin)
    assert not allowed(child, cousin)
    assert not allowed(root, new_ws())  # unknown: fail secure
    bad = call(celery_app, "registry.can_communicate", {"caller_id": root})
    assert bad["status"] == "rejected" and "target_id" in bad["error"]


# --- §4.2 heartbeat rules, through the broker -------------------------------------------


def beat(celery_app: Celery, ws: str, token: str, **fields: Any) -> None:
    heartbeat(celery_app, "registry.heartbeat", {"workspace_id": ws, "auth_token": token, **fields})


def test_heartbeat_transitions_and_ordering(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    ws = new_ws()
    token = register(celery_app, ws)["auth_token"]
    now = time.time()
    beat(celery_app, ws, token, runtime_state="wedged", sample_error="stuck", sent_at=now)
    wait_for(lambda: row(db, ws)["status"] == "degraded")
    assert events(db, ws)[-1] == (
        "WORKSPACE_DEGRADED",
        {"runtime_state": "wedged", "sample_error": "stuck"},
    )
    # Older than the last applied (sent_at): ignored, nothing rolls back.
    beat(celery_app, ws, token, active_tasks=4, sent_at=now - 10)
    beat(celery_app, ws, token, error_rate=0.0, active_tasks=1, sent_at=now + 1)
    wait_for(lambda: row(db, ws)["status"] == "online")
    assert row(db, ws)["active_tasks"] == 1
    assert events(db, ws)[-1] == ("WORKSPACE_ONLINE", {"recovered_from": "degraded"})
    # error_rate ≥ 0.5 degrades, unless the runtime manages its own status.
    managed = {"capabilities": {"status_mgmt": True}}
    beat(celery_app, ws, token, error_rate=0.9, runtime_metadata=managed, sent_at=now + 2)
    wait_for(lambda: row(db, ws)["runtime_metadata"] == managed)
    assert row(db, ws)["status"] == "online"
    beat(celery_app, ws, token, error_rate=0.5, sample_error="boom", sent_at=now + 3)
    wait_for(lambda: row(db, ws)["status"] == "degraded")
    assert row(db, ws)["runtime_metadata"] is None  # absent = cleared
    assert events(db, ws)[-1] == (
        "WORKSPACE_DEGRADED",
        {"error_rate": 0.5, "sample_error": "boom"},
    )
    # monthly_spend: clamped, 0 never overwrites.
    beat(celery_app, ws, token, monthly_spend=10**13, sent_at=now + 4)
    wait_for(lambda: row(db, ws)["monthly_spend"] == 10**12)
    beat(celery_app, ws, token, monthly_spend=0, active_tasks=7, sent_at=now + 5)
    wait_for(lambda: row(db, ws)["active_tasks"] == 7)
    assert row(db, ws)["monthly_spend"] == 10**12


def test_stale_heartbeat_does_not_revive_an_unreachable_workspace(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    ws, fresh = new_ws(), new_ws()
    token = register(celery_app, ws)["auth_token"]
    fresh_token = register(celery_app, fresh)["auth_token"]
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE workspaces SET last_heartbeat_at = now() - interval '1 hour' "
                "WHERE id IN (:a, :b)"
            ),
            {"a": ws, "b": fresh},
        )
    assert call(celery_app, "registry.sweep_backstop", queue="registry.sweeps")["changed"] == 2
    assert redis_client.exists(f"ws:{ws}") == 0
    # Sent 10 minutes ago (longer than the 180 s TTL): no comeback, no liveness key.
    old = time.time() - 600
    beat(celery_app, ws, token, sent_at=old)
    beat(celery_app, fresh, fresh_token, sent_at=time.time())
    wait_for(lambda: row(db, fresh)["status"] == "online")
    time.sleep(0.5)  # the stale one travelled the same queue, before the fresh one
    assert row(db, ws)["status"] == "offline"
    assert redis_client.exists(f"ws:{ws}") == 0
    assert events(db, fresh)[-1] == ("WORKSPACE_ONLINE", {"recovered_from": "offline"})
    assert redis_client.get(f"ws:{fresh}") == "online"


def test_heartbeat_refusals_change_nothing(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    ws, removed = new_ws(), new_ws()
    token = register(celery_app, ws)["auth_token"]
    register(celery_app, removed)
    call(celery_app, "registry.remove_workspace", {"workspace_id": removed})
    run = celery_app.tasks["registry.heartbeat"]
    before = snapshot(db)
    assert run.apply(args=[{"workspace_id": removed}]).get()["status"] == "ignored"
    assert run.apply(args=[{"workspace_id": new_ws()}]).get()["status"] == "rejected"
    assert run.apply(args=[{"workspace_id": ws}]).get()["status"] == "unauthorized"
    bad = run.apply(args=[{"workspace_id": ws, "auth_token": token, "active_tasks": -1}]).get()
    assert bad["status"] == "rejected" and "active_tasks" in bad["error"]
    assert run.apply(args=[["not", "an", "object"]]).get()["status"] == "rejected"
    assert snapshot(db) == before
    assert redis_client.keys(f"ws:{removed}*") == []
    ok = run.apply(args=[{"workspace_id": ws, "auth_token": token}]).get()
    assert ok == {"status": "ok", "workspace_status": "online"}


# --- §5 remote agents, self-preservation; §3 retention 0 --------------------------------


def test_health_sweep_sends_stale_remote_agents_to_awaiting_agent(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    ext = new_ws()
    created = call(
        celery_app,
        "registry.create_workspace",
        {"name": "laptop", "id": ext, "runtime": "external"},
    )
    assert events(db, ext)[-1][0] == "WORKSPACE_AWAITING_AGENT"
    register(celery_app, ext, auth_token=created["auth_token"])
    assert row(db, ext)["delivery_mode"] == "poll"  # external → poll by default
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE workspaces SET last_heartbeat_at = now() - interval '200 seconds' "
                "WHERE id = :id"
            ),
            {"id": ext},
        )
    result = call(celery_app, "registry.sweep_health", queue="registry.sweeps")
    assert result["status"] == "ok" and result["changed"] == 1, result
    assert row(db, ext)["status"] == "awaiting_agent"
    assert events(db, ext)[-1] == (
        "WORKSPACE_AWAITING_AGENT",
        {"reason": "heartbeat_stale", "previous_status": "online"},
    )
    assert redis_client.keys(f"ws:{ext}*") == []
    # A heartbeat of an agent that registered before brings it back.
    beat(celery_app, ext, created["auth_token"])
    wait_for(lambda: row(db, ext)["status"] == "online")
    assert events(db, ext)[-1] == ("WORKSPACE_ONLINE", {"recovered_from": "awaiting_agent"})


def test_self_preservation_pauses_mass_marking(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any, channel: Any
) -> None:
    fleet = [new_ws() for _ in range(30)]
    for ws in fleet:
        register(celery_app, ws)
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE workspaces SET last_heartbeat_at = now() - interval '1 hour' "
                "WHERE id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": fleet[:20]},
        )
    result = call(celery_app, "registry.sweep_backstop", queue="registry.sweeps")
    assert result["changed"] == 0, result
    with db.connect() as conn:
        statuses = conn.execute(text("SELECT DISTINCT status FROM workspaces")).scalars().all()
        sp = conn.execute(
            text(
                "SELECT workspace_id, payload FROM structure_events "
                "WHERE event_type = 'REGISTRY_SELF_PRESERVATION'"
            )
        ).all()
    assert statuses == ["online"]
    assert len(sp) == 1 and sp[0][0] is None and sp[0][1]["active"] is True
    assert sp[0][1]["reason"] and "figures" in sp[0][1]
    streamed = wait_for(
        lambda: [
            e for e in stream_events(redis_client) if e["event"] == "REGISTRY_SELF_PRESERVATION"
        ]
    )
    assert streamed[0]["workspace_id"] is None
    # Fleet healthy again → marking resumes, one {active: false}.
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE workspaces SET last_heartbeat_at = now() WHERE id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": fleet[1:20]},
        )
    resumed = call(celery_app, "registry.sweep_backstop", queue="registry.sweeps")
    assert resumed["changed"] == 1, resumed
    with db.connect() as conn:
        sp = (
            conn.execute(
                text(
                    "SELECT payload FROM structure_events "
                    "WHERE event_type = 'REGISTRY_SELF_PRESERVATION' ORDER BY id"
                )
            )
            .scalars()
            .all()
        )
    assert [p["active"] for p in sp] == [True, False]


def test_prune_events_with_retention_zero_keeps_everything(
    db: Engine,
    redis_client: redis.Redis,
    celery_app: Celery,
    worker: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from registry.config import reload_settings

    ws = new_ws()
    register(celery_app, ws)
    with db.begin() as conn:
        conn.execute(text("UPDATE structure_events SET created_at = now() - interval '3650 days'"))
    monkeypatch.setenv("EVENTS_RETENTION_DAYS", "0")
    reload_settings()
    try:
        result = call(celery_app, "registry.prune_events", queue="registry.sweeps")
    finally:
        monkeypatch.delenv("EVENTS_RETENTION_DAYS")
        reload_settings()
    assert result["status"] == "ok" and result["changed"] == 0
    assert len(events(db, ws)) == 1


# --- §4.1 delivery mode and url rules -----------------------------------------------------


def test_register_delivery_mode_and_provisioner_url(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    ws = new_ws()
    bad = call(
        celery_app, "registry.register", {"id": ws, "agent_card": CARD, "delivery_mode": "x"}
    )
    assert bad["status"] == "rejected" and "delivery_mode" in bad["error"]
    assert table_counts(db) == (0, 0, 0)
    first = register(celery_app, ws)  # poll stored
    again = call(
        celery_app,
        "registry.register",
        {"id": ws, "agent_card": CARD, "auth_token": first["auth_token"]},
    )
    assert again["delivery_mode"] == "poll"  # the row's stored mode
    # A url written by the provisioner (http://127.0.0.1…) is kept.
    with db.begin() as conn:
        conn.execute(
            text("UPDATE workspaces SET url = 'http://127.0.0.1:8123' WHERE id = :id"), {"id": ws}
        )
    pushed = call(
        celery_app,
        "registry.register",
        {
            "id": ws,
            "agent_card": CARD,
            "delivery_mode": "push",
            "url": "http://localhost:9999",
            "auth_token": first["auth_token"],
        },
    )
    assert pushed["status"] == "registered" and pushed["delivery_mode"] == "push"
    assert row(db, ws)["url"] == "http://127.0.0.1:8123"
    assert redis_client.get(f"ws:{ws}:url") == "http://127.0.0.1:8123"
    assert redis_client.get(f"ws:{ws}:internal_url") == "http://localhost:9999"


# --- §4.1 step 8: a plaintext token only in its producer's result ----------------------


@pytest.mark.usefixtures("worker")
def test_plaintext_tokens_never_logged_or_published(
    db: Engine,
    redis_client: redis.Redis,
    celery_app: Celery,
    channel: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    ws, ext = new_ws(), new_ws()
    token = register(celery_app, ws)["auth_token"]
    ext_token = call(
        celery_app, "registry.create_workspace", {"name": "e", "id": ext, "runtime": "external"}
    )["auth_token"]
    assert register(celery_app, ws, auth_token=token + "x")["status"] == "unauthorized"
    items = [
        {"workspace_id": ws, "auth_token": token, "active_tasks": "bad"},
        {"workspace_id": ext, "auth_token": token},
        {"workspace_id": ws, "auth_token": ext_token},
        {"workspace_id": ws, "auth_token": token, "current_task": "t"},
    ]
    heartbeat(celery_app, "registry.heartbeat_batch", {"heartbeats": items})
    wait_for(lambda: row(db, ws)["current_task"] == "t")
    call(
        celery_app,
        "registry.update_card",
        {"workspace_id": ws, "agent_card": {"url": "http://10.0.0.1/"}, "auth_token": token},
    )
    published = json.dumps(channel()) + json.dumps(stream_events(redis_client))
    with db.connect() as conn:
        recorded = json.dumps(
            [p for p in conn.execute(text("SELECT payload FROM structure_events")).scalars()]
        )
        stored = conn.execute(text("SELECT token_hash || prefix FROM workspace_auth_tokens"))
        stored_text = " ".join(stored.scalars())
    assert "heartbeat rejected in a batch" in caplog.text  # the worker's lines are seen
    for secret in (token, ext_token):
        assert secret not in caplog.text
        assert secret not in published and secret not in recorded
        assert secret not in stored_text


# --- §4.3 / §4.4 refusals ---------------------------------------------------------------


def test_update_card_of_removed_or_unknown_workspace_changes_nothing(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    ws = new_ws()
    token = register(celery_app, ws)["auth_token"]
    call(celery_app, "registry.remove_workspace", {"workspace_id": ws})
    before = snapshot(db)
    for payload in (
        {"workspace_id": ws, "agent_card": {"n": 1}, "auth_token": token},
        {"workspace_id": new_ws(), "agent_card": {"n": 1}},
        {"workspace_id": ws, "agent_card": "not a card", "auth_token": token},
        {"workspace_id": "not-a-uuid", "agent_card": {}},
    ):
        result = call(celery_app, "registry.update_card", payload)
        assert result["status"] in ("rejected", "unauthorized"), result
        assert result["error"]
    assert snapshot(db) == before
    assert row(db, ws)["agent_card"] == STORED_CARD


def test_create_workspace_refusals_change_nothing(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    for payload, field in (
        ({}, "name"),
        ({"name": "x", "parent_id": new_ws()}, "parent_id"),
        ({"name": "x", "tier": "1"}, "tier"),
        ({"name": "x", "id": "nope"}, "id"),
        (["name"], "payload"),
    ):
        result = call(celery_app, "registry.create_workspace", payload)
        assert result["status"] == "rejected" and field in result["error"], result
    assert table_counts(db) == (0, 0, 0)
    assert call(celery_app, "registry.remove_workspace", {"workspace_id": new_ws()})["status"] == (
        "rejected"
    )


def test_health_sweep_remote_agent_without_heartbeat_counts_from_updated_at(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any
) -> None:
    ext, recent = new_ws(), new_ws()
    with db.begin() as conn:
        for ws, age in ((ext, "1 hour"), (recent, "10 seconds")):
            conn.execute(
                text(
                    "INSERT INTO workspaces (id, name, status, runtime, updated_at) "
                    "VALUES (:id, 'laptop', 'online', 'external', now() - CAST(:age AS interval))"
                ),
                {"id": ws, "age": age},
            )
    result = call(celery_app, "registry.sweep_health", queue="registry.sweeps")
    assert result["changed"] == 1, result
    assert row(db, ext)["status"] == "awaiting_agent"
    assert row(db, recent)["status"] == "online"
    assert call(celery_app, "registry.sweep_health", queue="registry.sweeps")["changed"] == 0


def test_heartbeat_batch_items_publish_like_single_heartbeats(
    db: Engine, redis_client: redis.Redis, celery_app: Celery, worker: Any, channel: Any
) -> None:
    a, b = new_ws(), new_ws()
    ta, tb = register(celery_app, a)["auth_token"], register(celery_app, b)["auth_token"]
    heartbeat(
        celery_app,
        "registry.heartbeat_batch",
        {
            "heartbeats": [
                {"workspace_id": a, "auth_token": ta, "current_task": "ta", "active_tasks": 1},
                {"workspace_id": b, "auth_token": tb, "runtime_state": "wedged"},
            ]
        },
    )
    wait_for(lambda: row(db, b)["status"] == "degraded")
    expected = {
        ("WORKSPACE_HEARTBEAT", a),
        ("WORKSPACE_HEARTBEAT", b),
        ("TASK_UPDATED", a),
        ("WORKSPACE_DEGRADED", b),
    }
    wait_for(lambda: expected <= {(e["event"], e.get("workspace_id")) for e in channel()})
    stream = {(e["event"], e["workspace_id"]) for e in stream_events(redis_client)}
    assert ("WORKSPACE_DEGRADED", b) in stream
    assert not {("WORKSPACE_HEARTBEAT", a), ("TASK_UPDATED", a)} & stream

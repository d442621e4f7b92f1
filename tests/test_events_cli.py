"""`molecule-registry events`: one readable (or JSON) line per event, filters, replay."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import click
import pytest
from board_helpers import make_workspace, publish
from click.testing import CliRunner

from cli import main
from cli.events import id_prefix_bounds, parse_since, parse_types
from registry.config import reload_settings
from registry.events.outbox import BROADCAST_CHANNEL, EVENT_STREAM, Event
from registry.events.subscriber import stream_head
from registry.events.text import describe
from registry.statuses import BROADCAST_ONLY_EVENTS, EventType

# Heartbeats reach the stream only with EVENTS_STREAM_BROADCASTS on (CONTRACT §7).
pytestmark = pytest.mark.usefixtures("events_stream_broadcasts")

# Every event type with a payload as the registry (or its sweeps) records it, and the
# gist a person reads.
KNOWN_EVENTS: list[tuple[EventType, dict[str, Any], str]] = [
    (EventType.WORKSPACE_ONLINE, {"recovered_from": "degraded"}, "degraded → online"),
    (
        EventType.WORKSPACE_ONLINE,
        {"url": "", "agent_card": {"name": "a"}, "delivery_mode": "poll"},
        "registered → online (poll)",
    ),
    (
        EventType.WORKSPACE_DEGRADED,
        {"error_rate": 0.62, "sample_error": "tool timed out"},
        'online → degraded (error_rate 0.62, "tool timed out")',
    ),
    (
        EventType.WORKSPACE_DEGRADED,
        {"runtime_state": "wedged", "sample_error": None},
        "online → degraded (runtime wedged)",
    ),
    (
        EventType.WORKSPACE_OFFLINE,
        {"reason": "liveness_expired", "previous_status": "online"},
        "offline (liveness_expired, was online)",
    ),
    (
        EventType.WORKSPACE_AWAITING_AGENT,
        {"reason": "heartbeat_stale", "previous_status": "degraded"},
        "awaiting agent (heartbeat_stale, was degraded)",
    ),
    (
        EventType.WORKSPACE_AWAITING_AGENT,
        {"name": "laptop", "runtime": "external", "reason": "created"},
        "awaiting agent (created, runtime external)",
    ),
    (
        EventType.WORKSPACE_PROVISION_FAILED,
        {
            "error": "container never registered",
            "timeout_secs": 600,
            "runtime": "langgraph",
            "source": "provision_timeout_sweep",
        },
        "provisioning failed (timeout 600 s, runtime langgraph): container never registered",
    ),
    (EventType.WORKSPACE_HIBERNATED, {"name": "idle-one", "tier": 2}, "hibernated (idle, tier 2)"),
    (EventType.WORKSPACE_REMOVED, {"previous_status": "offline"}, "removed (was offline)"),
    (
        EventType.AGENT_CARD_UPDATED,
        {"agent_card": {"name": "Scraper", "version": "1.2", "skills": [{}, {}]}},
        'agent card updated (name "Scraper", version 1.2, 2 skills)',
    ),
    (
        EventType.REGISTRY_SELF_PRESERVATION,
        {"active": True, "reason": "heartbeat_backlog", "figures": {"oldest_age_s": 75.5}},
        "self-preservation ON: unreachable-marking paused (heartbeat_backlog, oldest_age_s=75.50)",
    ),
    (
        EventType.REGISTRY_SELF_PRESERVATION,
        {"active": False},
        "self-preservation OFF: unreachable-marking resumed",
    ),
    (
        EventType.TASK_UPDATED,
        {"current_task": "summarise report", "active_tasks": 2},
        'task "summarise report" (2 active)',
    ),
    (
        EventType.WORKSPACE_HEARTBEAT,
        {"active_tasks": 1, "uptime_seconds": 3725},
        "heartbeat (1 active, up 1h02m)",
    ),
    (
        EventType.REGISTRY_INCIDENT,
        {"state": "opened", "incident_id": 3, "kind": "shared_error",
         "signature": "rate limited (<num>)", "sample_error": "rate limited (429)", "members": 5},
        'incident #3 opened: 5 workspaces, shared_error "rate limited (<num>)"',
    ),
    (
        EventType.REGISTRY_INCIDENT,
        {"state": "resolved", "incident_id": 3, "kind": "shared_error", "signature": "x",
         "members": 0, "peak_members": 40, "duration_seconds": 900},
        "incident #3 resolved (after 15m00s, peak 40)",
    ),
    (
        EventType.WORKSPACE_FLAPPING,
        {"changes": 6, "window": 600},
        "flapping: 6 status changes in 10m00s",
    ),
    (
        EventType.WORKSPACE_STABLE,
        {"quiet_seconds": 600},
        "stable: no status change for 10m00s",
    ),
]  # fmt: skip


CLI = str(Path(sys.executable).parent / "molecule-registry")


def run(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def test_every_event_type_has_a_known_case():
    assert {event_type for event_type, _, _ in KNOWN_EVENTS} == set(EventType)


@pytest.mark.parametrize(("event_type", "payload", "gist"), KNOWN_EVENTS)
def test_gist_of_each_event_type(event_type, payload, gist):
    assert describe(event_type, payload) == gist


def test_gist_never_raises_on_odd_payloads():
    for event_type in EventType:
        for payload in ({}, {"error_rate": "high", "agent_card": 3, "figures": [1]}):
            assert isinstance(describe(event_type, payload), str)
    assert describe("SOMETHING_NEW", {"x": 1}) == '{"x": 1}'


@pytest.mark.integration
def test_human_and_json_lines_for_every_event_type(db, redis_client):
    ws = make_workspace(db, "scraper-7")
    published = [
        (t, None if t == EventType.REGISTRY_SELF_PRESERVATION else ws, p)
        for t, p, _ in KNOWN_EVENTS
    ]
    publish(db, redis_client, published)

    human = run("events", "--since", "start", "--no-follow")
    assert human.exit_code == 0, human.output
    lines = human.stdout.splitlines()
    assert len(lines) == len(KNOWN_EVENTS)
    for line, (event_type, _payload, gist) in zip(lines, KNOWN_EVENTS, strict=True):
        day, clock, *_ = line.split()
        datetime.fromisoformat(f"{day}T{clock}")  # a readable UTC time
        assert clock.endswith("Z")
        who = "fleet" if event_type == EventType.REGISTRY_SELF_PRESERVATION else ws[:8]
        assert f" {who} " in line
        if who != "fleet":
            assert f"{ws[:8]} scraper-7 " in line
        assert f" {event_type} " in line
        assert line.endswith(gist), (line, gist)

    as_json = run("events", "--since", "start", "--no-follow", "--json")
    assert as_json.exit_code == 0, as_json.output
    objects = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(objects) == len(KNOWN_EVENTS)
    for obj, (event_type, payload, _) in zip(objects, KNOWN_EVENTS, strict=True):
        assert obj["event"] == event_type
        assert obj["payload"] == payload
        expected_ws = None if event_type == EventType.REGISTRY_SELF_PRESERVATION else ws
        assert obj["workspace_id"] == expected_ws
        assert obj["stream_id"]
        assert ("event_id" in obj) == (event_type not in BROADCAST_ONLY_EVENTS)
        assert datetime.fromisoformat(obj["timestamp"]).tzinfo is not None


@pytest.mark.integration
def test_filters_by_workspace_and_type(db, redis_client):
    a = make_workspace(db, "alpha")
    b = make_workspace(db, "beta")
    publish(
        db,
        redis_client,
        [
            (EventType.WORKSPACE_DEGRADED, a, {"error_rate": 0.7}),
            (EventType.WORKSPACE_DEGRADED, b, {"error_rate": 0.8}),
            (EventType.WORKSPACE_OFFLINE, b, {"reason": "liveness_expired"}),
            (EventType.WORKSPACE_HEARTBEAT, b, {"active_tasks": 0}),
        ],
    )

    def types_for(*args: str) -> list[tuple[str, str]]:
        result = run("events", "--since", "start", "--no-follow", "--json", *args)
        assert result.exit_code == 0, result.output
        return [
            (o["workspace_id"], o["event"]) for o in map(json.loads, result.stdout.splitlines())
        ]

    assert types_for("--workspace", "beta") == [
        (b, "WORKSPACE_DEGRADED"),
        (b, "WORKSPACE_OFFLINE"),
        (b, "WORKSPACE_HEARTBEAT"),
    ]
    assert types_for("--workspace", b[:8], "--type", "offline,heartbeat") == [
        (b, "WORKSPACE_OFFLINE"),
        (b, "WORKSPACE_HEARTBEAT"),
    ]
    assert types_for("-w", a, "-w", "beta", "-t", "WORKSPACE_DEGRADED") == [
        (a, "WORKSPACE_DEGRADED"),
        (b, "WORKSPACE_DEGRADED"),
    ]
    assert types_for("--limit", "1") == [(a, "WORKSPACE_DEGRADED")]

    unknown = run("events", "--no-follow", "--workspace", "nobody")
    assert unknown.exit_code == 2 and "no workspace matches 'nobody'" in unknown.output
    bad_type = run("events", "--no-follow", "--type", "exploded")
    assert bad_type.exit_code == 2 and "'exploded' is not an event type" in bad_type.output


@pytest.mark.integration
def test_replayed_events_are_marked_and_the_gap_goes_to_stderr(db, redis_client):
    ws = make_workspace(db, "gappy")
    publish(db, redis_client, [(EventType.WORKSPACE_HEARTBEAT, ws, {"active_tasks": 0})])
    start = redis_client.xrange(EVENT_STREAM)[0][0]
    time.sleep(0.01)
    publish(
        db,
        redis_client,
        [
            (EventType.WORKSPACE_DEGRADED, ws, {"error_rate": 0.9}),
            (EventType.WORKSPACE_HEARTBEAT, ws, {"active_tasks": 1}),
            (EventType.WORKSPACE_OFFLINE, ws, {"reason": "liveness_expired"}),
        ],
    )
    redis_client.xtrim(EVENT_STREAM, maxlen=1, approximate=False)
    result = run("events", "--since", start, "--no-follow")
    assert result.exit_code == 0, result.output
    assert "gap (stream trimmed)" in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert "WORKSPACE_DEGRADED" in lines[0] and lines[0].endswith("(replayed)")
    assert "WORKSPACE_OFFLINE" in lines[1] and lines[1].endswith("(replayed)")


def test_since_accepts_ids_times_and_durations():
    now = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    assert parse_since("start") == "start"
    assert parse_since("NOW") == "now"
    assert parse_since("1712345678901-0") == "1712345678901-0"
    assert parse_since("1712345678901-0:42:abc123") == "1712345678901-0:42:abc123"
    assert parse_since("10m", now) == now - timedelta(minutes=10)
    assert parse_since("1h30m", now) == now - timedelta(hours=1, minutes=30)
    assert parse_since("2d", now) == now - timedelta(days=2)
    assert parse_since("2025-01-31T11:00:00Z") == datetime(2025, 1, 31, 11, tzinfo=UTC)
    assert parse_since("2025-01-31T13:00:00+02:00") == datetime(2025, 1, 31, 11, tzinfo=UTC)
    for bad in ("yesterday", "10 minutes", "-5m"):
        with pytest.raises(click.BadParameter):
            parse_since(bad)
    assert parse_types(["offline", "task_updated,WORKSPACE_HEARTBEAT"]) == {
        "WORKSPACE_OFFLINE",
        "TASK_UPDATED",
        "WORKSPACE_HEARTBEAT",
    }


@pytest.mark.integration
def test_follows_live_and_exits_after_limit(db, redis_client, test_env):
    ws = make_workspace(db, "live-one")
    since = stream_head(redis_client).token()  # so nothing is missed while it starts
    process = subprocess.Popen(
        [CLI, "events", "--since", since, "--limit", "2"],
        env={**test_env, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        publish(
            db,
            redis_client,
            [
                (EventType.WORKSPACE_DEGRADED, ws, {"error_rate": 0.9}),
                (EventType.WORKSPACE_ONLINE, ws, {"recovered_from": "degraded"}),
                (EventType.WORKSPACE_OFFLINE, ws, {"reason": "liveness_expired"}),
            ],
        )
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert "live-one" in lines[0] and lines[0].endswith("online → degraded (error_rate 0.90)")
    assert lines[1].endswith("degraded → online")


@pytest.mark.parametrize(
    ("variable", "url", "message"),
    [
        ("REDIS_URL", "redis://127.0.0.1:1/0", "cannot reach Redis at redis://127.0.0.1:1/0"),
        (
            "DATABASE_URL",
            "postgresql+psycopg2://postgres:secret@127.0.0.1:1/x",
            "cannot reach PostgreSQL at postgresql+psycopg2://postgres:***@127.0.0.1:1/x",
        ),
    ],
)
def test_unreachable_store_is_one_line(monkeypatch, variable, url, message):
    monkeypatch.setenv(variable, url)
    reload_settings()
    try:
        result = CliRunner().invoke(main, ["events", "--no-follow"])
    finally:
        monkeypatch.undo()
        reload_settings()
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {message}")
    assert len(result.output.strip().splitlines()) == 1


def test_following_shows_channel_only_heartbeats_live(db, redis_client, test_env):
    # CONTRACT §7: heartbeats are published on events:broadcast, not appended to the stream.
    ws = make_workspace(db, "beating")
    process = subprocess.Popen(
        [CLI, "events", "--type", "heartbeat", "--workspace", ws, "--limit", "1"],
        env={**test_env, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        uptime = 60
        while process.poll() is None and time.monotonic() < deadline:
            # Until the command has subscribed, a heartbeat reaches nobody: keep beating.
            beat = Event(EventType.WORKSPACE_HEARTBEAT, UUID(ws), {"uptime_seconds": uptime})
            redis_client.publish(BROADCAST_CHANNEL, beat.to_json())
            uptime += 1
            time.sleep(0.2)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    (line,) = out.splitlines()
    assert "beating" in line and "WORKSPACE_HEARTBEAT" in line and "heartbeat (up 1m" in line
    assert "(replayed)" not in line
    assert redis_client.xlen(EVENT_STREAM) == 0  # it never went through the stream


@pytest.mark.parametrize(
    ("prefix", "bounds"),
    [
        ("1A2b", ("1a2b0000-0000-0000-0000-000000000000", "1a2bffff-ffff-ffff-ffff-ffffffffffff")),
        (
            "1a2b3c4d-5e",
            ("1a2b3c4d-5e00-0000-0000-000000000000", "1a2b3c4d-5eff-ffff-ffff-ffffffffffff"),
        ),
        (
            "1a2b3c4d-",
            ("1a2b3c4d-0000-0000-0000-000000000000", "1a2b3c4d-ffff-ffff-ffff-ffffffffffff"),
        ),
        ("1a2b3c4d5e", None),  # a digit where a uuid has a dash
        ("1a2-", None),  # a dash where a uuid has a digit
        ("zz12", None),
        ("1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d7", None),  # longer than a uuid
    ],
)
def test_an_id_prefix_is_a_range_of_uuids(prefix: str, bounds: tuple[str, str] | None) -> None:
    assert id_prefix_bounds(prefix) == bounds

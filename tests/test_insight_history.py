"""`molecule-registry history` and `report` (CONTRACT §13) on a hand-built history.

Rows and events are written with timestamps in the past; the figures are checked
against the timeline worked out by hand below.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from ingest_helpers import new_id, register_now
from insight_helpers import clean_insight
from sqlalchemy import Engine, text

from cli import main
from registry.config import get_settings
from registry.insight.report import availability
from registry.liveness.expiry import mark_expired
from registry.uow import unit_of_work

pytestmark = pytest.mark.integration

# Workspace A, over the last 10 h: up except two one-hour outages → 80 %, MTTR 1 h.
# (hours ago, event, payload)
TIMELINE_A: list[tuple[float, str, dict[str, Any]]] = [
    (15, "WORKSPACE_ONLINE", {"url": "", "delivery_mode": "poll"}),  # before the window
    (8, "WORKSPACE_OFFLINE", {"reason": "liveness_expired", "previous_status": "online"}),
    (7, "WORKSPACE_ONLINE", {"recovered_from": "offline"}),
    (4, "WORKSPACE_DEGRADED", {"error_rate": 0.9, "sample_error": "x"}),
    (3, "WORKSPACE_AWAITING_AGENT", {"reason": "heartbeat_stale", "previous_status": "degraded"}),
    (2, "WORKSPACE_ONLINE", {"recovered_from": "awaiting_agent"}),
]


@pytest.fixture
def insight_db(db: Engine) -> Iterator[Engine]:
    yield from clean_insight(db)


def add(engine: Engine, name: str, status: str, created_hours_ago: float = 20) -> str:
    with engine.begin() as conn:
        return str(
            conn.execute(
                text(
                    "INSERT INTO workspaces (id, name, status, created_at) VALUES "
                    "(gen_random_uuid(), :n, :s, now() - make_interval(secs => :h * 3600)) "
                    "RETURNING id"
                ),
                {"n": name, "s": status, "h": created_hours_ago},
            ).scalar_one()
        )


def seed_events(engine: Engine, ws: str | None, timeline: list[tuple[float, str, dict]]) -> None:
    with engine.begin() as conn:
        for hours, event, payload in timeline:
            conn.execute(
                text(
                    "INSERT INTO structure_events (event_type, workspace_id, payload, created_at) "
                    "VALUES (:t, :ws, CAST(:p AS jsonb), now() - make_interval(secs => :h * 3600))"
                ),
                {"t": event, "ws": ws, "p": json.dumps(payload), "h": hours},
            )


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def fleet(insight_db: Engine) -> dict[str, str]:
    ids = {
        "a": add(insight_db, "agent-a", "online"),
        "b": add(insight_db, "steady-b", "online"),
        "c": add(insight_db, "gone-c", "offline"),
        "d": add(insight_db, "paused-d", "paused"),
    }
    seed_events(insight_db, ids["a"], TIMELINE_A)
    # Events of a workspace without a row (deleted by hand) count for nothing.
    seed_events(insight_db, new_id(), TIMELINE_A)
    seed_events(
        insight_db,
        None,
        [
            (5, "REGISTRY_SELF_PRESERVATION", {"active": True, "reason": "mass_expiry"}),
            (4.5, "REGISTRY_SELF_PRESERVATION", {"active": False, "reason": "mass_expiry"}),
        ],
    )
    with insight_db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO incidents (kind, key, signature, sample_error, members, peak_members, "
                "announced_members, opened_at) VALUES "
                "('shared_error', 'rate limited (<num>)', 'rate limited (<num>)', "
                "'rate limited (429)', 12, 40, 12, now() - interval '1 hour'), "
                "('shared_error', 'old', 'old', 'old', 0, 5, 5, now() - interval '3 days')"
            )
        )
        conn.execute(
            text("UPDATE incidents SET resolved_at = now() - interval '2 days' WHERE key = 'old'")
        )
        conn.execute(
            text("UPDATE workspaces SET flapping = true WHERE id = :id"),
            {"id": ids["b"]},
        )
    return ids


def test_history_figures_match_the_hand_built_timeline(fleet: dict[str, str]) -> None:
    result = run("history", fleet["a"], "--since", "10h", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["availability_percent"] == pytest.approx(80.0, abs=0.05)
    assert [round(o["seconds"] / 60) for o in found["outages"]] == [60, 60]
    assert found["mttr_seconds"] == pytest.approx(3600, abs=2)
    statuses = [s["status"] for s in found["timeline"]]
    assert statuses == ["online", "offline", "online", "degraded", "awaiting_agent", "online"]

    human = run("history", fleet["a"], "--since", "10h")
    assert human.exit_code == 0, human.output
    lines = human.stdout.splitlines()
    assert lines[0] == f"workspace {fleet['a']} (agent-a), now online"
    assert "available 80.0" in lines[2] and "outages 2 (longest 1h)" in lines[2]
    assert "MTTR 1h" in lines[2]
    assert lines[3] == "timeline:" and len(lines) == 4 + 6
    assert lines[5].split()[2:] == ["offline", "1h"]


def test_history_of_a_workspace_without_events_is_its_current_status(
    fleet: dict[str, str],
) -> None:
    found = json.loads(run("history", fleet["c"], "--json").stdout)
    assert found["availability_percent"] == 0.0
    assert [o["end"] for o in found["outages"]] == [None]  # ongoing
    assert found["mttr_seconds"] is None
    paused = json.loads(run("history", fleet["d"], "--json").stdout)
    assert paused["availability_percent"] is None
    assert "available n/a" in run("history", fleet["d"]).stdout


def test_report_on_the_seeded_fleet(fleet: dict[str, str]) -> None:
    result = run("report", "--since", "10h", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert [
        (i["signature"], i["state"], i["members"], i["peak_members"]) for i in found["incidents"]
    ] == [("rate limited (<num>)", "open", 12, 40)]
    assert [(e["reason"], e["end"] is not None) for e in found["self_preservation"]] == [
        ("mass_expiry", True)
    ]
    least = [(w["name"], round(w["availability_percent"])) for w in found["least_available"]]
    assert least == [("gone-c", 0), ("agent-a", 80)]
    assert [w["name"] for w in found["flapping"]] == ["steady-b"]
    fleet_figures = found["availability"]
    assert fleet_figures["workspaces"] == 3  # the paused one counts neither way
    assert fleet_figures["mean_percent"] == pytest.approx(60.0, abs=0.05)
    assert fleet_figures["distribution"] == {
        "100%": 1, "99.9-100%": 0, "99-99.9%": 0, "95-99%": 0, "90-95%": 0, "<90%": 2,
    }  # fmt: skip

    human = run("report", "--since", "10h").stdout
    assert "incidents (1):" in human and "OPEN: 12 now, peak 40" in human
    assert "self-preservation episodes (1):" in human
    assert "least available (2):" in human and "gone-c" in human
    assert "flapping (1):" in human and "steady-b" in human
    assert "availability of 3 workspaces, mean 60.0" in human


def test_report_is_the_same_in_any_number_of_parts(
    insight_db: Engine, fleet: dict[str, str]
) -> None:
    since = datetime.now(UTC) - timedelta(hours=10)
    with insight_db.connect() as conn:
        found = [availability(conn, since, 10, parts=parts) for parts in (1, 2, 3)]
    assert found[0]["workspaces"] == 3
    assert found[1] == found[0] and found[2] == found[0]


def _age_events(engine: Engine, ws: str, hours_ago: list[float]) -> None:
    """Move the workspace's events (in id order) and its creation into the past."""
    with engine.begin() as conn:
        ids = conn.execute(
            text("SELECT id FROM structure_events WHERE workspace_id = :ws ORDER BY id"),
            {"ws": ws},
        ).scalars()
        for event_id, hours in zip(ids, hours_ago, strict=True):
            conn.execute(
                text(
                    "UPDATE structure_events SET created_at = now() - make_interval(secs => :s) "
                    "WHERE id = :id"
                ),
                {"s": hours * 3600, "id": event_id},
            )
        conn.execute(
            text("UPDATE workspaces SET created_at = now() - interval '12 hours' WHERE id = :ws"),
            {"ws": ws},
        )


def test_a_recovery_by_registration_counts_in_history_and_report(insight_db: Engine) -> None:
    """A registration's WORKSPACE_ONLINE keeps the original's payload (no
    `recovered_from`): its row's `previous_status` says what it left, so an agent that
    came back by registering again is read as down until then, in both readings."""
    ws = new_id()
    token = register_now(ws)["auth_token"]
    with insight_db.begin() as conn:
        conn.execute(text("UPDATE workspaces SET last_heartbeat_at = now() - interval '1 hour'"))
    with unit_of_work() as uow:
        (marked,) = mark_expired(uow, [uuid.UUID(ws)], get_settings())
    assert marked.new_status == "offline"
    register_now(ws, auth_token=token)
    register_now(ws, auth_token=token)  # already online: no change
    with insight_db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT event_type, previous_status FROM structure_events "
                "WHERE workspace_id = :ws ORDER BY id"
            ),
            {"ws": ws},
        ).all()
    assert [tuple(r) for r in rows] == [
        ("WORKSPACE_ONLINE", ""),  # its first: nothing before
        ("WORKSPACE_OFFLINE", None),  # says it in its payload
        ("WORKSPACE_ONLINE", "offline"),
        ("WORKSPACE_ONLINE", "online"),
    ]
    # Online from 10 h ago, offline from 6 h to 4 h ago: 75 % of the last 8 hours.
    _age_events(insight_db, ws, [10, 6, 4, 1])
    history = json.loads(run("history", ws, "--since", "8h", "--json").stdout)
    assert history["availability_percent"] == pytest.approx(75.0, abs=0.05)
    assert [s["status"] for s in history["timeline"]] == ["online", "offline", "online", "online"]
    report = json.loads(run("report", "--since", "8h", "--json").stdout)
    assert [(w["workspace_id"], round(w["availability_percent"], 1)) for w in
            report["least_available"]] == [(ws, 75.0)]  # fmt: skip
    assert report["availability"]["workspaces"] == 1


def test_report_over_an_empty_fleet(insight_db: Engine) -> None:
    found = json.loads(run("report", "--json").stdout)
    assert found["incidents"] == [] and found["least_available"] == []
    assert found["availability"]["workspaces"] == 0
    assert found["availability"]["mean_percent"] is None
    human = run("report")
    assert human.exit_code == 0 and "availability of 0 workspaces, mean n/a" in human.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["history", "not-a-uuid"], "'not-a-uuid' is not a workspace id"),
        (["history", "00000000-0000-0000-0000-000000000001"], "no workspace 00000000-"),
        (["history", "00000000-0000-0000-0000-000000000001", "--since", "yesterday"], "--since 'yesterday'"),
        (["history", "00000000-0000-0000-0000-000000000001", "--since", "0h"], "more than 0"),
        (["report", "--since", "2999-01-01T00:00:00Z"], "is not in the past"),
        (["report", "--since", "-5d"], "--since '-5d'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_code_1(
    insight_db: Engine, args: list[str], message: str
) -> None:
    with insight_db.connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM structure_events")).scalar_one()
    result = run(*args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert "Traceback" not in result.output
    with insight_db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM structure_events")).scalar_one() == before

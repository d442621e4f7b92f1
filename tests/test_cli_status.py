"""`molecule-registry status` and `workspace …`: output, --json, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from demo_helpers import closed_port
from sqlalchemy import text

from cli import main
from cli.status import DISPLAY_ORDER
from registry.statuses import ALL_STATUSES

pytestmark = pytest.mark.integration


def _insert(db, name, *, status, runtime="langgraph", heartbeat_ago=None, active_tasks=0):
    ws = uuid.uuid4()
    with db.begin() as conn:
        conn.execute(
            text(
                """
                INSERT INTO workspaces (id, name, status, runtime, active_tasks, last_heartbeat_at)
                VALUES (:id, :name, :status, :runtime, :active,
                        CASE WHEN CAST(:ago AS int) IS NULL THEN NULL
                             ELSE now() - make_interval(secs => CAST(:ago AS int)) END)
                """
            ),
            {
                "id": ws,
                "name": name,
                "status": status,
                "runtime": runtime,
                "active": active_tasks,
                "ago": heartbeat_ago,
            },
        )
    return ws


@pytest.fixture
def fleet(db):
    return {
        "busy": _insert(db, "busy-agent", status="online", heartbeat_ago=30, active_tasks=2),
        "laptop": _insert(db, "laptop", status="awaiting_agent", runtime="external"),
        "broken": _insert(db, "broken", status="failed"),
        "gone": _insert(db, "gone", status="removed"),
    }


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_every_status_has_a_place_in_the_table():
    assert sorted(DISPLAY_ORDER) == sorted(ALL_STATUSES)


def test_status_table_shows_counts_and_rows_trouble_first(fleet):
    result = run("status")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "failed=1  awaiting_agent=1  online=1  (total 3)"
    rows = [line for line in lines if line[:36].strip() in {str(v) for v in fleet.values()}]
    assert [row.split()[1] for row in rows] == ["broken", "laptop", "busy-agent"]
    busy = rows[2].split()
    assert busy[2:] == ["online", "langgraph", "30s", "2"]
    assert rows[1].split()[2:] == ["awaiting_agent", "external", "-", "0"]
    assert str(fleet["gone"]) not in result.output  # tombstones only when asked for


def test_status_json(fleet):
    result = run("status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["counts"] == {"failed": 1, "awaiting_agent": 1, "online": 1}
    assert data["total"] == data["shown"] == 3
    busy = next(w for w in data["workspaces"] if w["name"] == "busy-agent")
    assert busy["id"] == str(fleet["busy"])
    assert busy["status"] == "online"
    assert busy["runtime"] == "langgraph"
    assert busy["active_tasks"] == 2
    assert 29 <= busy["heartbeat_age_seconds"] <= 40
    assert busy["last_heartbeat_at"].endswith("+00:00")


def test_status_filters_and_limit(fleet):
    online = json.loads(run("status", "--status", "online", "--json").output)
    assert [w["name"] for w in online["workspaces"]] == ["busy-agent"]

    external = json.loads(run("status", "--runtime", "external", "--json").output)
    assert external["counts"] == {"awaiting_agent": 1}

    both = json.loads(run("status", "--status", "failed", "--status", "removed", "--json").output)
    assert both["counts"] == {"failed": 1, "removed": 1}

    limited = run("status", "--limit", "1")
    assert limited.exit_code == 0
    assert "broken" in limited.output
    assert "… 2 more" in limited.output
    limited_json = json.loads(run("status", "--limit", "1", "--json").output)
    assert (limited_json["shown"], limited_json["total"]) == (1, 3)

    nothing = run("status", "--runtime", "no-such-runtime")
    assert nothing.exit_code == 0
    assert nothing.output.strip() == "no workspaces match"


def test_status_rejects_an_unknown_status(db):
    result = run("status", "--status", "sleeping")
    assert result.exit_code == 2
    assert "Invalid value for '--status'" in result.output
    assert "'sleeping' is not one of" in result.output
    assert "Traceback" not in result.output


def test_workspace_create_show_remove_json(db):
    created = run("workspace", "create", "planner", "--runtime", "external", "--json")
    assert created.exit_code == 0, created.output
    body = json.loads(created.output)
    assert body["status"] == "created"
    assert body["workspace_status"] == "awaiting_agent"
    assert body["auth_token"]
    ws = body["workspace_id"]

    shown = json.loads(run("workspace", "show", ws, "--json").output)
    assert (shown["id"], shown["name"], shown["status"]) == (ws, "planner", "awaiting_agent")

    removed = run("workspace", "remove", ws, "--json")
    assert json.loads(removed.output)["status"] == "removed"
    assert json.loads(run("workspace", "show", ws, "--json").output)["status"] == "removed"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["workspace", "show", "{ws}"], 1, "Error: unknown workspace {ws}"),
        (["workspace", "show", "not-a-uuid"], 2, "'not-a-uuid' is not a UUID"),
        (["workspace", "remove", "{ws}"], 1, "Error: workspace_id: unknown workspace"),
        (["workspace", "remove", "12345"], 2, "'12345' is not a UUID"),
        (["workspace", "create", "x", "--runtime", "Bad Runtime!"], 1, "Error: runtime:"),
        (
            ["workspace", "create", "x", "--parent", "{ws}"],
            1,
            "Error: parent_id: unknown workspace",
        ),
        (["workspace", "create", "x", "--tier", "many"], 2, "'many' is not a valid integer"),
    ],
)
def test_workspace_commands_refuse_bad_input_in_one_line(db, args, code, message):
    ws = str(uuid.uuid4())
    result = run(*[a.format(ws=ws) for a in args])
    assert result.exit_code == code, result.output
    assert message.format(ws=ws) in result.output
    assert "Traceback" not in result.output
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM workspaces")).scalar() == 0


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "--json"],
        ["workspace", "show", str(uuid.uuid4())],
        ["workspace", "create", "x"],
    ],
)
def test_unreachable_database_is_one_line_naming_the_url(test_env, args):
    port = closed_port()
    env = dict(test_env, DATABASE_URL=f"postgresql+psycopg2://postgres:s3cret@127.0.0.1:{port}/x")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "molecule-registry"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f"Error: cannot reach PostgreSQL at postgresql+psycopg2://postgres:***@127.0.0.1:{port}/x: "
    )
    assert "s3cret" not in result.stderr

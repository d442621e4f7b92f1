"""Agent-controlled text reaches the operator's terminal escaped, never executed."""

from __future__ import annotations

import json

import pytest
from board_helpers import make_workspace, publish
from click.testing import CliRunner

from cli import main
from cli.safe import terminal_safe
from registry.statuses import EventType

# Window title, clear screen, carriage return (overwrites the line), one-byte CSI.
HOSTILE = "evil\x1b]0;pwned\x07\x1b[2J\rfake\u009b2J\x7f"
SHOWN = "evil\\x1b]0;pwned\\x07\\x1b[2J\\rfake\\x9b2J\\x7f"


def _no_controls(text: str) -> None:
    # Newlines separate the CLI's own lines; nothing else below U+0020 or in C1.
    bad = [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F]
    assert not bad, (bad, text)


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (HOSTILE, SHOWN),
        ("tab\tnew\nline", "tab\\tnew\\nline"),
        ("nul\x00bell\x07", "nul\\x00bell\\x07"),
        ("rtl\u202eoverride\u2028sep", "rtl\\u202eoverride\\u2028sep"),
        ("plain name → ok…, ünïcødé", "plain name → ok…, ünïcødé"),
    ],
)
def test_every_control_character_becomes_a_visible_escape(raw: str, shown: str) -> None:
    assert terminal_safe(raw) == shown
    _no_controls(terminal_safe(raw))


def test_every_code_point_below_a0_is_escaped_or_printable() -> None:
    for code in range(0xA0):
        out = terminal_safe(chr(code) + "\n")[:-2]  # the trailing "\n" becomes "\\n"
        assert out == chr(code) or (out.startswith("\\") and len(out) >= 2), code
        _no_controls(out)


@pytest.mark.integration
def test_status_table_escapes_names(db) -> None:
    ws = make_workspace(db, HOSTILE, status="online")
    result = run("status", "--limit", "0")
    assert result.exit_code == 0, result.output
    _no_controls(result.output)
    row = next(line for line in result.output.splitlines() if line.startswith(ws))
    assert SHOWN[:39] + "…" in row  # the table cuts names at 40 columns


@pytest.mark.integration
def test_status_json_is_escaped_by_the_encoder(db) -> None:
    ws = make_workspace(db, HOSTILE, status="online")
    result = run("status", "--json", "--limit", "0")
    assert result.exit_code == 0, result.output
    _no_controls(result.output)
    rows = json.loads(result.output)["workspaces"]
    assert next(r for r in rows if r["id"] == ws)["name"] == HOSTILE  # the exact value


@pytest.mark.integration
def test_workspace_show_escapes_name_url_card_and_samples(db) -> None:
    ws = make_workspace(
        db,
        HOSTILE,
        status="degraded",
        url="http://example.com/\x1b[2J",
        last_sample_error="boom\r\x1b]0;pwned\x07",
        current_task="\u009b31m",
    )
    with db.begin() as conn:
        from sqlalchemy import text

        conn.execute(
            text("UPDATE workspaces SET agent_card = CAST(:card AS jsonb) WHERE id = :id"),
            {"card": json.dumps({"name": "x\x1b[2J", "version": "1\u009b"}), "id": ws},
        )
    human = run("workspace", "show", ws)
    assert human.exit_code == 0, human.output
    _no_controls(human.output)
    assert SHOWN in human.output and "\\x1b[2J" in human.output

    as_json = run("workspace", "show", ws, "--json")
    _no_controls(as_json.output)
    data = json.loads(as_json.output)
    assert data["name"] == HOSTILE
    assert data["agent_card"] == {"name": "x\x1b[2J", "version": "1\u009b"}


@pytest.mark.integration
def test_events_lines_escape_names_urls_and_card_fields(db, redis_client) -> None:
    ws = make_workspace(db, HOSTILE)
    publish(
        db,
        redis_client,
        [
            (
                EventType.WORKSPACE_ONLINE,
                ws,
                {"url": "http://a/\x1b[2J", "agent_card": {}, "delivery_mode": "push"},
            ),
            (
                EventType.AGENT_CARD_UPDATED,
                ws,
                {"agent_card": {"name": "n\x1b]0;pwned\x07", "version": "\u009b2J\r"}},
            ),
        ],
    )
    human = run("events", "--since", "start", "--no-follow", "--workspace", ws)
    assert human.exit_code == 0, human.output
    _no_controls(human.output)
    lines = human.output.splitlines()
    assert len(lines) == 2
    assert "\\x1b[2J" in lines[0] and "evil\\x1b]0;pwn" in lines[0]
    assert "\\x9b2J" in lines[1]

    as_json = run("events", "--since", "start", "--no-follow", "--workspace", ws, "--json")
    _no_controls(as_json.output)
    payloads = [json.loads(line)["payload"] for line in as_json.output.splitlines()]
    assert payloads[1]["agent_card"]["version"] == "\u009b2J\r"

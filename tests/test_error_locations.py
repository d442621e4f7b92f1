"""Error locations quote producer-chosen keys: a key can never forge a log line."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from celery import Celery
from ingest_helpers import db_snapshot, new_id, redis_snapshot, task_named

from molecule_registry_client.names import HEARTBEAT_BATCH_TASK
from registry.ingestion.payloads import (
    LOC_PART_CAP,
    MAX_DESCRIBED_ERRORS,
    HeartbeatPayload,
    PayloadError,
    parse_payload,
)

FORGED = "x\n03:00:00 WARNING registry: workspace deleted"


def rejected(raw: dict[str, Any]) -> str:
    with pytest.raises(PayloadError) as caught:
        parse_payload(HeartbeatPayload, raw)
    return caught.value.error


def capabilities(caps: dict[str, Any]) -> dict[str, Any]:
    return {"workspace_id": new_id(), "runtime_metadata": {"capabilities": caps}}


def _printable(text: str) -> None:
    assert text.isprintable(), repr(text)


def test_plain_field_names_stay_bare() -> None:
    error = rejected(capabilities({"status_mgmt": 1}))
    assert error == "runtime_metadata.capabilities.status_mgmt: Input should be a valid boolean"


@pytest.mark.parametrize(
    ("key", "quoted"),
    [
        (FORGED, '"x\\n03:00:00 WARNING registry: workspace deleted"'),
        ("t\x1b]0;pwned\x07", '"t\\u001b]0;pwned\\u0007"'),
        ("\x1b[2J\r", '"\\u001b[2J\\r"'),
        ("csi\u009b2J", '"csi\\u009b2J"'),
        ("a.b: forged", '"a.b: forged"'),  # a dot or colon cannot fake a path either
        ("snowman ☃", '"snowman \\u2603"'),
    ],
)
def test_a_chosen_key_is_json_quoted(key: str, quoted: str) -> None:
    error = rejected(capabilities({key: "yes"}))
    assert error == f"runtime_metadata.capabilities.{quoted}: Input should be a valid boolean"
    _printable(error)


def test_a_long_key_is_cut() -> None:
    error = rejected(capabilities({"k" * 10_000: 1}))
    assert f'"{"k" * LOC_PART_CAP}"…:' in error
    assert len(error) < 400  # two errors (the key too long, the value not a bool)


def test_a_bad_key_itself_is_quoted() -> None:
    # A capability name with a NUL fails on the key: pydantic's "[key]" marker follows.
    error = rejected(capabilities({"a\x00\nb": True}))
    assert error.startswith('runtime_metadata.capabilities."a\\u0000\\nb".[key]: ')
    _printable(error)


def test_many_bad_keys_give_one_bounded_text() -> None:
    error = rejected(capabilities({f"k{i}\n": 1 for i in range(5_000)}))
    assert error.count("; ") == MAX_DESCRIBED_ERRORS
    assert error.endswith(f"and {5_000 - MAX_DESCRIBED_ERRORS} more errors")
    assert len(error) < 2_000
    _printable(error)


@pytest.mark.integration
def test_the_worker_logs_one_line_and_changes_nothing(
    db, redis_client, celery_app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    before, keys_before = db_snapshot(db), redis_snapshot(redis_client)
    item = capabilities({FORGED: "yes", "\x1b]0;pwned\x07": 2})
    with caplog.at_level(logging.DEBUG):
        result = task_named(celery_app, HEARTBEAT_BATCH_TASK).apply(args=[{"heartbeats": [item]}])
    assert result.get()["rejected"] == 1
    assert db_snapshot(db) == before
    assert redis_snapshot(redis_client) == keys_before
    refusals = [r.getMessage() for r in caplog.records if "capabilities" in r.getMessage()]
    assert refusals, caplog.text
    for message in refusals:
        assert "\n" not in message and "\x1b" not in message, message
        assert '"x\\n03:00:00 WARNING' in message

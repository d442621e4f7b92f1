"""Orphan sweep, pass 3: stale tokens of containers that are gone (CONTRACT §5).

Revoked: exactly the live tokens of container-backed workspaces, not `removed` or
`provisioning`, whose container does not exist and that were not used for 5 minutes.
Left alone: a token issued a moment ago, an external or mock workspace's token, a
token whose container runs (or exists stopped, under its full or legacy name), a
removed or provisioning workspace's token. A listing error skips the pass; an empty
listing is a real answer. A revoked workspace
can bootstrap again (first registration without a token).
"""

from __future__ import annotations

from uuid import UUID

import pytest
from fakes import FakeContainers
from ingest_helpers import outcome, register_now, tokens_of
from maintenance_helpers import add_workspace
from sqlalchemy import Engine, text

from registry.ingestion.tokens import issue_token
from registry.sweeps.orphans import sweep_orphans

pytestmark = pytest.mark.integration


def _token(
    engine: Engine, ws: UUID, *, unused_for: str | None = None, used_ago: str | None = None
) -> str:
    """Issue a live token; `unused_for`/`used_ago` are SQL intervals moved into the past."""
    with engine.begin() as conn:
        token = issue_token(conn, ws, None)
        if unused_for is not None:
            conn.execute(
                text(
                    "UPDATE workspace_auth_tokens SET created_at = now() - CAST(:i AS interval) "
                    "WHERE workspace_id = :ws"
                ),
                {"i": unused_for, "ws": ws},
            )
        if used_ago is not None:
            conn.execute(
                text(
                    "UPDATE workspace_auth_tokens SET last_used_at = now() - CAST(:i AS interval) "
                    "WHERE workspace_id = :ws"
                ),
                {"i": used_ago, "ws": ws},
            )
    return token


def _live(engine: Engine, ws: UUID) -> bool:
    return any(t.revoked_at is None for t in tokens_of(engine, ws))


def test_the_stale_token_pass_revokes_exactly_what_the_contract_names(db: Engine) -> None:
    fake = FakeContainers()
    # Revoked: container gone, token unused for > 5 minutes, in any live-ish status.
    gone = {
        status: add_workspace(db, status=status)
        for status in ("online", "offline", "degraded", "failed", "hibernated", "paused")
    }
    for ws in gone.values():
        _token(db, ws, unused_for="10 minutes")
    used_long_ago = add_workspace(db, status="offline")
    _token(db, used_long_ago, unused_for="1 day", used_ago="6 minutes")
    # Left alone:
    just_issued = add_workspace(db, status="online")  # a restart in progress
    _token(db, just_issued)
    recently_used = add_workspace(db, status="online")
    _token(db, recently_used, unused_for="1 day", used_ago="4 minutes")
    external = add_workspace(db, status="offline", runtime="external")
    _token(db, external, unused_for="1 day")
    mock = add_workspace(db, status="online", runtime="mock")  # no container (§12)
    _token(db, mock, unused_for="1 day")
    legacy = add_workspace(db, status="online")  # its container has the legacy name
    _token(db, legacy, unused_for="1 day")
    fake.add_managed(legacy, legacy=True)
    running = add_workspace(db, status="online")
    _token(db, running, unused_for="1 day")
    fake.add_managed(running)
    stopped = add_workspace(db, status="hibernated")  # its container exists, stopped
    _token(db, stopped, unused_for="1 day")
    fake.add_unlabelled(stopped)
    removed = add_workspace(db, status="removed")
    _token(db, removed, unused_for="1 day")
    provisioning = add_workspace(db, status="provisioning")
    _token(db, provisioning, unused_for="1 day")

    result = sweep_orphans(fake)

    assert result["stale_tokens"] == {"revoked": len(gone) + 1, "error": None}
    for ws in [*gone.values(), used_long_ago]:
        assert not _live(db, ws), ws
    for ws in (
        just_issued, recently_used, external, mock, legacy, running, stopped, removed,
        provisioning,
    ):  # fmt: skip
        assert _live(db, ws), ws
    # Idempotent: nothing left to revoke.
    assert sweep_orphans(fake)["stale_tokens"] == {"revoked": 0, "error": None}


def test_a_listing_error_skips_the_pass(db: Engine) -> None:
    ws = add_workspace(db, status="offline")
    _token(db, ws, unused_for="1 day")
    fake = FakeContainers(list_fails=True)

    result = sweep_orphans(fake)

    assert result["stale_tokens"]["revoked"] == 0
    assert "cannot list containers" in result["stale_tokens"]["error"]
    assert _live(db, ws)


def test_an_empty_listing_is_a_real_answer(db: Engine) -> None:
    ws = add_workspace(db, status="offline")
    _token(db, ws, unused_for="1 day")

    assert sweep_orphans(FakeContainers())["stale_tokens"] == {"revoked": 1, "error": None}
    assert not _live(db, ws)


def test_a_recreated_container_can_bootstrap_after_the_revocation(db: Engine) -> None:
    ws = add_workspace(db, status="offline")
    _token(db, ws, unused_for="1 day")
    assert outcome(lambda: register_now(ws))["status"] == "unauthorized"  # locked out

    sweep_orphans(FakeContainers())

    again = register_now(ws)
    assert again["status"] == "registered" and again["auth_token"]

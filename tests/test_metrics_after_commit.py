"""Registration and removal count their status transitions only once committed.

A unit of work that rolls back (the message failed after the change was made) leaves
`registry_transitions_total` untouched; the same change committed counts once.
"""

from __future__ import annotations

import pytest
from ingest_helpers import new_id, register_now, set_status
from sqlalchemy import Engine

from registry.ingestion.lifecycle import remove_workspace
from registry.ingestion.payloads import RegisterPayload, RemoveWorkspacePayload, parse_payload
from registry.ingestion.registration import register
from registry.metrics import TRANSITIONS
from registry.uow import unit_of_work

pytestmark = pytest.mark.integration


class Boom(Exception):
    """Something failing after the domain call, inside the same transaction."""


def _count(from_status: str, to_status: str) -> float:
    return TRANSITIONS.labels(from_status, to_status)._value.get()


def test_a_rolled_back_registration_is_not_counted(db: Engine) -> None:
    ws = new_id()
    token = register_now(ws)["auth_token"]
    set_status(db, ws, "offline")
    payload = parse_payload(
        RegisterPayload,
        {"id": ws, "agent_card": {}, "delivery_mode": "poll", "auth_token": token},
    )
    before = _count("offline", "online")

    with pytest.raises(Boom), unit_of_work() as uow:
        register(uow, payload)
        raise Boom
    assert _count("offline", "online") == before

    with unit_of_work() as uow:
        register(uow, payload)
    assert _count("offline", "online") == before + 1


def test_a_rolled_back_removal_is_not_counted(db: Engine) -> None:
    ws = new_id()
    register_now(ws)
    payload = parse_payload(RemoveWorkspacePayload, {"workspace_id": ws})
    before = _count("online", "removed")

    with pytest.raises(Boom), unit_of_work() as uow:
        remove_workspace(uow, payload)
        raise Boom
    assert _count("online", "removed") == before

    with unit_of_work() as uow:
        remove_workspace(uow, payload)
    assert _count("online", "removed") == before + 1

"""The gateway's set form of §9 (`gateway.peers.talk_set`) agrees with
`registry.access.can_communicate` pair by pair: siblings, roots, ancestors and
descendants, removed endpoints and intermediates, a cycle, and the 32-level bound."""

from __future__ import annotations

import uuid

import pytest
from board_helpers import make_workspace
from sqlalchemy import text

from gateway.peers import talk_set
from registry.access import MAX_DEPTH, can_communicate

pytestmark = pytest.mark.integration


def test_talk_set_is_can_communicate_for_every_pair(db):
    ids: list[str] = []

    def add(name: str, parent: str | None = None, status: str = "online") -> str:
        ids.append(make_workspace(db, name, status=status, parent_id=parent))
        return ids[-1]

    r1, r2 = add("r1"), add("r2")
    a = add("a", r1)
    add("b", r1)
    a1 = add("a1", a)
    add("a1x", a1)
    add("b-removed", r1, status="removed")
    hollow = add("hollow", r2, status="removed")  # a removed intermediate still links
    add("under-hollow", hollow)
    add("root-removed", status="removed")
    x = add("cycle-x")
    y = add("cycle-y", x)
    with db.begin() as conn:
        conn.execute(text("UPDATE workspaces SET parent_id = :y WHERE id = :x"), {"x": x, "y": y})
    add("cycle-child", y)
    chain = add("deep-0")
    for level in range(1, MAX_DEPTH + 3):  # one past the bound and more
        chain = add(f"deep-{level}", chain)

    with db.connect() as conn:
        for caller in ids:
            expected = {t for t in ids if can_communicate(conn, uuid.UUID(caller), uuid.UUID(t))}
            assert talk_set(conn, caller) == expected, caller
        assert talk_set(conn, uuid.uuid4()) == frozenset()

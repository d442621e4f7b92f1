"""can_communicate (CONTRACT §9) against real PostgreSQL."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import Connection, Engine, create_engine, event, text

from registry.access import MAX_DEPTH, can_communicate, can_communicate_ids


def add(conn: Connection, parent: UUID | None = None, status: str = "online") -> UUID:
    ws_id = uuid.uuid4()
    conn.execute(
        text("INSERT INTO workspaces (id, name, status, parent_id) VALUES (:id, :n, :s, :p)"),
        {"id": ws_id, "n": f"ws-{ws_id.hex[:6]}", "s": status, "p": parent},
    )
    return ws_id


def chain(conn: Connection, length: int) -> list[UUID]:
    """[root, child, grandchild, ...]: `length` workspaces, each the parent of the next."""
    ids = [add(conn)]
    for _ in range(length - 1):
        ids.append(add(conn, parent=ids[-1]))
    return ids


@pytest.fixture
def conn(db: Engine) -> Iterator[Connection]:
    with db.begin() as connection:
        yield connection


def test_self(conn: Connection) -> None:
    a = add(conn)
    assert can_communicate(conn, a, a)


def test_siblings_under_a_parent(conn: Connection) -> None:
    parent = add(conn)
    a, b = add(conn, parent), add(conn, parent)
    assert can_communicate(conn, a, b)
    assert can_communicate(conn, b, a)


def test_TestCanCommunicate_Denied_RootSiblings(conn: Connection) -> None:
    # CONTRACT §12: two workspaces without a parent may no longer talk to each other.
    a, b = add(conn), add(conn)
    assert not can_communicate(conn, a, b)
    assert not can_communicate(conn, b, a)
    assert can_communicate(conn, a, a)  # the same root workspace still may


def test_root_and_a_child_of_another_root_are_not(conn: Connection) -> None:
    a, other_root = add(conn), add(conn)
    child = add(conn, other_root)
    assert not can_communicate(conn, a, child)
    assert not can_communicate(conn, child, a)


def test_ancestor_and_descendant_any_level(conn: Connection) -> None:
    grandparent, parent, grandchild = chain(conn, 3)
    assert can_communicate(conn, grandparent, grandchild)  # caller is an ancestor
    assert can_communicate(conn, grandchild, grandparent)  # caller is a descendant
    assert can_communicate(conn, parent, grandchild)
    assert can_communicate(conn, grandchild, parent)


def test_cousins_and_uncles_are_not(conn: Connection) -> None:
    root = add(conn)
    p1, p2 = add(conn, root), add(conn, root)
    c1, c2 = add(conn, p1), add(conn, p2)
    assert not can_communicate(conn, c1, c2)  # cousins
    assert not can_communicate(conn, c1, p2)  # nephew → uncle
    assert not can_communicate(conn, p2, c1)  # uncle → nephew


def test_unknown_caller_or_target(conn: Connection) -> None:
    a = add(conn)
    unknown = uuid.uuid4()
    assert not can_communicate(conn, unknown, a)
    assert not can_communicate(conn, a, unknown)
    assert not can_communicate(conn, unknown, unknown)


def test_removed_counts_as_unknown(conn: Connection) -> None:
    parent = add(conn)
    live = add(conn, parent)
    removed = add(conn, parent, status="removed")
    removed_root = add(conn, status="removed")
    assert not can_communicate(conn, live, removed)
    assert not can_communicate(conn, removed, live)
    assert not can_communicate(conn, removed, removed)
    assert not can_communicate(conn, parent, removed)
    assert not can_communicate(conn, removed_root, removed_root)  # not even itself


def test_removed_intermediate_still_links_the_chain(conn: Connection) -> None:
    # Documented choice: only the endpoints' status matters.
    grandparent = add(conn)
    parent = add(conn, grandparent, status="removed")
    child = add(conn, parent)
    assert can_communicate(conn, grandparent, child)
    assert can_communicate(conn, child, grandparent)


def test_parent_cycle_terminates(conn: Connection) -> None:
    a, b = add(conn), add(conn)
    outsider = add(conn)
    conn.execute(text("UPDATE workspaces SET parent_id = :b WHERE id = :a"), {"a": a, "b": b})
    conn.execute(text("UPDATE workspaces SET parent_id = :a WHERE id = :b"), {"a": a, "b": b})
    # Each is the other's parent, hence ancestor: allowed; the walk stops at MAX_DEPTH.
    assert can_communicate(conn, a, b)
    assert can_communicate(conn, b, a)
    assert not can_communicate(conn, outsider, a)
    assert not can_communicate(conn, a, outsider)


def test_self_parent_cycle_terminates(conn: Connection) -> None:
    a, root = add(conn), add(conn)
    conn.execute(text("UPDATE workspaces SET parent_id = id WHERE id = :a"), {"a": a})
    assert can_communicate(conn, a, a)
    assert not can_communicate(conn, a, root)


def test_walk_is_bounded_at_max_depth(conn: Connection) -> None:
    ids = chain(conn, 41)  # ids[0] is 40 levels above ids[40]
    leaf = ids[-1]
    assert can_communicate(conn, ids[-1 - MAX_DEPTH], leaf)  # exactly MAX_DEPTH levels up
    assert can_communicate(conn, leaf, ids[-1 - MAX_DEPTH])
    assert not can_communicate(conn, ids[-2 - MAX_DEPTH], leaf)  # one level beyond: refused
    assert not can_communicate(conn, leaf, ids[-2 - MAX_DEPTH])
    assert not can_communicate(conn, ids[0], leaf)  # 40 levels up
    assert not can_communicate(conn, leaf, ids[0])


def test_is_one_query(conn: Connection) -> None:
    ids = chain(conn, 10)
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])  # (conn, cursor, statement, parameters, context, many)

    event.listen(conn, "before_cursor_execute", count)
    try:
        assert can_communicate(conn, ids[0], ids[-1])
        assert not can_communicate(conn, ids[-1], uuid.uuid4())
    finally:
        event.remove(conn, "before_cursor_execute", count)
    assert len(statements) == 2
    assert all("WITH RECURSIVE" in s for s in statements)


def test_failed_lookup_is_refused(conn: Connection, caplog: pytest.LogCaptureFixture) -> None:
    a = add(conn)
    with caplog.at_level(logging.ERROR, logger="registry.access"):
        # Not a UUID: PostgreSQL rejects the cast, which must answer False, not raise.
        assert not can_communicate(conn, "not-a-uuid", a)  # type: ignore[arg-type]
    assert "fail secure" in caplog.text


def test_can_communicate_ids(db: Engine) -> None:
    with db.begin() as conn:
        parent = add(conn)
        child = add(conn, parent)
    assert can_communicate_ids(db, parent, child)
    assert not can_communicate_ids(db, child, uuid.uuid4())


def test_can_communicate_ids_database_down() -> None:
    # Nothing listens on port 1: connecting fails, which must answer False.
    dead = create_engine(
        "postgresql+psycopg2://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 1}
    )
    try:
        assert not can_communicate_ids(dead, uuid.uuid4(), uuid.uuid4())
    finally:
        dead.dispose()

"""Orphan-container sweep (CONTRACT §5) against real PostgreSQL, with FakeContainers."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from fakes import FakeContainers
from maintenance_helpers import add_workspace, run_concurrently
from sqlalchemy import Engine, event, text

from registry.sweeps import orphans
from registry.sweeps.containers import ContainerError, container_name, id_prefix
from registry.sweeps.orphans import statuses_by_prefix, sweep_orphans

pytestmark = pytest.mark.integration


@pytest.fixture
def statements(db: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every SQL statement the sweep sends, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(db, "before_cursor_execute", record)
    yield seen
    event.remove(db, "before_cursor_execute", record)


def prefix_queries(statements: list[tuple[str, Any]]) -> list[list[str]]:
    return [params["prefixes"] for sql, params in statements if "unnest" in sql]


def test_container_of_a_removed_workspace_is_stopped_then_its_volume_removed(db: Engine) -> None:
    ws = add_workspace(db, status="removed")
    fake = FakeContainers()
    name = fake.add_managed(ws)

    result = sweep_orphans(fake)

    assert result["changed"] == 1
    assert result["removed"] == {
        "stopped": 1,
        "volumes_removed": 1,
        "stop_errors": 0,
        "volume_errors": 0,
        "error": None,
    }
    assert fake.calls_to("stop_container") == [name]
    reaping = [call for call in fake.calls if not call[0].startswith("list_")]
    assert reaping == [("stop_container", name), ("remove_volume", str(ws))]
    assert name == f"ws-{ws}"  # the full id (CONTRACT §12)
    assert fake.removed_volumes == [f"{name}-configs", f"{name}-claude-sessions"]


def test_unlabelled_container_of_a_removed_workspace_is_reaped_by_name(db: Engine) -> None:
    ws = add_workspace(db, status="removed")
    fake = FakeContainers()
    name = fake.add_unlabelled(ws)

    result = sweep_orphans(fake)

    assert result["removed"]["stopped"] == result["removed"]["volumes_removed"] == 1
    assert result["unknown"]["stopped"] == 0
    assert fake.stopped == [name]
    assert fake.removed_volumes == [f"{name}-configs", f"{name}-claude-sessions"]
    # Pass 1 lists by name, pass 2 by label: each pass lists once.
    assert fake.calls_to("list_workspace_containers") == fake.calls_to("list_managed") == [None]


def test_unlabelled_containers_without_a_row_are_foreign_and_left_alone(db: Engine) -> None:
    removed = add_workspace(db, status="removed")
    fake = FakeContainers()
    reaped = fake.add_unlabelled(removed)
    foreign = fake.add_unlabelled(uuid.uuid4())  # no row, no label: not ours to judge
    wiped = fake.add_managed(uuid.uuid4())  # no row, managed: the database was wiped

    result = sweep_orphans(fake)

    assert (result["removed"]["stopped"], result["unknown"]["stopped"]) == (1, 1)
    assert sorted(fake.stopped) == sorted([reaped, wiped])
    assert foreign not in fake.stopped
    assert foreign in fake.unlabelled


def test_live_workspaces_containers_are_never_touched(db: Engine) -> None:
    fake = FakeContainers()
    for status in ("online", "offline", "provisioning", "hibernated", "paused", "failed"):
        fake.add_managed(add_workspace(db, status=status))
        fake.add_unlabelled(add_workspace(db, status=status))

    result = sweep_orphans(fake)

    assert result["changed"] == 0
    assert fake.calls_to("stop_container") == []
    assert fake.calls_to("remove_volume") == []


def test_a_prefix_shared_by_a_removed_and_a_live_row_is_left_alone(db: Engine) -> None:
    removed = UUID("0f3c2a9b-1d2e-4f50-8a6b-7c8d9e0f1a2b")
    live = UUID("0f3c2a9b-1d2f-4f50-8a6b-000000000001")  # same first 12 characters
    add_workspace(db, status="removed", ws_id=removed)
    add_workspace(db, status="online", ws_id=live)
    fake = FakeContainers()
    fake.add_managed(removed, legacy=True)  # `ws-0f3c2a9b-1d2`: either workspace's

    assert sweep_orphans(fake)["changed"] == 0
    assert fake.calls_to("stop_container") == []

    # Under its full name the container is unambiguous: the removed one's is reaped.
    full = fake.add_managed(removed)
    assert sweep_orphans(fake)["changed"] == 1
    assert fake.stopped == [full]


def test_legacy_named_containers_are_still_recognised(db: Engine) -> None:
    removed = add_workspace(db, status="removed")
    fake = FakeContainers()
    legacy = fake.add_unlabelled(removed, legacy=True)
    wiped = fake.add_managed(uuid.uuid4(), legacy=True)

    result = sweep_orphans(fake)

    assert (result["removed"]["stopped"], result["unknown"]["stopped"]) == (1, 1)
    assert sorted(fake.stopped) == sorted([legacy, wiped])
    assert legacy == f"ws-{id_prefix(removed)}"
    assert f"{legacy}-configs" in fake.removed_volumes
    assert f"{legacy}-claude-sessions" in fake.removed_volumes


def test_TestSweepOnce_WipedDBDoesNotCrossReapOtherInstance(db: Engine) -> None:
    # Two platforms share one engine; this registry's database was wiped. Only the
    # containers labelled with this instance's id are its own.
    fake = FakeContainers()
    ours = fake.add_managed(uuid.uuid4())
    theirs = fake.add_foreign(uuid.uuid4())
    theirs_legacy = fake.add_foreign(uuid.uuid4(), legacy=True)

    result = sweep_orphans(fake)

    assert result["unknown"]["stopped"] == 1
    assert fake.stopped == [ours]
    assert {theirs, theirs_legacy} <= fake.foreign  # never touched
    assert all(not v.startswith((theirs, theirs_legacy)) for v in fake.removed_volumes)


def test_stop_failure_keeps_the_volume_and_retries_next_sweep(db: Engine) -> None:
    ws = add_workspace(db, status="removed")
    fake = FakeContainers()
    name = fake.add_managed(ws)
    fake.failing_names.add(name)

    result = sweep_orphans(fake)

    assert result["changed"] == 0
    assert result["removed"]["stop_errors"] == 1
    assert fake.calls_to("remove_volume") == []

    fake.failing_names.clear()
    assert sweep_orphans(fake)["removed"]["volumes_removed"] == 1


def test_a_volume_error_is_only_logged(db: Engine, caplog: pytest.LogCaptureFixture) -> None:
    first, second = add_workspace(db, status="removed"), add_workspace(db, status="removed")
    fake = FakeContainers()
    fake.add_managed(first)
    fake.add_managed(second)
    fake.volume_fails.add(str(first))

    with caplog.at_level(logging.WARNING, logger="registry.sweeps.orphans"):
        result = sweep_orphans(fake)

    assert result["status"] == "ok"
    assert result["removed"]["stopped"] == 2
    assert (result["removed"]["volume_errors"], result["removed"]["volumes_removed"]) == (1, 1)
    assert f"stopped {container_name(first)} but its volume stays" in caplog.text


def test_wiped_database_container_is_stopped_and_its_volume_removed(
    db: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    add_workspace(db, status="online")  # the fleet that is left
    fake = FakeContainers()
    name = fake.add_managed(uuid.uuid4())  # no row at all

    with caplog.at_level(logging.WARNING, logger="registry.sweeps.orphans"):
        result = sweep_orphans(fake)

    assert result["changed"] == 1
    assert result["unknown"]["stopped"] == result["unknown"]["volumes_removed"] == 1
    assert fake.stopped == [name]
    assert fake.removed_volumes == [f"{name}-configs", f"{name}-claude-sessions"]
    assert "database wiped?" in caplog.text


def test_foreign_or_wildcard_prefixes_are_never_queried_or_touched(
    db: Engine, statements: list[tuple[str, Any]]
) -> None:
    removed, live = add_workspace(db, status="removed"), add_workspace(db, status="online")
    fake = FakeContainers()
    ours = fake.add_managed(removed)
    fake.add_managed(live)
    foreign = {
        "ws-0f3c2a9b_1d2",  # `_` is a LIKE wildcard
        "ws-0f3c2a9b%1d2",
        "ws-zzzzzzzz-zzz",
        "ws-",
        "ws-0f3c",  # too short: would match many rows
        "ws-0f3c2a9b-1d2e",  # neither 12 nor 36 characters: not a container name of ours
        "ws-0f3c2a9b-1d2e-4f50-8a6b-7c8d9e0f1a2",  # 35
        "ws-0f3c2a9b-1d2e-4f50-8a6b-7c8d9e0f1a2bc",  # 37
        "ws-0f3c2a9b-1d2e-4f50-8a6b-7c8d9e0f1a2_",  # a wildcard in a full id
        "ws-0f3c2a9b-1d2e-4f50-8a6b-7c8d9e0f1a2b-configs",  # a volume's name
        "ws-pg-data",
    }
    fake.managed |= foreign

    result = sweep_orphans(fake)

    assert fake.stopped == [ours]
    assert result["ignored"] == len(foreign)
    # One query per pass; pass 2 no longer sees the container pass 1 stopped.
    assert prefix_queries(statements) == [sorted([str(removed), str(live)]), [str(live)]]


def test_one_query_per_pass_whatever_the_number_of_containers(
    db: Engine, statements: list[tuple[str, Any]]
) -> None:
    fake = FakeContainers()
    for _ in range(15):
        fake.add_managed(add_workspace(db, status="removed"))
    for _ in range(5):
        fake.add_managed(uuid.uuid4())

    result = sweep_orphans(fake)

    assert (result["removed"]["stopped"], result["unknown"]["stopped"]) == (15, 5)
    assert len(prefix_queries(statements)) == 2


def test_uppercase_names_are_matched_case_insensitively(db: Engine) -> None:
    # Never mistaken for "no row": the row exists and is online.
    ws = add_workspace(db, status="online")
    fake = FakeContainers()
    fake.managed.add(container_name(ws).upper().replace("WS-", "ws-"))
    assert sweep_orphans(fake)["changed"] == 0


def test_the_first_pass_failing_never_stops_the_second(db: Engine) -> None:
    removed = add_workspace(db, status="removed")

    class BrokenOnRemoved(FakeContainers):
        def stop_container(self, name: str) -> None:
            if name == container_name(removed):
                raise RuntimeError("engine bug")
            super().stop_container(name)

    fake = BrokenOnRemoved()
    fake.add_managed(removed)
    wiped = fake.add_managed(uuid.uuid4())

    result = sweep_orphans(fake)

    assert result["removed"]["error"] == "RuntimeError: engine bug"
    assert result["unknown"]["stopped"] == 1
    assert fake.stopped == [wiped]


def test_a_failing_listing_in_one_pass_never_stops_the_other(db: Engine) -> None:
    class NameListingFails(FakeContainers):
        def list_workspace_containers(self):
            raise ContainerError("engine restarting")

    class LabelListingFails(FakeContainers):
        def list_managed(self):
            raise ContainerError("engine restarting")

    first = NameListingFails()
    wiped = first.add_managed(uuid.uuid4())
    result = sweep_orphans(first)
    assert result["removed"]["error"] == "ContainerError: engine restarting"
    assert first.stopped == [wiped]

    second = LabelListingFails()
    removed = second.add_unlabelled(add_workspace(db, status="removed"))
    result = sweep_orphans(second)
    assert result["unknown"]["error"] == "ContainerError: engine restarting"
    assert second.stopped == [removed]


def test_the_deadline_is_respected_and_reported(
    db: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]

    class SlowEngine(FakeContainers):
        def stop_container(self, name: str) -> None:
            now[0] += 12.0
            super().stop_container(name)

    fake = SlowEngine()
    for _ in range(4):
        fake.add_managed(add_workspace(db, status="removed"))
    fake.add_managed(uuid.uuid4())

    with caplog.at_level(logging.WARNING, logger="registry.sweeps.orphans"):
        result = sweep_orphans(fake, deadline_seconds=30, clock=lambda: now[0])

    assert result["deadline_exceeded"] is True
    assert result["removed"]["stopped"] == 3  # started at t=0, 12, 24; t=36 is too late
    assert result["unknown"]["stopped"] == 0  # the second pass never began
    assert len(fake.calls_to("list_workspace_containers")) == 1  # pass 1 listed once
    assert fake.calls_to("list_managed") == []
    assert "deadline" in caplog.text

    assert sweep_orphans(fake)["changed"] == 2  # the next sweep carries on


def test_two_concurrent_sweeps_reap_each_container_once(db: Engine) -> None:
    class SlowStop(FakeContainers):
        def stop_container(self, name: str) -> None:
            time.sleep(0.02)
            super().stop_container(name)

    fake = SlowStop()
    names = {fake.add_managed(add_workspace(db, status="removed")) for _ in range(8)}

    results = run_concurrently(2, lambda: sweep_orphans(fake))

    assert sorted(fake.calls_to("stop_container")) == sorted(names)
    assert sum(r["changed"] for r in results) == 8


def test_without_a_backend_the_sweep_is_disabled_and_says_so_once(
    db: Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(orphans, "_disabled_logged", [])
    with caplog.at_level(logging.WARNING, logger="registry.sweeps.orphans"):
        first = sweep_orphans(None)
        sweep_orphans(None)
    assert first == {"status": "ok", "changed": 0, "disabled": "no container backend"}
    assert caplog.text.count("orphan-container sweep disabled") == 1


def test_prefix_lookup_refuses_wildcards_and_uses_the_index(db: Engine) -> None:
    with db.connect() as conn:
        with pytest.raises(ValueError, match="unsafe prefix"):
            statuses_by_prefix(conn, ["0f3c2a9b_1d2"])
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(
            conn.execute(
                text("EXPLAIN " + orphans._STATUSES_BY_PREFIX.text),
                {
                    "prefixes": ["0f3c2a9b-1d2"],
                    "lows": ["0f3c2a9b-1d20-0000-0000-000000000000"],
                    "highs": ["0f3c2a9b-1d2f-ffff-ffff-ffffffffffff"],
                },
            ).scalars()
        )
    # A prefix is a range of the primary key: no index on id::text to maintain.
    assert "workspaces_pkey" in plan and "Seq Scan" not in plan


def test_prefix_range_covers_exactly_the_ids_that_start_with_it(db: Engine) -> None:
    inside = ["0f3c2a9b-1d20-0000-0000-000000000000", "0f3c2a9b-1d2f-ffff-ffff-ffffffffffff"]
    outside = ["0f3c2a9b-1d1f-ffff-ffff-ffffffffffff", "0f3c2a9b-1d30-0000-0000-000000000000"]
    with db.begin() as conn:
        for n, ws in enumerate(inside + outside):
            conn.execute(
                text("INSERT INTO workspaces (id, name, status) VALUES (:id, :n, 'removed')"),
                {"id": ws, "n": f"edge-{n}"},
            )
        found = statuses_by_prefix(conn, ["0f3c2a9b-1d2", "0f3c2a9b-1d1", "0f3c2a9b-1d4"])
    assert found == {"0f3c2a9b-1d2": ["removed", "removed"], "0f3c2a9b-1d1": ["removed"]}
    with db.connect() as conn:  # a full id is a range of one
        assert statuses_by_prefix(conn, [inside[0], "0f3c2a9b-1d20-0000-0000-000000000001"]) == {
            inside[0]: ["removed"]
        }


def test_task_without_a_backend(db: Engine, worker, celery_app) -> None:
    result = celery_app.send_task("registry.sweep_orphans", queue="registry.sweeps").get(timeout=20)
    assert result == {"status": "ok", "changed": 0, "disabled": "no container backend"}

"""registry.can_communicate (task, through a real worker) and `molecule-registry can-communicate`."""

from __future__ import annotations

import json
import socket
import uuid
from dataclasses import dataclass
from uuid import UUID

import pytest
from click.testing import CliRunner
from maintenance_helpers import add_workspace, environment
from sqlalchemy import Engine, text

from cli import main

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Tree:
    """root ─ parent ─ child ─ grandchild, parent's sibling `uncle`, child's sibling
    `sibling`, the uncle's child `cousin`, a second root, a removed workspace under
    root, and a two-row parent cycle (a corrupt chain)."""

    root: UUID
    other_root: UUID
    parent: UUID
    uncle: UUID
    child: UUID
    sibling: UUID
    cousin: UUID
    grandchild: UUID
    removed: UUID
    cycle_a: UUID
    cycle_b: UUID


@pytest.fixture
def tree(db: Engine) -> Tree:
    root = add_workspace(db)
    other_root = add_workspace(db)
    parent = add_workspace(db, parent_id=root)
    uncle = add_workspace(db, parent_id=root)
    child = add_workspace(db, parent_id=parent)
    sibling = add_workspace(db, parent_id=parent)
    cousin = add_workspace(db, parent_id=uncle)
    grandchild = add_workspace(db, parent_id=child)
    removed = add_workspace(db, parent_id=root, status="removed")
    cycle_a = add_workspace(db)
    cycle_b = add_workspace(db, parent_id=cycle_a)
    with db.begin() as conn:
        conn.execute(
            text("UPDATE workspaces SET parent_id = :b WHERE id = :a"),
            {"a": cycle_a, "b": cycle_b},
        )
    return Tree(
        root, other_root, parent, uncle, child, sibling, cousin, grandchild, removed, cycle_a,
        cycle_b,
    )  # fmt: skip


# (caller, target, allowed, why)
RULES = [
    ("child", "child", True, "self"),
    ("child", "sibling", True, "siblings under one parent"),
    ("root", "other_root", False, "two roots are not siblings (CONTRACT §12)"),
    ("root", "grandchild", True, "caller is an ancestor (3 levels)"),
    ("grandchild", "root", True, "caller is a descendant (3 levels)"),
    ("parent", "child", True, "parent → child"),
    ("child", "parent", True, "child → parent"),
    ("child", "cousin", False, "cousins"),
    ("child", "uncle", False, "nephew → uncle"),
    ("other_root", "child", False, "a root and another root's descendant"),
    ("root", "removed", False, "a removed workspace is a tombstone"),
    ("cycle_a", "root", False, "a corrupt parent cycle terminates"),
    ("cycle_a", "cycle_b", True, "inside the cycle each is the other's parent"),
]


def ask(celery_app, payload: object) -> dict:
    return celery_app.send_task("registry.can_communicate", args=[payload], queue="registry").get(
        timeout=20
    )


def test_every_rule_through_the_task(tree: Tree, worker, celery_app) -> None:
    answers = {}
    for caller, target, _allowed, _why in RULES:
        payload = {
            "caller_id": str(getattr(tree, caller)),
            "target_id": str(getattr(tree, target)),
        }
        answers[(caller, target)] = ask(celery_app, payload)
    for caller, target, allowed, why in RULES:
        answer = answers[(caller, target)]
        assert answer["status"] == "ok", (why, answer)
        assert answer["allowed"] is allowed, why
        assert ("reason" in answer) is (not allowed), why
    assert answers[("child", "cousin")]["reason"].startswith("not related")
    assert answers[("root", "other_root")]["reason"] == (
        "not related: two workspaces without a parent are not siblings"
    )
    assert answers[("root", "removed")]["reason"] == (
        f"target_id: workspace {tree.removed} was removed"
    )


def test_unknown_workspaces_are_denied_with_the_field_named(tree: Tree, worker, celery_app) -> None:
    ghost = uuid.uuid4()
    answer = ask(celery_app, {"caller_id": str(ghost), "target_id": str(tree.root)})
    assert answer == {
        "status": "ok",
        "allowed": False,
        "reason": f"caller_id: unknown workspace {ghost}",
    }
    answer = ask(celery_app, {"caller_id": str(tree.root), "target_id": str(ghost)})
    assert answer["reason"] == f"target_id: unknown workspace {ghost}"


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"caller_id": "not-a-uuid", "target_id": str(uuid.uuid4())}, "caller_id: must be a UUID"),
        ({"caller_id": str(uuid.uuid4())}, "target_id: is required"),
        ({"caller_id": str(uuid.uuid4()), "target_id": 42}, "target_id: must be a UUID string"),
        (["a", "b"], "payload: must be a JSON object"),
    ],
)
def test_bad_ids_are_rejected_naming_the_field(
    db: Engine, worker, celery_app, payload: object, error: str
) -> None:
    answer = ask(celery_app, payload)
    assert answer["status"] == "rejected"
    assert answer["error"].startswith(error), answer


# --- CLI ------------------------------------------------------------------------


def cli(*args: str):
    return CliRunner().invoke(main, ["can-communicate", *args])


def test_cli_every_rule_with_its_exit_status(tree: Tree) -> None:
    for caller, target, allowed, why in RULES:
        result = cli(str(getattr(tree, caller)), str(getattr(tree, target)))
        assert result.exit_code == (0 if allowed else 1), (why, result.output)
        assert result.output.startswith("allowed" if allowed else "denied"), why


def test_cli_json(tree: Tree) -> None:
    result = cli(str(tree.child), str(tree.cousin), "--json")
    assert result.exit_code == 1
    assert json.loads(result.output) == {
        "caller_id": str(tree.child),
        "target_id": str(tree.cousin),
        "allowed": False,
        "reason": "not related: neither the same workspace, siblings, nor ancestor and descendant",
    }
    result = cli(str(tree.root), str(tree.grandchild), "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["allowed"] is True


def test_cli_unknown_workspace(tree: Tree) -> None:
    ghost = uuid.uuid4()
    result = cli(str(tree.root), str(ghost))
    assert result.exit_code == 1
    assert result.output == f"denied: target_id: unknown workspace {ghost}\n"


def test_cli_bad_uuid_is_a_usage_error(db: Engine) -> None:
    result = cli("nope", str(uuid.uuid4()))
    assert result.exit_code == 2
    assert "'nope' is not a UUID" in result.output


def test_cli_unreachable_database_is_an_error_not_a_denial(db: Engine) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with environment(DATABASE_URL=f"postgresql+psycopg2://postgres@127.0.0.1:{port}/nowhere"):
        result = cli(str(uuid.uuid4()), str(uuid.uuid4()))
    assert result.exit_code == 2
    assert "cannot reach PostgreSQL at postgresql+psycopg2://postgres@127.0.0.1" in result.output

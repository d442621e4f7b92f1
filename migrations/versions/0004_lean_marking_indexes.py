"""Fewer index entries per status change; provisioning candidates in the sweep's order.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08

A status change can never be a HOT update (the status is in index predicates), so
every full index of `workspaces` gets a new entry for each row a sweep marks. Two of
them held nothing a query needed for most rows (docs/PERFORMANCE.md, "Sweeps"):

- `ix_workspaces_parent_id` becomes partial (`parent_id IS NOT NULL`): most workspaces
  are roots, and every query on it (the self-referencing foreign key's check included)
  asks for one non-null parent.
- `ix_workspaces_id_text` is dropped: the orphan sweep looks its id prefixes up as
  ranges of the primary key instead (registry.sweeps.orphans).
- `ix_workspaces_provisioning` is keyed on `LEAST(status_changed_at, updated_at)`, the
  time the provisioning sweep measures and orders by: its scan stops after one batch
  instead of reading and sorting every row in `provisioning`.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX ix_workspaces_parent_id")
    op.execute(
        "CREATE INDEX ix_workspaces_parent_id ON workspaces (parent_id) "
        "WHERE parent_id IS NOT NULL"
    )
    op.execute("DROP INDEX ix_workspaces_id_text")
    op.execute("DROP INDEX ix_workspaces_provisioning")
    op.execute(
        "CREATE INDEX ix_workspaces_provisioning ON workspaces "
        "((LEAST(status_changed_at, updated_at))) WHERE status = 'provisioning'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_workspaces_provisioning")
    op.execute(
        "CREATE INDEX ix_workspaces_provisioning ON workspaces (status_changed_at) "
        "WHERE status = 'provisioning'"
    )
    op.execute(
        "CREATE INDEX ix_workspaces_id_text ON workspaces ((id::text) text_pattern_ops)"
    )
    op.execute("DROP INDEX ix_workspaces_parent_id")
    op.create_index("ix_workspaces_parent_id", "workspaces", ["parent_id"])

"""Fleet insight (CONTRACT §3, §13): incidents and flapping.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

- `incidents`: one row per correlated failure (kind `shared_error`, keyed by the
  signature of the members' sample errors, or `group_unreachable`, keyed by their
  parent). At most one open incident per (kind, key): a partial unique index.
- `incident_signals`: each degradation's signature (kind, key, workspace, time): the
  window an incident opens from and its members; pruned by the insight sweep once
  older than the window and no open incident has its key. (Recorded events keep the
  original's payloads: the signature is not added to them.)
- `workspaces.flapping` and `flap_hold_since` (FLAP_DAMPING: start of the held
  recovery); the changes themselves are counted from structure_events.

Plain `ADD COLUMN`s with constant defaults: no table rewrite.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE workspaces ADD COLUMN flapping boolean NOT NULL DEFAULT false")
    op.execute("ALTER TABLE workspaces ADD COLUMN flap_hold_since timestamptz")
    op.execute("CREATE INDEX ix_workspaces_flapping ON workspaces (id) WHERE flapping")
    op.execute(
        """
        CREATE TABLE incidents (
            id bigserial PRIMARY KEY,
            kind text NOT NULL CHECK (kind IN ('shared_error', 'group_unreachable')),
            key text NOT NULL,
            signature text NOT NULL,
            sample_error text,
            parent_id uuid,
            opened_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            announced_at timestamptz NOT NULL DEFAULT now(),
            announced_members int NOT NULL,
            last_seen_at timestamptz NOT NULL DEFAULT now(),
            resolved_at timestamptz,
            members int NOT NULL,
            peak_members int NOT NULL
        )
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX ux_incidents_open ON incidents (kind, key) WHERE resolved_at IS NULL"
    )
    op.execute("CREATE INDEX ix_incidents_opened_at ON incidents (opened_at)")
    op.execute(
        """
        CREATE TABLE incident_signals (
            kind text NOT NULL,
            key text NOT NULL,
            workspace_id uuid NOT NULL,
            at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ix_incident_signals_key ON incident_signals (kind, key, at)")


def downgrade() -> None:
    op.execute("DROP TABLE incident_signals")
    op.execute("DROP TABLE incidents")
    op.execute("DROP INDEX ix_workspaces_flapping")
    op.execute("ALTER TABLE workspaces DROP COLUMN flap_hold_since")
    op.execute("ALTER TABLE workspaces DROP COLUMN flapping")

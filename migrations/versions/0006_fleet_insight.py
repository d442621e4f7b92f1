"""Fleet insight (CONTRACT §3, §13): incidents and flapping.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

- `incidents`: one row per correlated failure (kind `shared_error`, keyed by the
  signature of the members' sample errors, or `group_unreachable`, keyed by their
  parent). At most one open incident per (kind, key): a partial unique index.
- `incident_members`: which workspaces joined which incident.
- `incident_signals`: recent degradations / markings by (kind, key), the window an
  incident opens from; pruned by the insight sweep.
- `workspaces.flapping`, `flap_changes` (the times of the last status changes, at most
  FLAP_THRESHOLD), `flap_hold_since` (FLAP_DAMPING: start of the held recovery).

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
    op.execute("ALTER TABLE workspaces ADD COLUMN flap_changes timestamptz[]")
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
        CREATE TABLE incident_members (
            incident_id bigint NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
            workspace_id uuid NOT NULL,
            last_signal_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (incident_id, workspace_id)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE incident_signals (
            kind text NOT NULL,
            key text NOT NULL,
            workspace_id uuid NOT NULL,
            at timestamptz NOT NULL DEFAULT now(),
            sample_error text
        )
        """
    )
    op.execute("CREATE INDEX ix_incident_signals_key ON incident_signals (kind, key, at)")
    op.execute("CREATE INDEX ix_incident_signals_at ON incident_signals (at)")


def downgrade() -> None:
    op.execute("DROP TABLE incident_signals")
    op.execute("DROP TABLE incident_members")
    op.execute("DROP TABLE incidents")
    op.execute("DROP INDEX ix_workspaces_flapping")
    op.execute("ALTER TABLE workspaces DROP COLUMN flap_hold_since")
    op.execute("ALTER TABLE workspaces DROP COLUMN flap_changes")
    op.execute("ALTER TABLE workspaces DROP COLUMN flapping")

"""Parity with the original's newest registry (CONTRACT §12): two workspace columns.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

- `last_register_failure_at` (timestamptz, null): when a registration was last refused
  after its token was accepted (a bad or missing URL). While it is under 5 minutes old
  a heartbeat degrades the workspace instead of keeping or bringing it online.
- `is_busy` (boolean, default false): what the agent's last heartbeat said, or
  `active_tasks > 0` when it said nothing.

Both are plain `ADD COLUMN`s: a constant default is stored in the catalogue, so
neither rewrites the table nor holds its lock for longer than a moment.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE workspaces ADD COLUMN last_register_failure_at timestamptz")
    op.execute("ALTER TABLE workspaces ADD COLUMN is_busy boolean NOT NULL DEFAULT false")


def downgrade() -> None:
    op.execute("ALTER TABLE workspaces DROP COLUMN is_busy")
    op.execute("ALTER TABLE workspaces DROP COLUMN last_register_failure_at")

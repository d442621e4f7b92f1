"""Self-preservation state and heartbeat-queue probes (CONTRACT §5).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row: every worker, beat and listener reads and flips the same state, so
    # they agree on whether automatic unreachable-marking is paused.
    op.create_table(
        "registry_self_preservation",
        sa.Column("id", sa.SmallInteger, primary_key=True, server_default="1"),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("reason", sa.Text),
        sa.Column("figures", JSONB),
        sa.Column("since", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.CheckConstraint("id = 1", name="ck_registry_self_preservation_single_row"),
    )
    op.execute("INSERT INTO registry_self_preservation (id, active) VALUES (1, false)")

    # Probes sent through the heartbeat queue: `sent_at` when enqueued, `consumed_at`
    # when a heartbeat consumer ran it (both on the database clock). A handful of rows.
    op.create_table(
        "heartbeat_probes",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("consumed_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("heartbeat_probes")
    op.drop_table("registry_self_preservation")

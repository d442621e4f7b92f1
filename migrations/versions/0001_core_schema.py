"""Core schema: workspaces, auth tokens, structure events and the event outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import secrets

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATUSES = (
    "provisioning", "awaiting_agent", "online", "degraded", "offline",
    "failed", "paused", "hibernating", "hibernated", "removed",
)


def _ts(name, nullable=True, default_now=False):
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=nullable,
        server_default=sa.func.now() if default_now else None,
    )


def upgrade() -> None:
    status_list = ", ".join(f"'{s}'" for s in STATUSES)
    op.create_table(
        "workspaces",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("tier", sa.Integer, nullable=False, server_default="1"),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("runtime", sa.Text, nullable=False, server_default="langgraph"),
        sa.Column("delivery_mode", sa.Text),
        sa.Column("url", sa.Text),
        sa.Column("agent_card", JSONB),
        sa.Column("parent_id", UUID(as_uuid=True), sa.ForeignKey("workspaces.id")),
        _ts("last_heartbeat_at"),
        sa.Column("last_error_rate", sa.Float),
        sa.Column("last_sample_error", sa.Text),
        sa.Column("active_tasks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("uptime_seconds", sa.Integer, nullable=False, server_default="0"),
        sa.Column("current_task", sa.Text),
        sa.Column("monthly_spend", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("max_concurrent_tasks", sa.Integer, nullable=False, server_default="1"),
        sa.Column("hibernation_idle_minutes", sa.Integer),
        sa.Column("runtime_metadata", JSONB),
        _ts("created_at", nullable=False, default_now=True),
        _ts("updated_at", nullable=False, default_now=True),
        _ts("last_heartbeat_sent_at"),
        _ts("idle_since"),
        _ts("registered_at"),
        _ts("status_changed_at", nullable=False, default_now=True),
        sa.CheckConstraint(f"status IN ({status_list})", name="ck_workspaces_status"),
        sa.CheckConstraint(
            "delivery_mode IS NULL OR delivery_mode IN ('push', 'poll')",
            name="ck_workspaces_delivery_mode",
        ),
    )
    # Heartbeats rewrite the row every ~30 s: leave room on each page so the new
    # version can stay on the same page (cheaper updates, less bloat).
    op.execute("ALTER TABLE workspaces SET (fillfactor = 80)")
    # Sweep candidates, each a partial index so its size follows the candidates,
    # not the fleet. Only the first covers a heartbeat column (see docs/ARCHITECTURE.md).
    op.execute(
        "CREATE INDEX ix_workspaces_live_heartbeat ON workspaces (last_heartbeat_at) "
        "WHERE status IN ('online', 'degraded')"
    )
    op.execute(
        "CREATE INDEX ix_workspaces_provisioning ON workspaces (status_changed_at) "
        "WHERE status = 'provisioning'"
    )
    op.execute(
        "CREATE INDEX ix_workspaces_idle ON workspaces (idle_since) "
        "WHERE hibernation_idle_minutes > 0 AND idle_since IS NOT NULL "
        "AND status IN ('online', 'degraded')"
    )
    op.create_index("ix_workspaces_status", "workspaces", ["status"])
    op.create_index("ix_workspaces_parent_id", "workspaces", ["parent_id"])
    # Orphan sweep looks rows up by id prefix (`ws-<12 hex>` container names).
    op.execute(
        "CREATE INDEX ix_workspaces_id_text ON workspaces ((id::text) text_pattern_ops)"
    )
    # status_changed_at stays true whoever writes the row (other services share it).
    op.execute(
        """
        CREATE FUNCTION workspaces_touch_status_changed_at() RETURNS trigger AS $$
        BEGIN
            IF NEW.status IS DISTINCT FROM OLD.status THEN
                NEW.status_changed_at := now();
            END IF;
            RETURN NEW;
        END $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        "CREATE TRIGGER trg_workspaces_status_changed_at BEFORE UPDATE OF status "
        "ON workspaces FOR EACH ROW EXECUTE FUNCTION workspaces_touch_status_changed_at()"
    )

    op.create_table(
        "workspace_auth_tokens",
        sa.Column("id", UUID(as_uuid=True), primary_key=True,
                  server_default=sa.text("gen_random_uuid()")),
        sa.Column("workspace_id", UUID(as_uuid=True), sa.ForeignKey("workspaces.id"),
                  nullable=False),
        sa.Column("token_hash", sa.Text, nullable=False, unique=True),
        sa.Column("prefix", sa.Text, nullable=False),
        _ts("created_at", nullable=False, default_now=True),
        _ts("last_used_at"),
        _ts("revoked_at"),
        sa.Column("issue_key", sa.Text),
    )
    op.execute(
        "CREATE INDEX ix_tokens_live_by_workspace ON workspace_auth_tokens (workspace_id) "
        "WHERE revoked_at IS NULL"
    )

    op.create_table(
        "structure_events",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("workspace_id", UUID(as_uuid=True)),
        sa.Column("payload", JSONB, nullable=False),
        _ts("created_at", nullable=False, default_now=True),
    )
    op.create_index("ix_structure_events_workspace", "structure_events", ["workspace_id", "id"])
    op.create_index("ix_structure_events_created_at", "structure_events", ["created_at"])

    op.create_table(
        "event_outbox",
        sa.Column("event_id", sa.BigInteger,
                  sa.ForeignKey("structure_events.id", ondelete="CASCADE"), primary_key=True),
        _ts("created_at", nullable=False, default_now=True),
    )

    op.create_table(
        "registry_secrets",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )
    secrets_table = sa.table("registry_secrets", sa.column("name"), sa.column("value"))
    op.bulk_insert(secrets_table, [{"name": "token_secret", "value": secrets.token_bytes(32)}])


def downgrade() -> None:
    op.drop_table("registry_secrets")
    op.drop_table("event_outbox")
    op.drop_table("structure_events")
    op.drop_table("workspace_auth_tokens")
    op.drop_table("workspaces")
    op.execute("DROP FUNCTION IF EXISTS workspaces_touch_status_changed_at()")

"""Status counts kept by trigger, sweep indexes at scale, event retention (CONTRACT §3, §5).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

- `workspace_status_counts` (one row per status) plus `workspace_status_changes`
  (pending deltas, append-only) give the self-preservation check its fleet size
  without counting the fleet: triggers on `workspaces` append one delta per status
  change in the same transaction as the change (whoever writes the row), and the
  registry folds the deltas into the counts now and then (registry.liveness.
  selfpreservation.counts). Appends never conflict, so writers never wait on a counter.
- `ix_workspaces_live_heartbeat` gains `runtime` as a second key column: the remote
  pass and the at-risk count test the runtime inside the index instead of visiting
  the heap for every stale container-backed row.
- `ix_structure_events_liveness_marks`: recent automatic unreachable-marks (the
  self-preservation share) as an index range, not a scan of recent events.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE workspace_status_counts (
            status text PRIMARY KEY,
            n bigint NOT NULL DEFAULT 0,
            reconciled_at timestamptz
        )
        """
    )
    # No index, no key: rows are only appended (by the triggers) and deleted in bulk
    # (by the fold); readers sum all of them, and there are few between two folds.
    op.execute(
        """
        CREATE TABLE workspace_status_changes (
            from_status text,
            to_status text,
            n bigint NOT NULL DEFAULT 1
        )
        """
    )
    op.execute(
        """
        CREATE FUNCTION workspaces_status_changed() RETURNS trigger AS $$
        BEGIN
            INSERT INTO workspace_status_changes (from_status, to_status)
            VALUES (OLD.status, NEW.status);
            RETURN NULL;
        END $$ LANGUAGE plpgsql
        """
    )
    # INSERT and DELETE fire once per statement with the rows grouped by status, so a
    # bulk insert of a million rows appends a handful of deltas.
    op.execute(
        """
        CREATE FUNCTION workspaces_status_rows_inserted() RETURNS trigger AS $$
        BEGIN
            INSERT INTO workspace_status_changes (from_status, to_status, n)
            SELECT NULL, status, count(*) FROM inserted_rows GROUP BY status;
            RETURN NULL;
        END $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        """
        CREATE FUNCTION workspaces_status_rows_deleted() RETURNS trigger AS $$
        BEGIN
            INSERT INTO workspace_status_changes (from_status, to_status, n)
            SELECT status, NULL, count(*) FROM deleted_rows GROUP BY status;
            RETURN NULL;
        END $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        """
        CREATE FUNCTION workspaces_status_truncated() RETURNS trigger AS $$
        BEGIN
            DELETE FROM workspace_status_changes;
            UPDATE workspace_status_counts SET n = 0, reconciled_at = now();
            RETURN NULL;
        END $$ LANGUAGE plpgsql
        """
    )
    # WHEN is tested without entering PL/pgSQL: a heartbeat that changes no status
    # costs nothing here.
    op.execute(
        "CREATE TRIGGER trg_workspaces_status_count_update AFTER UPDATE OF status "
        "ON workspaces FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
        "EXECUTE FUNCTION workspaces_status_changed()"
    )
    op.execute(
        "CREATE TRIGGER trg_workspaces_status_count_insert AFTER INSERT ON workspaces "
        "REFERENCING NEW TABLE AS inserted_rows FOR EACH STATEMENT "
        "EXECUTE FUNCTION workspaces_status_rows_inserted()"
    )
    op.execute(
        "CREATE TRIGGER trg_workspaces_status_count_delete AFTER DELETE ON workspaces "
        "REFERENCING OLD TABLE AS deleted_rows FOR EACH STATEMENT "
        "EXECUTE FUNCTION workspaces_status_rows_deleted()"
    )
    op.execute(
        "CREATE TRIGGER trg_workspaces_status_count_truncate AFTER TRUNCATE ON workspaces "
        "FOR EACH STATEMENT EXECUTE FUNCTION workspaces_status_truncated()"
    )
    # The triggers exist from here on and CREATE TRIGGER holds off writers until this
    # transaction commits, so this count and the deltas that follow agree exactly.
    op.execute(
        """
        INSERT INTO workspace_status_counts (status, n, reconciled_at)
        SELECT status, count(*), now() FROM workspaces GROUP BY status
        """
    )

    op.execute("DROP INDEX ix_workspaces_live_heartbeat")
    op.execute(
        "CREATE INDEX ix_workspaces_live_heartbeat ON workspaces (last_heartbeat_at, runtime) "
        "WHERE status IN ('online', 'degraded')"
    )
    op.execute(
        "CREATE INDEX ix_structure_events_liveness_marks ON structure_events "
        "(created_at) INCLUDE (workspace_id) "
        "WHERE event_type IN ('WORKSPACE_OFFLINE', 'WORKSPACE_AWAITING_AGENT') "
        "AND (payload ->> 'reason') IN ('liveness_expired', 'heartbeat_stale')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_structure_events_liveness_marks")
    op.execute("DROP INDEX ix_workspaces_live_heartbeat")
    op.execute(
        "CREATE INDEX ix_workspaces_live_heartbeat ON workspaces (last_heartbeat_at) "
        "WHERE status IN ('online', 'degraded')"
    )
    for trigger in ("update", "insert", "delete", "truncate"):
        op.execute(f"DROP TRIGGER IF EXISTS trg_workspaces_status_count_{trigger} ON workspaces")
    for function in (
        "workspaces_status_changed",
        "workspaces_status_rows_inserted",
        "workspaces_status_rows_deleted",
        "workspaces_status_truncated",
    ):
        op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    op.execute("DROP TABLE workspace_status_changes")
    op.execute("DROP TABLE workspace_status_counts")

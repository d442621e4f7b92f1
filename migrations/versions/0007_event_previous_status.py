"""The status a registration's WORKSPACE_ONLINE left (CONTRACT §3, §13); agent cards
stored out of line.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

Every status event but one says what it left: `recovered_from` (a heartbeat's
recovery), `previous_status` (the unreachable markings, lifecycle), or online (a
degradation). A registration's WORKSPACE_ONLINE keeps the original's payload
`{url, agent_card, delivery_mode}`, so the fleet report could not tell a recovery
by re-registration (the common one) from a first registration.

- `structure_events.previous_status`: for a WORKSPACE_ONLINE without
  `recovered_from`, the status its workspace's newest earlier status event (by
  time, among its last 20 by id) left it in, '' when it had none; NULL on every
  other row. Filled by a BEFORE INSERT trigger (one index read on
  `(workspace_id, id)`, only for those rows, whoever inserts them), so the report
  reads a column instead of the event history.

- `toast_tuple_target = 512` on `structure_events`: a row over 512 bytes (in practice
  a registration's or card update's agent card, a few KB) has its payload moved to
  the TOAST table instead of kept compressed in the row, so the heap that the fleet
  report scans stays a third of the size (PERFORMANCE); the insert of such an event
  costs ~70 µs more. Applies to rows written from now on.

A plain nullable `ADD COLUMN` and a storage parameter: no table rewrite.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The status each status event leaves its workspace in (registry.statuses), frozen
# here as a migration must be.
_AFTER = {
    "WORKSPACE_ONLINE": "online",
    "WORKSPACE_DEGRADED": "degraded",
    "WORKSPACE_OFFLINE": "offline",
    "WORKSPACE_AWAITING_AGENT": "awaiting_agent",
    "WORKSPACE_PROVISION_FAILED": "failed",
    "WORKSPACE_HIBERNATED": "hibernated",
    "WORKSPACE_REMOVED": "removed",
}


def upgrade() -> None:
    op.execute("ALTER TABLE structure_events ADD COLUMN previous_status text")
    op.execute("ALTER TABLE structure_events SET (toast_tuple_target = 512)")
    whens = " ".join(f"WHEN '{event}' THEN '{status}'" for event, status in _AFTER.items())
    types = ", ".join(f"'{event}'" for event in _AFTER)
    op.execute(
        f"""
        CREATE FUNCTION structure_events_previous_status() RETURNS trigger AS $$
        BEGIN
            -- The newest by time among the last few by id: read backwards on the
            -- workspace's index only (a condition on created_at inside would let
            -- the planner AND in the time index, reading the whole table's recent
            -- entries). Rows inserted earlier by the same statement are visible.
            SELECT CASE newest.event_type {whens} END INTO NEW.previous_status
            FROM (SELECT e.event_type, e.created_at, e.id FROM structure_events e
                  WHERE e.workspace_id = NEW.workspace_id AND e.event_type IN ({types})
                  ORDER BY e.id DESC LIMIT 20) newest
            WHERE newest.created_at <= NEW.created_at
            ORDER BY newest.created_at DESC, newest.id DESC LIMIT 1;
            NEW.previous_status := COALESCE(NEW.previous_status, '');
            RETURN NEW;
        END $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        """
        CREATE TRIGGER trg_structure_events_previous_status BEFORE INSERT ON structure_events
        FOR EACH ROW
        WHEN (NEW.event_type = 'WORKSPACE_ONLINE' AND NEW.workspace_id IS NOT NULL
              AND NOT (NEW.payload ? 'recovered_from'))
        EXECUTE FUNCTION structure_events_previous_status()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER trg_structure_events_previous_status ON structure_events")
    op.execute("DROP FUNCTION structure_events_previous_status()")
    op.execute("ALTER TABLE structure_events RESET (toast_tuple_target)")
    op.execute("ALTER TABLE structure_events DROP COLUMN previous_status")

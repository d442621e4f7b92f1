"""Cheaper marking batches: fewer index entries and per-row triggers per status change.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

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
- The status-count row trigger skips rows changed while the transaction-local setting
  `registry.status_deltas_by_statement` is 'on': the set-based marking statements
  append one delta per (from, to) pair themselves, in the same statement
  (registry.liveness.selfpreservation.counts.records_its_deltas). Every other writer
  is counted per row as before.
- `event_outbox` loses its foreign key to `structure_events`: an outbox row is only
  ever written in the statement that writes its event, and an event still in the
  outbox is never deleted (registry.prune_events skips them), so the check (an index
  probe and a row lock on every new event) guarded nothing. The outbox relay joins
  the two tables and would leave a row without its event alone.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


_COUNT_TRIGGER = (
    "CREATE TRIGGER trg_workspaces_status_count_update AFTER UPDATE OF status "
    "ON workspaces FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION workspaces_status_changed()"
)
_CHANGED = "OLD.status IS DISTINCT FROM NEW.status"
# Evaluated without entering PL/pgSQL; a heartbeat that changes no status stops at the
# first test.
_COUNTED_PER_ROW = (
    f"{_CHANGED} AND current_setting('registry.status_deltas_by_statement', true) "
    "IS DISTINCT FROM 'on'"
)


def upgrade() -> None:
    op.execute("DROP TRIGGER trg_workspaces_status_count_update ON workspaces")
    op.execute(_COUNT_TRIGGER.format(when=_COUNTED_PER_ROW))
    op.execute("ALTER TABLE event_outbox DROP CONSTRAINT event_outbox_event_id_fkey")
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
    # Rows whose event is gone (only a manual delete makes them) would fail the check.
    op.execute(
        "DELETE FROM event_outbox o "
        "WHERE NOT EXISTS (SELECT 1 FROM structure_events e WHERE e.id = o.event_id)"
    )
    op.execute(
        "ALTER TABLE event_outbox ADD CONSTRAINT event_outbox_event_id_fkey FOREIGN KEY "
        "(event_id) REFERENCES structure_events (id) ON DELETE CASCADE"
    )
    op.execute("DROP TRIGGER trg_workspaces_status_count_update ON workspaces")
    op.execute(_COUNT_TRIGGER.format(when=_CHANGED))
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

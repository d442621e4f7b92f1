"""Alembic migrations; `molecule-registry migrate` runs them (see registry/migrate.py)."""

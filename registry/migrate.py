"""Apply the Alembic migrations (what `molecule-registry migrate` runs)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from registry.config import get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions"))
    # Alembic's ini interpolation treats % specially.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def ensure_database(database_url: str) -> bool:
    """Create the target database if it does not exist; True if it was created."""
    from sqlalchemy import create_engine

    url = make_url(database_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": url.database}
            ).scalar()
            if exists:
                return False
            # Identifier quoting: the name comes from the operator's own DATABASE_URL.
            conn.execute(text(f'CREATE DATABASE "{url.database}"'))
            return True
    finally:
        admin.dispose()


def upgrade(database_url: str | None = None, *, create_database: bool = True) -> None:
    """Bring the schema to the newest revision; harmless when it already is."""
    url = database_url or get_settings().database_url
    if create_database:
        ensure_database(url)
    command.upgrade(alembic_config(url), "head")


def current_revision(database_url: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(database_url or get_settings().database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision the migrations directory holds."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()


class SchemaNotAtHead(Exception):
    """The database's schema is missing or older (or newer) than this code expects."""

    def __init__(self, current: str | None, head: str | None) -> None:
        self.current = current
        self.head = head
        if current is None:
            what = "has no registry schema (never migrated)"
        else:
            what = f"is at schema revision {current}, not at head {head}"
        super().__init__(f"the database {what}: run `molecule-registry migrate`")


class DatabaseReadOnly(SchemaNotAtHead):
    """DATABASE_URL leads to a standby: every write would fail, so nothing may start."""

    def __init__(self) -> None:
        Exception.__init__(
            self,
            "the database is a read-only standby (pg_is_in_recovery): point DATABASE_URL "
            "at the primary, or list every node with `target_session_attrs=read-write`",
        )


def check_schema(engine: Engine) -> str:
    """The current revision when it is the head; raises SchemaNotAtHead otherwise
    (DatabaseReadOnly when the server is a standby).

    Raises SQLAlchemy's OperationalError when the database cannot be reached.
    """
    from alembic.runtime.migration import MigrationContext

    head = head_revision()
    with engine.connect() as conn:
        if conn.execute(text("SELECT pg_is_in_recovery()")).scalar():
            raise DatabaseReadOnly()
        current = MigrationContext.configure(conn).get_current_revision()
    if current != head:
        raise SchemaNotAtHead(current, head)
    return current

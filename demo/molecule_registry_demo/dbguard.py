"""The demo runs only against a demo database (docs/SECURITY.md "The demo's database guard").

The demo starts a worker and beat with a 10-second provisioning timeout and a fake
container engine: pointed at a real registry database, every real `provisioning`
workspace would be failed within seconds and real containers judged gone. So before
it changes anything the demo checks that DATABASE_URL names a database it
recognises as a demo database:

- its name ends in `_demo` (scripts/demo uses `molecule_registry_demo`), or
- it does not exist yet (the demo creates it, and marks it), or
- it carries the marker row the demo writes into a database it created
  (`registry_secrets.name = 'demo_database'`).

Anything else is refused with one line and a non-zero exit, unless the operator
says explicitly `--allow-any-database`.
"""

from __future__ import annotations

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

DEMO_SUFFIX = "_demo"
MARKER_NAME = "demo_database"


class NotADemoDatabase(Exception):
    """The database is not one the demo may write to; the message is one line."""


def database_exists(database_url: str) -> bool:
    url = make_url(database_url)
    engine = create_engine(url.set(database="postgres"), connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": url.database}
            ).scalar()
            return found is not None
    finally:
        engine.dispose()


def has_marker(database_url: str) -> bool:
    engine = create_engine(database_url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            if conn.execute(text("SELECT to_regclass('registry_secrets')")).scalar() is None:
                return False
            found = conn.execute(
                text("SELECT 1 FROM registry_secrets WHERE name = :n"), {"n": MARKER_NAME}
            ).scalar()
            return found is not None
    finally:
        engine.dispose()


def check_demo_database(database_url: str, *, allow_any: bool) -> bool:
    """Raise NotADemoDatabase unless the demo may use the database; True if it must create it.

    Reads only: a refused database is left exactly as it was.
    """
    url = make_url(database_url)
    name = url.database or ""
    try:
        if not database_exists(database_url):
            return True
        if allow_any or name.endswith(DEMO_SUFFIX) or has_marker(database_url):
            return False
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0]
        raise NotADemoDatabase(f"cannot inspect database {name!r}: {reason}") from None
    raise NotADemoDatabase(
        f"refusing to run the demo against database {name!r} at "
        f"{url.render_as_string(hide_password=True)}: it is not a demo database (the name "
        f"does not end in {DEMO_SUFFIX!r} and the demo did not create it), and the demo "
        "fails real provisioning workspaces within seconds; point DATABASE_URL at a demo "
        "database or pass --allow-any-database"
    )


def mark_as_demo_database(database_url: str) -> None:
    """Write the marker into a database the demo created (after its migration)."""
    engine = create_engine(database_url, connect_args={"connect_timeout": 5})
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO registry_secrets (name, value) VALUES (:n, :v) "
                    "ON CONFLICT (name) DO NOTHING"
                ),
                {"n": MARKER_NAME, "v": b"created by molecule-registry demo"},
            )
    finally:
        engine.dispose()

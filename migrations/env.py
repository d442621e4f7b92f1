"""Alembic environment: runs online against the URL given by registry.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

# The migrations are the one declaration of the schema (the code queries with SQL
# text, not Table objects), so there is no metadata to autogenerate against.
metadata = None

config = context.config
url = config.get_main_option("sqlalchemy.url")


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()

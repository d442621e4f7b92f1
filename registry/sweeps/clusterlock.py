"""One runner at a time in the whole cluster: a PostgreSQL session advisory lock.

Every free process on the sweeps queue may pick up a sweep; a slow pass run by several
at once multiplies its load on the database and on the container engine for nothing.
The lock is held by a dedicated autocommit connection for the length of the block, so
no transaction stays open across slow calls, and it dies with its session if the
process does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text

from registry.db import get_engine

log = logging.getLogger(__name__)


@contextmanager
def cluster_lock(key: int, engine: Engine | None = None) -> Iterator[bool]:
    """Yield True while holding advisory lock `key`; False (at once) if another holds it."""
    with (engine or get_engine()).connect() as raw:
        conn = raw.execution_options(isolation_level="AUTOCOMMIT")
        held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one())
        try:
            yield held
        finally:
            if held:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                except Exception:
                    # Closing the session releases the lock then; never pool it.
                    raw.invalidate()
                    log.warning("could not release advisory lock %#x; connection dropped", key)
